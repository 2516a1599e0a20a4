"""One broker + one redis-server + every topic: the whole backing store of adgen on this machine."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType, TracebackType

from pydantic import BaseModel, SecretStr

from adgen.core.config import Settings
from adgen.runtime.redis_server import RedisServer
from adgen.runtime.tansu_broker import TansuBroker
from adgen.runtime.tansu_quirks import embedded_kafka_settings, kafka_env
from adgen.streams.admin import ensure_topics


class StartupTimings(BaseModel):
    """Seconds until each part answered (reported by `adgen up` and the runtime benchmark)."""

    broker_s: float
    redis_s: float
    topics_s: float
    total_s: float


class EmbeddedRuntime:
    """Context manager: start Tansu and redis-server, create all topics, yield settings pointed at them.

    `detached=True` lets the servers outlive this process (`adgen up`); otherwise they die with it,
    including on SIGKILL of the parent (PDEATHSIG) and on SIGTERM/Ctrl-C (handled, then re-raised).
    """

    def __init__(
        self,
        settings: Settings,
        data_dir: Path,
        *,
        redis_password: str | None = None,
        detached: bool = False,
    ) -> None:
        self.base_settings = settings
        self.data_dir = Path(data_dir)
        if redis_password is None and settings.redis.password is not None:
            redis_password = settings.redis.password.get_secret_value()
        self.broker = TansuBroker(self.data_dir / "tansu.log", detached=detached)
        self.redis = RedisServer(self.data_dir / "redis", password=redis_password, detached=detached)
        self.settings: Settings | None = None
        self.timings: StartupTimings | None = None
        self._previous_sigterm: signal.Handlers | int | None = None

    def start(self) -> Settings:
        """Start both servers and create the topics; returns the effective settings."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            broker_s = self.broker.start()
            redis_s = self.redis.start()
            settings = self._effective_settings()
            topics_started = time.monotonic()
            ensure_topics(settings)
            topics_s = time.monotonic() - topics_started
        except BaseException:
            self.stop()
            raise
        self.timings = StartupTimings(
            broker_s=broker_s, redis_s=redis_s, topics_s=topics_s, total_s=time.monotonic() - started
        )
        self.settings = settings
        return settings

    def _effective_settings(self) -> Settings:
        kafka = embedded_kafka_settings(self.base_settings.kafka, bootstrap=self.broker.bootstrap)
        password = SecretStr(self.redis.password) if self.redis.password else None
        redis = self.base_settings.redis.model_copy(update={"url": self.redis.url, "password": password})
        return self.base_settings.model_copy(update={"kafka": kafka, "redis": redis})

    def stop(self) -> None:
        """Stop both servers (SIGTERM, then SIGKILL after a grace period). Safe to call twice."""
        self.broker.stop()
        self.redis.stop()

    def __enter__(self) -> Settings:
        self._install_sigterm()
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._restore_sigterm()

    def _install_sigterm(self) -> None:
        """Turn SIGTERM into KeyboardInterrupt (like Ctrl-C) so `__exit__` runs and the servers stop."""
        try:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread: PDEATHSIG still covers us
            self._previous_sigterm = None

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


def runtime_env(settings: Settings) -> dict[str, str]:
    """The ADGEN_* variables that point a child process at the broker and Redis of `settings` (as handed out by
    `EmbeddedRuntime.start`), client overrides included."""
    return {**kafka_env(settings.kafka), "ADGEN_REDIS__URL": settings.redis.url}


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
