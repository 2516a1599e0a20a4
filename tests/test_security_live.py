"""Redis AUTH+TLS and Kafka SSL / SASL_SSL against live servers, with settings built from ADGEN_* env vars.

Neither bundled server terminates TLS itself (see adgen/runtime/tls.py), so a TLS proxy with a throwaway CA
sits in front of the real redis-server (requirepass) and the real Tansu: every client below runs its own
TLS code path (redis-py rediss://, librdkafka SSL, aiokafka through Faust) and must verify the certificate.
Tansu 0.6.0 enforces SASL (`--authentication`) but cannot store SCRAM users (see docs/reliability.md), so
SASL is exercised on the failure side only: a refused login must surface as a clear error, not a hang.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from topic_reads import read_topic

from adgen.core.config import Settings
from adgen.runtime.processes import free_port, stop_pid
from adgen.runtime.redis_server import RedisServer
from adgen.runtime.tansu_quirks import client_overrides
from adgen.runtime.tls import TansuBehindTls, TestPki, TlsProxy, make_test_pki

SECRET = "s3cr3t-Tl5-Kx9qP"  # distinctive so a match in a log is never a coincidence
RELAY_TOPIC = "relay-out"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
ADGEN = str(Path(sys.executable).with_name("adgen"))

pytestmark = pytest.mark.integration


def env_settings(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> Settings:
    """Settings exactly as a user gets them: from ADGEN_* environment variables, nothing passed in code."""
    for key in [k for k in os.environ if k.startswith("ADGEN_")]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


# --- Redis: AUTH + TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[TlsProxy]:
    with (
        RedisServer(tmp_path_factory.mktemp("redis-tls"), password=SECRET) as server,
        TlsProxy(server.port, pki) as proxy,
    ):
        yield proxy


def redis_env(proxy: TlsProxy, ca: Path, password: str = SECRET) -> dict[str, str]:
    return {
        "ADGEN_REDIS__URL": f"rediss://{proxy.address}/0",
        "ADGEN_REDIS__PASSWORD": password,
        "ADGEN_REDIS__SSL_CA_CERTS": str(ca),
        "ADGEN_REDIS__ENV": "tls",
    }


def window(user_id: str) -> object:
    from adgen.processors.feature_store import UserWindowFeatures

    return UserWindowFeatures(
        user_id=user_id, interest_summary={"lab": 2}, window_events=2, arpu=0.0, newest_event_time=T0
    )


def test_feature_store_writes_and_reads_over_tls_with_a_password(
    redis_tls: TlsProxy, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adgen.processors.feature_store import FeatureStore

    settings = env_settings(monkeypatch, redis_env(redis_tls, pki.ca_cert))
    assert settings.redis.url.startswith("rediss://")
    before = redis_tls.connections
    record = window("u-tls")

    async def run() -> None:
        store = FeatureStore(settings.redis)
        try:
            assert await store.write_user_windows([record]) == 1  # type: ignore[list-item]
            assert await store.user_window("u-tls") == record
        finally:
            await store.close()

    asyncio.run(run())
    assert redis_tls.connections > before, "the store must have gone through the TLS proxy"


def test_adgen_features_get_reads_over_tls_and_never_prints_the_password(
    redis_tls: TlsProxy, pki: TestPki, tmp_path: Path
) -> None:
    from adgen.core.config import RedisSettings
    from adgen.processors.feature_store import FeatureStore

    values = redis_env(redis_tls, pki.ca_cert)
    store_settings = RedisSettings(url=values["ADGEN_REDIS__URL"], password=SECRET, ssl_ca_certs=pki.ca_cert, env="tls")

    async def seed() -> None:
        store = FeatureStore(store_settings)
        try:
            await store.write_user_windows([window("u-cli")])  # type: ignore[list-item]
        finally:
            await store.close()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADGEN_")}
    env.update({**values, "ADGEN_PATHS__STATE": str(tmp_path / "state")})
    done = subprocess.run(
        [ADGEN, "features", "get", "u-cli"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert '"window_events": 2' in output or '"window_events":2' in output, output
    assert SECRET not in output


@pytest.mark.parametrize(
    ("which", "expected"),
    [("untrusted_ca", r"certificate not trusted.*CERTIFICATE_VERIFY_FAILED"), ("wrong_password", r"authentication")],
)
def test_redis_tls_with_an_untrusted_ca_or_wrong_password_fails_at_once_with_a_clear_error(
    redis_tls: TlsProxy, pki: TestPki, monkeypatch: pytest.MonkeyPatch, which: str, expected: str
) -> None:
    """The worker's store retries connection errors forever; neither of these can heal, so neither may loop."""
    from adgen.processors.feature_store import FeatureStore
    from adgen.processors.redis_client import RedisUnavailable

    ca = pki.untrusted_ca_cert if which == "untrusted_ca" else pki.ca_cert
    password = "wrong-" + SECRET[::-1] if which == "wrong_password" else SECRET
    settings = env_settings(monkeypatch, redis_env(redis_tls, ca, password))

    async def run() -> None:
        store = FeatureStore(settings.redis)  # no give_up_after: the worker's configuration
        try:
            with pytest.raises(RedisUnavailable) as info:
                await asyncio.wait_for(store.write_user_windows([window("u-bad")]), timeout=10)  # type: ignore[list-item]
        finally:
            await store.close()
        message = str(info.value)
        assert re.search(expected, message, re.I | re.S), message
        assert SECRET not in message and SECRET[::-1] not in message

    started = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - started < 10


# --- Kafka: SSL, and SASL_SSL refused --------------------------------------------------------------------


class TlsKafka:
    """Tansu behind a TLS proxy that it advertises as its own address."""

    def __init__(self, log_path: Path, pki: TestPki, *, authentication: bool = False) -> None:
        proxy_port = free_port()
        self.broker = TansuBehindTls(log_path, advertised_port=proxy_port, authentication=authentication)
        self.proxy = TlsProxy(self.broker.port, pki, port=proxy_port)

    def __enter__(self) -> TlsKafka:
        self.broker.start()
        try:
            self.proxy.start()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def kafka_tls(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[TlsKafka]:
    with TlsKafka(tmp_path_factory.mktemp("tansu-tls") / "tansu.log", pki) as kafka:
        yield kafka


def kafka_env(kafka: TlsKafka, ca: Path, prefix: str) -> dict[str, str]:
    return {
        "ADGEN_KAFKA__BOOTSTRAP_SERVERS": kafka.proxy.address,
        "ADGEN_KAFKA__SECURITY_PROTOCOL": "SSL",
        "ADGEN_KAFKA__SSL_CAFILE": str(ca),
        "ADGEN_KAFKA__CLIENT_OVERRIDES": client_overrides().model_dump_json(),
        "ADGEN_KAFKA__TOPIC_PREFIX": prefix,
    }


def test_event_producer_and_ad_updates_reader_round_trip_over_tls(
    kafka_tls: TlsKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adgen.processors.ad_updates import AdUpdatesReader
    from adgen.streams.admin import ensure_topics
    from adgen.streams.events import AdDelete
    from adgen.streams.producer import EventProducer

    settings = env_settings(monkeypatch, kafka_env(kafka_tls, pki.ca_cert, "ssl1-"))
    assert settings.kafka.confluent_config()["security.protocol"] == "SSL"
    before = kafka_tls.proxy.connections
    ensure_topics(settings)  # the admin client over TLS too
    deletes = [AdDelete(event_id=f"d{i}", event_time=T0 + timedelta(seconds=i), ad_id=f"a{i}") for i in range(20)]
    with EventProducer(settings) as producer:
        for event in deletes:
            producer.send(event)
    assert producer.delivered == len(deletes)

    reader = AdUpdatesReader(settings, {})
    got: list[str] = []
    deadline = time.monotonic() + 20
    try:
        while len(got) < len(deletes) and time.monotonic() < deadline:
            good, bad = reader.poll(timeout_s=0.5)
            assert bad == []
            got += [event.event_id for event, _partition, _offset in good]
    finally:
        reader.consumer.close()
    assert sorted(got) == sorted(e.event_id for e in deletes)
    assert kafka_tls.proxy.connections > before


@pytest.mark.slow  # ~10 s: a Faust worker process has to start and join its group
def test_faust_worker_consumes_and_produces_over_tls(
    kafka_tls: TlsKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """aiokafka inside a real Faust worker process: joins a group, consumes, and produces, all over TLS."""
    from confluent_kafka.admin import NewTopic

    from adgen.streams.admin import admin_client, ensure_topics
    from adgen.streams.events import AdClick
    from adgen.streams.producer import EventProducer

    values = kafka_env(kafka_tls, pki.ca_cert, "ssl2-")
    settings = env_settings(monkeypatch, values)
    ensure_topics(settings)
    relay = f"ssl2-{RELAY_TOPIC}"
    admin = admin_client(settings)  # keep it alive until the future resolves
    admin.create_topics([NewTopic(relay, 4, 1)])[relay].result(timeout=10)
    clicks = [
        AdClick(event_id=f"c{i}", event_time=T0 + timedelta(seconds=i), user_id=f"u{i % 3}", ad_id=f"a{i}")
        for i in range(12)
    ]
    with EventProducer(settings) as producer:
        for event in clicks:
            producer.send(event)

    env = {**os.environ, **values, "ADGEN_WORKER__APP_ID": "adgen-tls-relay"}
    env |= {"ADGEN_PATHS__STATE": str(tmp_path / "state"), "ADGEN_KAFKA__SASL_PASSWORD": SECRET}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, __file__], env=env, stdout=log, stderr=log)
    try:
        relayed = read_topic(settings, relay, len(clicks), timeout_s=60)
        assert worker.poll() is None, "worker died:\n" + log_path.read_text()[-3000:]
    finally:
        stop_pid(worker.pid, process=worker, grace_s=20)
    assert sorted(re.search(rb'"event_id":\s*"(c\d+)"', v).group(1) for _k, v in relayed) == sorted(  # type: ignore[union-attr]
        e.event_id.encode() for e in clicks
    ), log_path.read_text()[-3000:]
    assert SECRET not in log_path.read_text(errors="replace")


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted_ca", "untrusted_ca"])
def test_aiokafka_with_faust_broker_credentials_produces_over_tls_and_refuses_an_untrusted_ca(
    kafka_tls: TlsKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    """The SSL context Faust gets from `broker_credentials`, used by aiokafka directly (the worker test is slow)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    from adgen.streams.admin import ensure_topics
    from adgen.streams.app import broker_credentials
    from adgen.streams.topics import AD_UPDATES, topic_name

    ca = pki.ca_cert if trusted else pki.untrusted_ca_cert
    settings = env_settings(monkeypatch, kafka_env(kafka_tls, ca, "aio-"))
    credentials = broker_credentials(settings.kafka)
    context = getattr(credentials, "context", None)
    assert context is not None and context.verify_mode.name == "CERT_REQUIRED"

    async def produce_one() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            security_protocol="SSL",
            ssl_context=context,
            request_timeout_ms=5000,
        )
        try:
            await producer.start()
            await producer.send_and_wait(topic_name(AD_UPDATES, "aio-"), b'{"probe": 1}', key=b"a1")
        finally:
            await producer.stop()

    if trusted:
        ensure_topics(settings)
        asyncio.run(asyncio.wait_for(produce_one(), timeout=20))
        return
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError) as info:
        asyncio.run(asyncio.wait_for(produce_one(), timeout=20))
    assert time.monotonic() - started < 20
    assert re.search(r"Unable to bootstrap|certificate", str(info.value), re.I), str(info.value)


def refused_delivery(settings: Settings) -> Exception:
    """Send one event and flush briefly: the DeliveryError a user gets from a broker that will not take it."""
    from adgen.streams.events import AdDelete
    from adgen.streams.producer import DeliveryError, EventProducer

    producer = EventProducer(settings)
    try:
        producer.send(AdDelete(event_id="d-refused", event_time=T0, ad_id="a-refused"))
        with pytest.raises(DeliveryError) as info:
            producer.flush(timeout_s=2)
    finally:
        producer.close()
    assert info.value.undelivered == 1
    return info.value


def test_kafka_clients_refuse_an_untrusted_certificate_with_a_clear_error(
    kafka_tls: TlsKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = env_settings(monkeypatch, kafka_env(kafka_tls, pki.untrusted_ca_cert, "ssl3-"))
    message = str(refused_delivery(settings))
    assert re.search(r"certificate verify failed", message), message


@pytest.fixture(scope="module")
def kafka_sasl_tls(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[TlsKafka]:
    with TlsKafka(tmp_path_factory.mktemp("tansu-auth") / "tansu.log", pki, authentication=True) as kafka:
        yield kafka


def test_sasl_ssl_login_refused_by_the_broker_is_a_clear_error_without_the_password(
    kafka_sasl_tls: TlsKafka, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = kafka_env(kafka_sasl_tls, pki.ca_cert, "sasl-")
    values |= {
        "ADGEN_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "ADGEN_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "ADGEN_KAFKA__SASL_USERNAME": "adgen",
        "ADGEN_KAFKA__SASL_PASSWORD": SECRET,
    }
    message = str(refused_delivery(env_settings(monkeypatch, values)))
    assert re.search(r"SASL.*authentication failed", message), message
    assert SECRET not in message


if __name__ == "__main__":  # the Faust worker of test_faust_worker_consumes_and_produces_over_tls
    from functools import partial

    from adgen.streams.app import create_app, declare_topics, decoded_stream, send_dead_letter
    from adgen.streams.codec import encode_event

    worker_settings = Settings()
    app = create_app(worker_settings)
    topics = declare_topics(app, worker_settings)
    relay_out = app.topic(
        f"{worker_settings.kafka.topic_prefix}{RELAY_TOPIC}", key_type=bytes, value_type=bytes, value_serializer="raw"
    )

    @app.agent(topics.user_behavior)
    async def relay_behavior(stream):  # type: ignore[no-untyped-def]
        async for event in decoded_stream(stream, partial(send_dead_letter, topics.dead_letter), worker_settings):
            key, value = encode_event(event)
            await relay_out.send(key=key, value=value)

    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", "info"]
    app.main()
