"""Tansu on its s3:// storage engine against a local S3-compatible server, so the broker can be killed and
restarted without losing topics, records or committed offsets (the embedded default keeps them in memory).

    with LocalS3(data_dir) as s3, TansuS3Broker(data_dir / "tansu.log", s3) as broker:
        ...  # broker.bootstrap; broker.stop(); broker.start() again on the same port: data is back

The S3 server is moto's (`moto[server]` from PyPI, a dev/test dependency): good enough to exercise Tansu's
object layout and conditional writes on one machine; production points `s3_url` at real object storage.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adgen.runtime.processes import ManagedServer, ServerStartError, free_port
from adgen.runtime.tansu_broker import TansuBroker

#: Credentials of the local, loopback-only S3 server (not secrets: moto accepts any).
LOCAL_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "adgen-local",
    "AWS_SECRET_ACCESS_KEY": "adgen-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_binary() -> str:
    found = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(found).is_file():
        raise ServerStartError("no moto_server: `pip install 'moto[server]'` to run Tansu on local s3:// storage")
    return found


class LocalS3(ManagedServer):
    """moto_server on 127.0.0.1:`port` with one bucket; state lives in the process (kill it and it is gone)."""

    start_timeout_s = 30.0

    def __init__(self, data_dir: Path, *, bucket: str = "tansu", port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.port = port or free_port()
        self.process = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "s3.log"

    def describe(self) -> str:
        return f"local S3 on {self.endpoint}"

    def argv(self) -> list[str]:
        return [moto_server_binary(), "-H", "127.0.0.1", "-p", str(self.port)]

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def start(self) -> float:
        """Start moto and create the bucket Tansu writes to."""
        took = super().start()
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=5):
            pass
        return took


@contextmanager
def _child_env(values: dict[str, str]) -> Iterator[None]:
    """Tansu reads its S3 endpoint and credentials from the environment it is started with."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


class TansuS3Broker(TansuBroker):
    """A TansuBroker whose storage is `s3://<bucket>/` on `s3`; restartable on the same port with its data."""

    def __init__(self, log_path: Path, s3: LocalS3, **kwargs: object) -> None:
        super().__init__(log_path, **kwargs)  # type: ignore[arg-type]
        self.s3 = s3

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--storage-engine") + 1] = f"s3://{self.s3.bucket}/"
        return argv

    def start(self) -> float:
        env = {**LOCAL_S3_ENV, "AWS_ENDPOINT": self.s3.endpoint, "AWS_ALLOW_HTTP": "true"}
        with _child_env(env):
            return super().start()
