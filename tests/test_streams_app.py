"""create_app maps settings to Faust: brokers, credentials, store, partitions, timeouts, Tansu quirks."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from adgen.config import Settings
from adgen.streams.app import broker_credentials, create_app, declare_topics


def settings_with(tmp_path: Path, **kafka: object) -> Settings:
    return Settings(kafka=kafka, paths={"state": tmp_path / "state"}, worker={"store": "memory://"})


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
    app = create_app(settings_with(tmp_path, embedded=True), app_id="t-emb")
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
