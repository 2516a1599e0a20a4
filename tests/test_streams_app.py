"""create_app maps settings to Faust: brokers, credentials, store, partitions, timeouts, Tansu quirks; and the
decode-or-dead-letter pattern: per event, per batch, and its log that a flood of bad input cannot flood."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import faust
import pytest
from confluent_kafka import Message

from adgen.core.config import Settings
from adgen.runtime.tansu_quirks import client_overrides
from adgen.streams import app as streams_app
from adgen.streams.app import broker_credentials, create_app, declare_topics, decode_batch, decode_or_dead_letter
from adgen.streams.codec import EventDecodeError
from adgen.streams.dlq import DeadLetter, DeadLetterLog


def settings_with(tmp_path: Path, **kafka: object) -> Settings:
    return Settings(kafka=kafka, paths={"state": tmp_path / "state"})


def test_app_takes_brokers_partitions_session_timeout_and_store_from_settings(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path, bootstrap_servers="k1:9092, k2:9092", default_partitions=6, session_timeout_ms=9000
    )
    app = create_app(settings, app_id="t-app")
    assert [str(url) for url in app.conf.broker] == ["kafka://k1:9092", "kafka://k2:9092"]
    assert app.conf.topic_partitions == 6
    assert app.conf.broker_session_timeout == 9.0
    assert str(app.conf.store) == "memory:"
    assert app.conf.web_enabled is False
    assert app.conf.recovery_consistency_check is True  # real Kafka keeps Faust's safety checks


def test_tansu_quirks_apply_only_to_the_embedded_broker(tmp_path: Path) -> None:
    """The runtime hands the quirks out in the settings (client overrides); create_app applies them unseen."""
    app = create_app(settings_with(tmp_path, client_overrides=client_overrides().model_dump()), app_id="t-emb")
    assert app.conf.recovery_consistency_check is False
    assert app.conf.processing_guarantee.value == "at_least_once"


def test_sasl_ssl_settings_become_faust_sasl_credentials_with_tls(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="adgen",
        sasl_password="pw",
    )
    credentials = broker_credentials(settings.kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "adgen" and credentials.password == "pw"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    app_credentials = create_app(settings, app_id="t-sasl").conf.broker_credentials
    assert isinstance(app_credentials, faust.SASLCredentials) and app_credentials.username == "adgen"


def test_sasl_without_a_username_is_a_clear_configuration_error(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="sasl_username"):
        broker_credentials(settings.kafka)


def test_topics_are_declared_raw_with_the_contract_partitions_and_prefix(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, topic_prefix="stg-")
    topics = declare_topics(create_app(settings, app_id="t-topics"), settings)
    assert topics.user_behavior.get_topic_name() == "stg-user-behavior"
    assert topics.user_behavior.partitions == 4 and topics.ad_updates.partitions == 2
    assert topics.dead_letter.value_serializer == "raw"


def test_a_bad_message_becomes_a_dead_letter_and_a_good_one_an_event(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, topic_prefix="stg-")
    good = b'{"type":"ad_request","event_id":"e1","event_time":"2026-11-22T10:00:00Z","user_id":"u1"}'
    event = decode_or_dead_letter(settings, topic="stg-user-behavior", value=good, key=b"u1", partition=0, offset=5)
    assert not isinstance(event, DeadLetter) and event.user_id == "u1"  # type: ignore[attr-defined]
    letter = decode_or_dead_letter(settings, topic="stg-user-behavior", value=None, key=None, partition=1, offset=6)
    assert isinstance(letter, DeadLetter) and letter.error_kind == "malformed_json" and letter.offset == 6


def test_even_a_codec_crash_is_dead_lettered_instead_of_killing_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_codec(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(streams_app, "try_decode_event", broken_codec)
    letter = decode_or_dead_letter(settings_with(tmp_path), topic="user-behavior", value=b"{}", key=b"u1", offset=9)
    assert isinstance(letter, DeadLetter)
    assert letter.error_kind == "decoder_error" and "RuntimeError: boom" in letter.error
    assert letter.original() == b"{}" and letter.offset == 9


def test_a_batch_is_decoded_in_one_pass_into_events_and_letters_with_reason_and_bytes(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    good = b'{"type":"ad_request","event_id":"e%d","event_time":"2026-11-22T10:00:00Z","user_id":"u1"}'
    messages = [
        Message(topic="user-behavior", partition=0, offset=10, key=b"u1", value=good % 1),
        Message(topic="user-behavior", partition=0, offset=11, key=b"u1", value=b"{nope"),
        Message(topic="user-behavior", partition=1, offset=3, key=None, value=None),
        Message(topic="user-behavior", partition=1, offset=4, key=b"u2", value=good % 2),  # keyed by another user
        Message(topic="user-behavior", partition=0, offset=12, key=b"u1", value=good % 3),
    ]
    batch = decode_batch(settings, messages)
    assert [(e.event_id, p, o) for e, p, o in batch.events] == [("e1", 0, 10), ("e3", 0, 12)]  # type: ignore[attr-defined]
    assert [(x.error_kind, x.partition, x.offset, x.original()) for x in batch.letters] == [
        ("malformed_json", 0, 11, b"{nope"),
        ("malformed_json", 1, 3, b""),
        ("wrong_key", 1, 4, good % 2),
    ]
    assert len({x.failed_at for x in batch.letters}) == 1  # one clock read per batch
    assert batch.next_offsets == {0: 13, 1: 5}
    assert batch.kinds() == {"malformed_json": 2, "wrong_key": 1}


def test_a_flood_of_bad_events_logs_a_line_per_kind_and_period_not_one_per_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = DeadLetterLog(logging.getLogger("test-dlq"), every_s=10.0, clock=lambda: now[0])
    letters = [
        DeadLetter.from_error(EventDecodeError(kind, "why"), source_topic="user-behavior", value=b"x", offset=i)
        for i in range(1000)
        for kind in ("malformed_json", "not_utf8")
    ]
    with caplog.at_level(logging.WARNING, logger="test-dlq"):
        for start in range(0, len(letters), 100):
            log.record(letters[start : start + 100])
        assert len(caplog.records) == 2  # the first of each kind, in full
        now[0] = 11.0
        log.record(letters[:1])  # the period is over: its summary
        assert len(caplog.records) == 3
        log.record(letters[1:2])  # a new period: the first of a kind in full again
    summary = caplog.records[2].getMessage()
    assert "dead-lettered 2001 events" in summary and "malformed_json: 1001" in summary and "not_utf8: 1000" in summary
    assert len(caplog.records) == 4 and "not_utf8" in caplog.records[3].getMessage()
