"""The behaviour-window consumer on the real embedded broker and redis-server, in process.

Redis must end with exactly the windows the good events imply; bad events end in the dead-letter topic;
a consumer with an empty local store restores the rows from the changelog before it consumes (else a
second round of events would build windows from nothing); two consumers in one group end exact.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from adgen.core.config import Settings
from adgen.processors.behavior_windows import WindowUpdate
from adgen.processors.feature_store import FeatureStore, UserWindowFeatures
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.redis_keys import RedisKeys
from adgen.processors.window_changelog import MARKER_KEY
from adgen.processors.window_consumer import WindowConsumer, loop_publisher, run_in_thread
from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
from adgen.processors.window_store import WindowStore
from adgen.streams.events import AdRequest, ContentComplete, ContentSearch, ProfileUpdate
from adgen.streams.producer import EventProducer
from adgen.streams.topics import USER_BEHAVIOR, WINDOW_CHANGELOG, topic_name

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def make_events(users: int, per_user: int, tag: str, seed: int) -> list:
    rng = random.Random(seed)
    out: list = []
    for u in range(users):
        user = f"u{u:03d}"
        out.append(ProfileUpdate(event_id=f"{tag}-p-{user}", event_time=T0, user_id=user, arpu=float(u + rng.random())))
        for j in range(per_user):
            at = T0 + timedelta(minutes=rng.randrange(10_000))
            if j % 3:
                out.append(
                    ContentComplete(
                        event_id=f"{tag}-{user}-{j}",
                        event_time=at,
                        user_id=user,
                        content_id=f"c{j}",
                        title="a video",
                        category=f"cat{rng.randrange(5)}",
                    )
                )
            else:
                out.append(ContentSearch(event_id=f"{tag}-{user}-{j}", event_time=at, user_id=user, query="shoes"))
        out.append(AdRequest(event_id=f"{tag}-rq-{user}", event_time=T0 + timedelta(days=9), user_id=user))
    rng.shuffle(out)  # out of order within each user's partition too
    return out


def expected(events: list, settings: Settings) -> dict[str, UserWindow]:
    limits = WindowLimits(days=settings.window.days, max_events=settings.window.max_events)
    by_user: dict[str, list] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    return {u: apply_events(UserWindow(user_id=u), evs, limits) for u, evs in by_user.items()}


def redis_windows(client: redis.Redis, settings: Settings, users: Sequence[str]) -> dict[str, dict | None]:
    keys = RedisKeys.of(settings.redis)
    out = {}
    for user in users:
        raw = client.hget(keys.user_window(user), "data")
        out[user] = json.loads(raw) if raw else None
    return out


def exact(client: redis.Redis, settings: Settings, want: dict[str, UserWindow]) -> list[str]:
    got = redis_windows(client, settings, sorted(want))
    return [
        u
        for u, w in want.items()
        if got[u] is None
        or got[u]["window_events"] != len(w.events)
        or got[u]["arpu"] != w.profile.arpu
        or got[u]["interest_summary"] != w.summary
    ]


async def run_consumers(
    settings: Settings,
    stores: Sequence[WindowStore],
    until: Callable[[list[WindowConsumer]], bool],
    timeout_s: float = 90,
) -> tuple[list[WindowConsumer], list[WindowUpdate]]:
    """Consumers in one group, each with its own store, until `until(consumers)` holds; then stopped."""
    loop = asyncio.get_running_loop()
    feature_store = FeatureStore(settings.redis)
    observed: list[WindowUpdate] = []

    async def write(features: Sequence[UserWindowFeatures], updates: Sequence[WindowUpdate]) -> None:
        await feature_store.write_user_windows(features)
        observed.extend(updates)

    consumers = []
    for store in stores:
        consumer = WindowConsumer(settings, store, WorkerMetrics(), lambda f, u: None)
        consumer.publish = loop_publisher(loop, write, consumer.stopping)
        consumers.append(consumer)
    tasks = [asyncio.ensure_future(run_in_thread(c)) for c in consumers]
    try:
        deadline = time.monotonic() + timeout_s
        while not until(consumers):
            assert time.monotonic() < deadline, f"timed out; events {[c.events for c in consumers]}"
            assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
            await asyncio.sleep(0.2)
    finally:
        for c in consumers:
            c.stop()
        await asyncio.gather(*tasks)
        await feature_store.close()
    return consumers, observed


def produce(settings: Settings, events: list) -> None:
    with EventProducer(settings) as producer:
        for e in events:
            producer.send(e)


def read_topic(settings: Settings, topic: str, partitions: int) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"read-{time.time_ns()}"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, idle = [], 0
    while idle < 4:
        msg = consumer.poll(0.5)
        if msg is None:
            idle += 1
        elif msg.error() is None:
            out.append(msg)
    consumer.close()
    return out


@pytest.fixture
def settings(stream_settings: Settings, tmp_path: Path) -> Settings:
    return stream_settings.model_copy(
        update={"paths": stream_settings.paths.model_copy(update={"state": tmp_path / "state"})}
    )


def test_windows_reach_redis_exactly_and_bad_events_are_dead_lettered(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = make_events(users=30, per_user=12, tag="a", seed=1)
    produce(settings, events)
    with EventProducer(settings) as producer:
        producer.send_raw(topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix), b"u001", b"{not json")
    store = WindowStore(tmp_path / "w1")
    try:
        (consumer,), observed = asyncio.run(
            run_consumers(settings, [store], lambda cs: cs[0].events >= len(events) and not cs[0].uncommitted)
        )
        assert consumer.events == len(events)
        assert exact(redis_client, settings, expected(events, settings)) == []
        assert {w.user_id for w, new_request in observed if new_request} == {f"u{u:03d}" for u in range(30)}
        # every row is in the changelog, in the partition of its user's events, and in the local store
        changelog = read_topic(settings, topic_name(WINDOW_CHANGELOG, settings.kafka.topic_prefix), 4)
        rows = {m.key(): m for m in changelog if m.key() != MARKER_KEY}
        assert len(rows) == 30
        local = {u: r for p in range(4) for u, r in store.rows(p)}
        assert {k: m.value() for k, m in rows.items()} == local
    finally:
        store.close()
    letters = [json.loads(m.value()) for m in read_topic(settings, settings.kafka.topic_prefix + "dead-letter", 1)]
    assert [(d["error_kind"], d["source_topic"]) for d in letters] == [
        ("malformed_json", topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix))
    ]


def test_an_empty_local_store_is_restored_from_the_changelog_before_consuming(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    first = make_events(users=20, per_user=10, tag="a", seed=2)
    produce(settings, first)
    store = WindowStore(tmp_path / "w1")
    try:
        asyncio.run(run_consumers(settings, [store], lambda cs: cs[0].events >= len(first) and not cs[0].uncommitted))
    finally:
        store.close()
    # a new machine: same group (so it starts at the committed offsets), no local state at all
    second = make_events(users=20, per_user=5, tag="b", seed=3)
    produce(settings, second)
    fresh = WindowStore(tmp_path / "w2")
    try:
        (consumer,), _ = asyncio.run(run_consumers(settings, [fresh], lambda cs: cs[0].events >= len(second)))
        assert consumer.events == len(second), "the committed offsets were not respected"
        assert exact(redis_client, settings, expected(first + second, settings)) == []
        assert all(fresh.position(p) > 0 for p in range(4))
    finally:
        fresh.close()


def test_two_consumers_in_one_group_share_the_partitions_and_end_exact(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = make_events(users=40, per_user=8, tag="a", seed=4)
    produced: list[set[int]] = []  # the assignments when both had joined

    def until(consumers: list[WindowConsumer]) -> bool:
        if not produced and all(c.assigned for c in consumers):  # both in the group: then produce
            produced.extend(set(c.assigned) for c in consumers)
            produce(settings, events)
        return bool(produced) and sum(c.events for c in consumers) >= len(events)

    stores = [WindowStore(tmp_path / "w1"), WindowStore(tmp_path / "w2")]
    try:
        consumers, _ = asyncio.run(run_consumers(settings, stores, until, timeout_s=120))
        assert all(c.events > 0 for c in consumers)
        assert sorted(p for assigned in produced for p in assigned) == [0, 1, 2, 3]
        assert exact(redis_client, settings, expected(events, settings)) == []
    finally:
        for s in stores:
            s.close()
