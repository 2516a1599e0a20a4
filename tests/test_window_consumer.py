"""The behaviour-window consumer on the real embedded broker and redis-server, in process.

Redis must end with exactly the windows the good events imply; bad events end in the dead-letter topic;
a consumer with an empty local store restores the rows from the changelog before it consumes (else a
second round of events would build windows from nothing); two consumers in one group end exact. Garbage
mixed into good batches: one letter per bad message (reason, place, original bytes), every good event
applied, and no offset committed before the batch's letters are acknowledged, even when the broker does
not take them for a while.
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
from confluent_kafka import Consumer, Message, TopicPartition

from adgen.core.config import Settings
from adgen.processors.behavior_windows import WindowUpdate
from adgen.processors.feature_store import FeatureStore, UserWindowFeatures
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.redis_keys import RedisKeys
from adgen.processors.window_changelog import MARKER_KEY
from adgen.processors.window_consumer import WindowConsumer, group_id, loop_publisher, run_in_thread
from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
from adgen.processors.window_store import WindowStore
from adgen.runtime.processes import free_port
from adgen.streams.dlq import MAX_ORIGINAL_BYTES, DeadLetter, dead_letter_topic
from adgen.streams.dlq_producer import DeadLetterProducer, Deliveries
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
    prepare: Callable[[WindowConsumer], None] | None = None,
) -> tuple[list[WindowConsumer], list[WindowUpdate]]:
    """Consumers in one group, each with its own store, until `until(consumers)` holds; then stopped.
    `prepare` sees each consumer before it starts (to wrap or replace a part of it)."""
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
        if prepare is not None:
            prepare(consumer)
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


# -- bad input: dead letters -------------------------------------------------------------------------------
def garbage(n: int, max_message_bytes: int) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, the error kind it must be dead-lettered with); every value is unique, so its letter can
    be matched to it. One oversized value (its letter keeps the first MAX_ORIGINAL_BYTES)."""
    kinds: list[tuple[bytes | None, Callable[[int], bytes], str]] = [
        (b"u001", lambda i: b"\xff\xfe bad %d" % i, "not_utf8"),
        (b"u002", lambda i: b'{"type": "ad_click", "event_id": "bad-%d"' % i, "malformed_json"),
        (b"u003", lambda i: b'{"type": "no_such_event", "n": %d}' % i, "unknown_type"),
        (None, lambda i: b"[%d]" % i, "not_object"),
        (  # valid JSON and a valid event, but keyed by another user: it would break per-user ordering
            b"u004",
            lambda i: (
                b'{"type":"ad_request","event_id":"bad-%d","event_time":"2026-11-01T00:00:00Z","user_id":"u005"}' % i
            ),
            "wrong_key",
        ),
    ]
    out = [(key, make(i), kind) for i in range(n) for key, make, kind in kinds]
    return [*out, (b"u006", b"x" * (max_message_bytes + 100), "oversized")]


def produce_mixed(settings: Settings, good: list, bad: list[tuple[bytes | None, bytes, str]], seed: int) -> None:
    """Good events and garbage interleaved on user-behavior, so batches hold both."""
    items: list = [("good", e) for e in good] + [("bad", b) for b in bad]
    random.Random(seed).shuffle(items)
    topic = topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix)
    with EventProducer(settings) as producer:
        for kind, item in items:
            if kind == "good":
                producer.send(item)
            else:
                producer.send_raw(topic, item[0], item[1])


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The window consumer group's committed offsets on user-behavior (negative: nothing committed)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group_id(settings)})
    try:
        topic = topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix)
        parts = [TopicPartition(topic, p) for p in range(USER_BEHAVIOR.partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def check_letters(settings: Settings, bad: list[tuple[bytes | None, bytes, str]]) -> None:
    """Every bad message has exactly one letter with its reason, its place and its original bytes."""
    topic = topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix)
    where = {m.value(): (m.partition(), m.offset()) for m in read_topic(settings, topic, USER_BEHAVIOR.partitions)}
    letters = [DeadLetter.model_validate_json(m.value()) for m in read_topic(settings, dead_letter_topic(settings), 1)]
    by_original: dict[bytes, list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        by_original[letter.original()].append(letter)
    assert len(letters) == len(bad)
    for key, value, kind in bad:
        (letter,) = by_original[value[:MAX_ORIGINAL_BYTES]]
        assert (letter.error_kind, letter.source_topic) == (kind, topic)
        assert letter.error and (letter.partition, letter.offset) == where[value]
        assert letter.key == (key.decode() if key else None)
        assert letter.original_size == len(value) and letter.truncated == (len(value) > MAX_ORIGINAL_BYTES)


def test_garbage_mixed_into_good_batches_is_dead_lettered_with_its_reason_before_the_commit(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    good = make_events(users=30, per_user=12, tag="a", seed=5)
    bad = garbage(60, settings.kafka.max_message_bytes)
    bad_values = {value for _, value, _ in bad}
    produce_mixed(settings, good, bad, seed=5)
    batches: list[tuple[int, int]] = []  # (good, bad) messages per batch
    sent: list[Deliveries] = []
    commits_after_letters: list[bool] = []

    def prepare(consumer: WindowConsumer) -> None:
        process, send, commit = consumer.process, consumer.dead_letters.send, consumer._commit

        def recording_process(messages: Sequence[Message]) -> None:
            n_bad = sum(m.value() in bad_values for m in messages)
            batches.append((len(messages) - n_bad, n_bad))
            process(messages)

        def recording_send(letters: Sequence[DeadLetter]) -> Deliveries:
            sent.append(send(letters))
            return sent[-1]

        def checked_commit() -> None:
            # every letter handed out so far is acknowledged by the broker whenever offsets are committed
            commits_after_letters.append(all(d.outstanding == 0 and not d.failed for d in sent))
            commit()

        consumer.process, consumer.dead_letters.send, consumer._commit = (
            recording_process,
            recording_send,
            checked_commit,
        )

    store = WindowStore(tmp_path / "w1")
    try:
        (consumer,), _ = asyncio.run(
            run_consumers(
                settings,
                [store],
                lambda cs: cs[0].events >= len(good) and not cs[0].uncommitted,
                prepare=prepare,
            )
        )
    finally:
        store.close()
    assert any(g and b for g, b in batches), f"no batch held both good and bad messages: {batches}"
    assert consumer.events == len(good)
    assert exact(redis_client, settings, expected(good, settings)) == []
    check_letters(settings, bad)
    assert commits_after_letters and all(commits_after_letters)
    reasons = consumer.metrics.dead_letter_reasons
    kinds = defaultdict(int)
    for _, _, kind in bad:
        kinds[kind] += 1
    assert {k: reasons.labels(USER_BEHAVIOR.name, k)._value.get() for k in kinds} == kinds
    # everything consumed is committed: the offsets after the last message of each partition
    topic = topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix)
    ends: dict[int, int] = {}
    for m in read_topic(settings, topic, USER_BEHAVIOR.partitions):
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
    assert committed_offsets(settings) == ends


def test_a_dead_letter_the_broker_does_not_take_keeps_its_batch_uncommitted_until_it_lands(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    good = make_events(users=10, per_user=5, tag="a", seed=6)
    bad = garbage(4, settings.kafka.max_message_bytes)
    produce_mixed(settings, good, bad, seed=6)
    unreachable = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})}
    )

    def break_dead_letters(consumer: WindowConsumer) -> None:
        consumer.dead_letters.close(0)
        consumer.dead_letters = DeadLetterProducer(
            unreachable,
            consumer.stopping,
            topic=dead_letter_topic(settings),
            on_retry=consumer.metrics.dead_letter_retries.labels(USER_BEHAVIOR.name).inc,
            **{"message.timeout.ms": 500},
        )

    store = WindowStore(tmp_path / "w1")
    try:
        (stuck,), _ = asyncio.run(
            run_consumers(settings, [store], lambda cs: cs[0].dead_letters.failures >= 2, prepare=break_dead_letters)
        )
        # its batch was folded and published, but with its letters undelivered nothing may be committed
        assert stuck.metrics.dead_letter_retries.labels(USER_BEHAVIOR.name)._value.get() >= 2
        assert stuck.events == 0 and stuck.metrics.dead_letters.labels(USER_BEHAVIOR.name)._value.get() == 0
        assert all(offset < 0 for offset in committed_offsets(settings).values())
        # a consumer whose dead letters land replays the uncommitted batch: every letter arrives, once
        (consumer,), _ = asyncio.run(
            run_consumers(settings, [store], lambda cs: cs[0].events >= len(good) and not cs[0].uncommitted)
        )
    finally:
        store.close()
    assert consumer.events == len(good)
    assert exact(redis_client, settings, expected(good, settings)) == []
    check_letters(settings, bad)
    assert all(offset > 0 for offset in committed_offsets(settings).values())
