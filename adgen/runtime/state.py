"""The state file of a background runtime (`adgen up`): PIDs and ports, so `adgen down` can stop it."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from adgen.core.config import KafkaSettings
from adgen.runtime.embedded import StartupTimings
from adgen.runtime.processes import pid_runs, stop_pid
from adgen.runtime.tansu_quirks import STOP_GRACE_S, embedded_kafka_settings, kafka_env

STATE_FILE_NAME = "runtime.json"
ENV_FILE_NAME = "runtime.env"


class ServerRecord(BaseModel):
    pid: int
    port: int
    binary: str
    log_path: Path


class RuntimeState(BaseModel):
    """What `adgen up` started; written atomically to `{paths.state}/runtime.json`."""

    broker: ServerRecord
    redis: ServerRecord
    bootstrap_servers: str
    redis_url: str
    data_dir: Path
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    timings: StartupTimings

    def env(self) -> dict[str, str]:
        """The ADGEN_* variables that point any adgen process at this runtime."""
        kafka = embedded_kafka_settings(KafkaSettings(), bootstrap=self.bootstrap_servers)
        return {**kafka_env(kafka), "ADGEN_REDIS__URL": self.redis_url}

    def alive(self) -> dict[str, bool]:
        """Per server: is its PID still running its binary (not a reused PID)?"""
        return {
            "broker": pid_runs(self.broker.pid, self.broker.binary),
            "redis": pid_runs(self.redis.pid, self.redis.binary),
        }


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE_NAME


def write_state(state_dir: Path, state: RuntimeState) -> Path:
    """Atomically write the state file (and a sourceable `runtime.env` next to it)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_path(state_dir)
    _atomic_write(target, state.model_dump_json(indent=2))
    env_text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in state.env().items())
    _atomic_write(state_dir / ENV_FILE_NAME, env_text)
    return target


def read_state(state_dir: Path) -> RuntimeState | None:
    """The recorded runtime, or None if no state file exists."""
    path = state_path(state_dir)
    if not path.exists():
        return None
    return RuntimeState.model_validate(json.loads(path.read_text()))


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the servers in the state file (only PIDs still running their binary); remove the files."""
    state = read_state(state_dir)
    stopped: list[str] = []
    if state is None:
        return stopped
    for name, record, grace_s in (("broker", state.broker, STOP_GRACE_S), ("redis", state.redis, 5.0)):
        if pid_runs(record.pid, record.binary):
            stop_pid(record.pid, grace_s=grace_s)
            stopped.append(f"{name} (pid {record.pid})")
    state_path(state_dir).unlink(missing_ok=True)
    (Path(state_dir) / ENV_FILE_NAME).unlink(missing_ok=True)
    return stopped


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
