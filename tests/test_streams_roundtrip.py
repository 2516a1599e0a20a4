"""EventProducer + topic admin against the embedded broker, read back with a plain confluent-kafka consumer."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from adgen.core.config import Settings
from adgen.runtime.tansu_broker import TansuBroker
from adgen.streams.admin import TopicAdminError, ensure_topics
from adgen.streams.codec import EventDecodeError, decode_event
from adgen.streams.events import AdClick, AdUpsert, SearchQuery
from adgen.streams.producer import DeliveryError, EventProducer
from adgen.streams.topics import AD_UPDATES, ALL_TOPICS, SEARCH_QUERIES, USER_BEHAVIOR, topic_name

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def read_all(settings: Settings, topics: list[str], expected: int, timeout_s: float = 60) -> list:  # type: ignore[type-arg]
    """All messages of `topics` from the beginning, counting records (Tansu watermarks lag: quirk 2)."""
    consumer = Consumer(
        {
            **settings.kafka.consumer_config(),
            "group.id": f"read-all-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                got.append(message)
    finally:
        consumer.close()
    return got


def test_ten_thousand_events_come_back_complete_keyed_and_in_per_key_order(stream_settings: Settings) -> None:
    settings = stream_settings
    prefix = settings.kafka.topic_prefix
    events = []
    for i in range(10_000):
        when = T0 + timedelta(seconds=i)
        if i % 10 == 0:
            events.append(
                AdUpsert(event_id=f"e{i}", event_time=when, ad_id=f"a{i % 37}", name=f"ad {i}", category_path=["C"])
            )
        elif i % 10 == 1:
            events.append(SearchQuery(event_id=f"e{i}", event_time=when, query_id=f"q{i}", text="pipette"))
        else:
            events.append(AdClick(event_id=f"e{i}", event_time=when, user_id=f"u{i % 101}", ad_id=f"a{i % 37}"))
    with EventProducer(settings) as producer:
        for event in events:
            producer.send(event)
    assert producer.delivered == len(events)

    names = [topic_name(spec, prefix) for spec in (USER_BEHAVIOR, AD_UPDATES, SEARCH_QUERIES)]
    messages = read_all(settings, names, len(events))
    assert len(messages) == len(events)

    seen: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    for message in messages:
        event = decode_event(message.topic(), message.value(), key=message.key(), prefix=prefix)  # checks the key
        seen[(message.topic(), message.key())].append(event.event_id)  # type: ignore[attr-defined]
    expected: dict[tuple[str, bytes], list[str]] = defaultdict(list)
    for event in events:
        spec = {AdClick: USER_BEHAVIOR, AdUpsert: AD_UPDATES, SearchQuery: SEARCH_QUERIES}[type(event)]
        key = getattr(event, spec.key_field or "").encode()
        expected[(topic_name(spec, prefix), key)].append(event.event_id)
    assert seen == expected  # same events per key, in the order they were produced


def test_producer_refuses_an_invalid_event_before_it_reaches_the_broker(stream_settings: Settings) -> None:
    broken = AdClick.model_construct(event_id="e1", event_time=T0, user_id="bad id!", ad_id="a1", schema_version=1)
    with EventProducer(stream_settings) as producer, pytest.raises(EventDecodeError, match="user_id"):
        producer.send(broken)
    assert producer.sent == 0


def test_delivery_failures_are_raised_on_flush(stream_settings: Settings, tmp_path: Path) -> None:
    """A broker that goes away mid-stream: the undelivered events surface as DeliveryError, not silence."""
    with TansuBroker(tmp_path / "tansu.log") as broker:
        kafka = stream_settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        settings = stream_settings.model_copy(update={"kafka": kafka})
        ensure_topics(settings)
        producer = EventProducer(settings, **{"message.timeout.ms": 1500})
        producer.send(AdClick(event_id="e0", event_time=T0, user_id="u1", ad_id="a1"))
        producer.flush(10)
    try:
        producer.send(AdClick(event_id="e1", event_time=T0, user_id="u1", ad_id="a1"))
        with pytest.raises(DeliveryError) as info:
            producer.flush(10)
    finally:
        producer.close()  # else its client keeps dialling the stopped broker until the interpreter exits
    assert producer.delivered == 1
    assert info.value.failures and "timed out" in info.value.failures[0].lower()


def test_ensure_topics_is_idempotent_and_rejects_a_partition_count_that_breaks_the_contract(
    stream_settings: Settings,
) -> None:
    prefix = stream_settings.kafka.topic_prefix
    again = ensure_topics(stream_settings)
    assert again == {topic_name(spec, prefix): spec.partitions for spec in ALL_TOPICS}

    skewed = stream_settings.model_copy(
        update={"kafka": stream_settings.kafka.model_copy(update={"topic_prefix": prefix + "skew-"})}
    )
    name = topic_name(USER_BEHAVIOR, prefix + "skew-")
    admin = AdminClient(skewed.kafka.confluent_config())
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=10)
    with pytest.raises(TopicAdminError, match=r"has 1 partitions, the contract in streams/topics\.py says 4"):
        ensure_topics(skewed)
