"""A real Faust worker (subprocess) on the embedded broker: good events flow through `decoded_stream`,
garbage lands in the dead-letter topic with its reason, and the agent never dies.

Run as a script, this file *is* the worker: `python tests/test_streams_faust_worker.py` with ADGEN_* env.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from topic_reads import read_topic

from adgen.core.config import Settings
from adgen.runtime.processes import stop_pid
from adgen.runtime.tansu_quirks import kafka_env
from adgen.streams.app import create_app, declare_topics, decoded_stream, send_dead_letter
from adgen.streams.codec import encode_event, event_key
from adgen.streams.dlq import DeadLetter, dead_letter_topic
from adgen.streams.events import AdClick, AdDelete, ContentPlay
from adgen.streams.producer import EventProducer
from adgen.streams.topics import AD_UPDATES, USER_BEHAVIOR, topic_name

RELAY_TOPIC = "relay-out"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def build_relay_app(settings: Settings):  # type: ignore[no-untyped-def]
    """An agent that decodes user-behavior and forwards each good event (re-encoded) to `relay-out`."""
    app = create_app(settings)
    topics = declare_topics(app, settings)
    relay = app.topic(
        topic_name_for(settings, RELAY_TOPIC), key_type=bytes, value_type=bytes, value_serializer="raw", partitions=4
    )

    @app.agent(topics.user_behavior)
    async def relay_behavior(stream):  # type: ignore[no-untyped-def]
        async for event in decoded_stream(stream, partial(send_dead_letter, topics.dead_letter), settings):
            key, value = encode_event(event)
            await relay.send(key=key, value=value)

    return app


def topic_name_for(settings: Settings, name: str) -> str:
    return f"{settings.kafka.topic_prefix}{name}"


def worker_env(settings: Settings, state_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        **kafka_env(settings.kafka),
        "ADGEN_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "ADGEN_WORKER__APP_ID": settings.worker.app_id,
        "ADGEN_PATHS__STATE": str(state_dir),
    }


def good_events(n: int, users: int) -> list[AdClick | ContentPlay]:
    out: list[AdClick | ContentPlay] = []
    for i in range(n):
        user = f"u{i % users}"
        when = T0 + timedelta(seconds=i)
        if i % 2:
            out.append(AdClick(event_id=f"e{i}", event_time=when, user_id=user, ad_id=f"a{i % 13}"))
        else:
            out.append(ContentPlay(event_id=f"e{i}", event_time=when, user_id=user, content_id=f"c{i % 7}"))
    return out


GARBAGE: list[tuple[bytes | None, bytes, str]] = [
    (b"u1", b"{not json", "malformed_json"),
    (b"u1", b"\xff\xfe\x00", "not_utf8"),
    (b"u2", json.dumps({"type": "ad_click", "event_id": "g1", "event_time": "2026-11-01T00:00:00Z",
                        "user_id": "u2", "ad_id": 42}).encode(), "schema_violation"),
    (b"u3", json.dumps({"type": "teleport", "event_id": "g2"}).encode(), "unknown_type"),
    (b"u3", json.dumps({"type": "ad_click", "schema_version": 9, "event_id": "g3"}).encode(),
     "unknown_schema_version"),
    (b"u4", b'{"type": "ad_click", "pad": "' + b"x" * 70_000 + b'"}', "oversized"),
    (b"not-u5", json.dumps({"type": "ad_click", "event_id": "g4", "event_time": "2026-11-01T00:00:00Z",
                            "user_id": "u5", "ad_id": "a1"}).encode(), "wrong_key"),
]  # fmt: skip


@pytest.mark.integration
def test_faust_worker_relays_good_events_and_dead_letters_garbage(stream_settings: Settings, tmp_path: Path) -> None:
    settings = stream_settings
    relay_topic = topic_name_for(settings, RELAY_TOPIC)
    admin = AdminClient(settings.kafka.confluent_config())
    admin.create_topics([NewTopic(relay_topic, 4, 1)])[relay_topic].result(timeout=10)

    events = good_events(10_000, users=200)
    half = len(events) // 2
    with EventProducer(settings) as producer:
        for event in events[:half]:
            producer.send(event)
        for key, value, _kind in GARBAGE:  # garbage in the middle of the stream: later events must still flow
            producer.send_raw(topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix), key, value)
        for event in events[half:]:
            producer.send(event)
        producer.send(AdDelete(event_id="d1", event_time=T0, ad_id="a1"))  # another topic: not relayed

    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, __file__], env=worker_env(settings, tmp_path / "state"), stdout=log, stderr=log
        )
    try:
        relayed = read_topic(settings, relay_topic, len(events), timeout_s=90, worker=worker)
        letters = read_topic(settings, dead_letter_topic(settings), len(GARBAGE), timeout_s=30, worker=worker)
        assert worker.poll() is None, "worker died:\n" + log_path.read_text()[-3000:]
    finally:
        stop_pid(worker.pid, process=worker, grace_s=30)

    # every good event arrived once, keyed by its user, in per-user order
    assert len(relayed) == len(events), log_path.read_text()[-3000:]
    per_user: dict[bytes, list[str]] = defaultdict(list)
    for key, value in relayed:
        body = json.loads(value)
        assert key == body["user_id"].encode()
        per_user[key].append(body["event_id"])
    expected: dict[bytes, list[str]] = defaultdict(list)
    for event in events:
        expected[event_key(event) or b""].append(event.event_id)
    assert per_user == expected

    # every piece of garbage is in the dead-letter topic with the right reason and its original bytes
    records = [DeadLetter.model_validate_json(value) for _key, value in letters]
    assert sorted(r.error_kind for r in records) == sorted(kind for _k, _v, kind in GARBAGE)
    by_kind = {r.error_kind: r for r in records}
    assert by_kind["schema_violation"].error.startswith("ad_click: field 'ad_id' = 42")
    assert by_kind["malformed_json"].original() == b"{not json"
    assert by_kind["wrong_key"].key == "not-u5" and "user_id 'u5'" in by_kind["wrong_key"].error
    assert by_kind["oversized"].original_size > 70_000 and by_kind["oversized"].truncated
    assert all(r.source_topic == topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix) for r in records)
    assert all(r.offset is not None and r.partition is not None for r in records)
    assert AD_UPDATES.name  # the ad delete went to its own topic and was not relayed (count above is exact)


if __name__ == "__main__":
    worker_settings = Settings()
    faust_app = build_relay_app(worker_settings)
    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", "warn"]
    faust_app.main()
