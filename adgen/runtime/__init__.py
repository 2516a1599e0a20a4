"""Embedded runtime: Tansu broker + redis-server as child processes, for dev, tests and `adgen up`."""

from adgen.runtime.embedded import EmbeddedRuntime, StartupTimings, runtime_env
from adgen.runtime.processes import ServerStartError
from adgen.runtime.redis_server import RedisServer
from adgen.runtime.tansu_broker import TansuBroker

__all__ = ["EmbeddedRuntime", "RedisServer", "ServerStartError", "StartupTimings", "TansuBroker", "runtime_env"]
