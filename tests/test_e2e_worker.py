"""End to end: `adgen worker` as a real subprocess on the embedded Tansu broker and a real redis-server.

One small synthetic world is replayed with `adgen produce`; the worker is SIGKILLed mid-stream and
restarted; Redis is shut down for 10 s; bad events are sent. After each fault, Redis must hold exactly
what the events imply (window sizes, profiles and the prompt-input fingerprint of every user's last list).

The model is a randomly initialised small LM (no trained checkpoint is needed to test the plumbing): its
lists are valid ads, not good ones. Slow (~4-6 min on the shared 2-core box): `pytest -m slow`.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from adgen.config import Settings
from adgen.index.semantic_ids import sid_vocabulary
from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot
from adgen.processors.feature_store import FeatureKeys, UserAds
from adgen.processors.generation import write_untrained_checkpoint
from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
from adgen.runtime import EmbeddedRuntime
from adgen.runtime.processes import free_port
from adgen.streams.events import (
    AD_UPDATE_ADAPTER,
    USER_BEHAVIOR_ADAPTER,
    AdDelete,
    AdRequest,
    AdUpsert,
    ContentComplete,
)
from adgen.streams.producer import EventProducer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADGEN = [str(Path(sys.executable).parent / "adgen")]
USERS, ADS = 40, 100


@dataclass
class Stack:
    root: Path
    world: Path
    settings: Settings
    runtime: EmbeddedRuntime
    env: dict[str, str]
    metrics_port: int
    extra_events: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    worker: subprocess.Popen | None = None
    worker_runs: int = 0

    @property
    def keys(self) -> FeatureKeys:
        return FeatureKeys(namespace=self.settings.redis.namespace, env=self.settings.redis.env)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis.url)

    def start_worker(self, **env: str) -> None:
        self.worker_runs += 1
        log = open(self.root / f"worker-{self.worker_runs}.log", "wb")  # noqa: SIM115 - kept open for the child
        self.worker = subprocess.Popen([*ADGEN, "worker"], env={**self.env, **env}, stdout=log, stderr=log)
        wait_for(lambda: metric(self, "adgen_index_live_ads") > 0, 180, "worker start-up (live index)")

    def kill_worker(self, sig: int = signal.SIGKILL) -> None:
        assert self.worker is not None
        self.worker.send_signal(sig)
        self.worker.wait(timeout=60)
        self.worker = None

    def produce(self, events: list) -> None:
        with EventProducer(self.settings) as producer:
            for event in events:
                producer.send(event)
        for event in events:
            if hasattr(event, "user_id"):
                self.extra_events[event.user_id].append(event)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def metric(stack: Stack, name: str) -> float:
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def world_events(world: Path) -> tuple[dict[str, list], list]:
    by_user: dict[str, list] = defaultdict(list)
    with open(world / "events/user-behavior.jsonl", "rb") as f:
        for line in f:
            event = USER_BEHAVIOR_ADAPTER.validate_json(line)
            by_user[event.user_id].append(event)
    with open(world / "events/ad-updates.jsonl", "rb") as f:
        ad_updates = [AD_UPDATE_ADAPTER.validate_json(line) for line in f]
    return by_user, ad_updates


def expected_windows(stack: Stack) -> dict[str, UserWindow]:
    by_user, _ = world_events(stack.world)
    limits = WindowLimits(days=stack.settings.window.days, max_events=stack.settings.window.max_events)
    out = {}
    for user in set(by_user) | set(stack.extra_events):
        out[user] = apply_events(UserWindow(user_id=user), [*by_user[user], *stack.extra_events[user]], limits)
    return out


def redis_matches_expected(stack: Stack, require_lists: bool = True) -> bool:
    """Every user's Redis window features and (optionally) last list agree with the events."""
    r = stack.redis()
    for user, window in expected_windows(stack).items():
        raw = r.hget(stack.keys.user_window(user), "data")
        if raw is None:
            return False
        features = json.loads(raw)
        if features["window_events"] != len(window.events) or features["arpu"] != window.profile.arpu:
            return False
        if require_lists:
            ads = r.hget(stack.keys.user_ads(user), "data")
            if ads is None or UserAds.model_validate_json(ads).window_fingerprint != window.fingerprint:
                return False
    return True


def final_requests(stack: Stack, tag: str, users: list[str], at: datetime, completes: bool) -> list:
    events: list = []
    for i, user in enumerate(sorted(users)):
        if completes:
            events.append(
                ContentComplete(
                    event_id=f"{tag}-cc-{user}",
                    event_time=at + timedelta(seconds=i),
                    user_id=user,
                    content_id=f"{tag}-video",
                    title="late video",
                    category="Late",
                )
            )
        events.append(AdRequest(event_id=f"{tag}-rq-{user}", event_time=at + timedelta(seconds=i + 1), user_id=user))
    return events


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    world = root / "world"
    subprocess.run(
        [*ADGEN, "world", "generate", "--users", str(USERS), "--ads", str(ADS), "--out", str(world), "--queries", "5"],
        check=True,
        capture_output=True,
    )
    var = root / "var"
    paths = {
        "ADGEN_PATHS__ROOT": str(var),
        "ADGEN_PATHS__INDEX": str(var / "index"),
        "ADGEN_PATHS__MODELS": str(var / "models"),
        "ADGEN_PATHS__EMBEDDING_CACHE": str(var / "cache"),
        "ADGEN_PATHS__STATE": str(var / "state"),
        "ADGEN_PATHS__SNAPSHOTS": str(var / "snapshots"),
    }
    env = {**os.environ, **paths, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [*ADGEN, "index", "build", "--world", str(world), "--epochs", "30"], env=env, check=True, capture_output=True
    )
    snap = read_index_snapshot(SnapshotStore(var / "index", INDEX_KIND).latest())
    with open(world / "catalogue/items.jsonl") as f:
        titles = [json.loads(line)["title"] for line in f]
    ckpt = write_untrained_checkpoint(root / "ckpt", sid_vocabulary(snap.sid_map.codebook_sizes), titles * 3)
    runtime = EmbeddedRuntime(Settings(), root / "runtime")
    settings = runtime.start()
    metrics_port = free_port()
    env.update(
        {
            "ADGEN_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "ADGEN_KAFKA__EMBEDDED": "true",
            "ADGEN_KAFKA__SESSION_TIMEOUT_MS": str(settings.kafka.session_timeout_ms),
            "ADGEN_REDIS__URL": settings.redis.url,
            "ADGEN_REDIS__RETRY_BACKOFF_S": "0.1",
            "ADGEN_MODEL__CHECKPOINT": str(ckpt),
            "ADGEN_MODEL__TOP_K": "10",
            "ADGEN_MODEL__BEAMS": "10",
            "ADGEN_WORKER__METRICS_PORT": str(metrics_port),
            "ADGEN_WORKER__LOG_LEVEL": "WARNING",
            "ADGEN_BUDGET__MIN_REGEN_INTERVAL_S": "0",
        }
    )
    s = Stack(root, world, settings, runtime, env, metrics_port)
    try:
        yield s
    finally:
        if s.worker is not None:
            s.kill_worker(signal.SIGTERM)
        runtime.stop()


def test_worker_killed_mid_stream_and_restarted_ends_with_the_state_the_events_imply(stack: Stack) -> None:
    stack.start_worker()
    producer = subprocess.Popen(
        [*ADGEN, "produce", str(stack.world), "--rate", "500"],
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: metric(stack, "adgen_events_total") > 800, 60, "the worker to be mid-stream")
    stack.kill_worker(signal.SIGKILL)
    assert producer.wait(timeout=120) == 0
    stack.start_worker()
    wait_for(lambda: redis_matches_expected(stack, require_lists=False), 180, "windows to converge after restart")
    # one last request per user, after everything: each user's newest list must reflect the whole window
    users = sorted(expected_windows(stack))
    stack.produce(final_requests(stack, "final", users, datetime(2030, 1, 1, tzinfo=UTC), completes=False))
    wait_for(lambda: redis_matches_expected(stack), 180, "every user's list to reflect the full window")


def test_deleted_ads_never_appear_after_their_delete_event(stack: Stack) -> None:
    _, ad_updates = world_events(stack.world)
    deleted = {e.ad_id: e.event_time for e in ad_updates if isinstance(e, AdDelete)}
    r = stack.redis()
    lists = [UserAds.model_validate_json(r.hget(k, "data")) for k in r.scan_iter(stack.keys.user_ads("*"))]
    assert lists
    for user_ads in lists:
        for ad in user_ads.ads:
            if ad.ad_id in deleted:
                assert user_ads.index_watermark is not None and user_ads.index_watermark < deleted[ad.ad_id]
    # delete the ad most lists hold now; afterwards no new list may contain it
    counts: dict[str, int] = defaultdict(int)
    for user_ads in lists:
        for ad in user_ads.ads:
            counts[ad.ad_id] += 1
    victim = max(counts, key=counts.__getitem__)
    stack.produce([AdDelete(event_id="e2e-del", event_time=datetime(2030, 2, 1, tzinfo=UTC), ad_id=victim)])
    wait_for(lambda: json.loads(r.hget(stack.keys.ad(victim), "data"))["status"] == "deleted", 60, "the delete")
    users = sorted({u.user_id for u in lists if any(a.ad_id == victim for a in u.ads)})
    stack.produce(final_requests(stack, "after-delete", users, datetime(2030, 2, 2, tzinfo=UTC), completes=False))

    def regenerated() -> bool:
        fresh = [UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data")) for u in users]
        return all(f.request_time >= datetime(2030, 2, 2, tzinfo=UTC) for f in fresh)

    wait_for(regenerated, 120, "lists holding the deleted ad to be regenerated")
    for u in users:
        fresh = UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data"))
        assert victim not in {a.ad_id for a in fresh.ads}
    shown = subprocess.run(
        [*ADGEN, "features", "get", users[0]], env=stack.env, check=True, capture_output=True, text=True
    )
    assert victim not in shown.stdout


def test_bad_events_go_to_the_dead_letter_topic_with_their_reason(stack: Stack) -> None:
    with EventProducer(stack.settings) as producer:
        producer.send_raw("user-behavior", b"u1", b"{not json")
        producer.send_raw(
            "user-behavior",
            b"someone-else",
            json.dumps(
                {"event_id": "bad-key", "event_time": "2030-01-01T00:00:00Z", "user_id": "u1", "type": "ad_request"}
            ).encode(),
        )
        producer.send_raw("ad-updates", b"ad1", json.dumps({"type": "ad_delete", "event_id": "x"}).encode())
    consumer = Consumer({"bootstrap.servers": stack.settings.kafka.bootstrap_servers, "group.id": "e2e-dlq"})
    consumer.assign([TopicPartition("dead-letter", 0, 0)])
    letters: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(letters) < 3:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            letters.append(json.loads(msg.value()))
    consumer.close()
    kinds = sorted((d["source_topic"], d["error_kind"]) for d in letters)
    assert len(letters) == 3, letters
    assert [k[0] for k in kinds] == ["ad-updates", "user-behavior", "user-behavior"]
    assert any("key" in d["error"] for d in letters)
    assert metric(stack, "adgen_dead_letters_total") == 3


def test_priority_users_are_served_first_under_a_tight_budget(stack: Stack) -> None:
    stack.kill_worker(signal.SIGTERM)
    stack.start_worker(ADGEN_BUDGET__GENERATIONS_PER_SECOND="3", ADGEN_BUDGET__BURST="1", ADGEN_BUDGET__BATCH_SIZE="1")
    users = sorted(expected_windows(stack))
    at = datetime(2030, 3, 1, tzinfo=UTC)
    stack.produce(final_requests(stack, "prio", users, at, completes=True))
    r = stack.redis()

    def served() -> list[UserAds]:
        got = [UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data")) for u in users]
        return [g for g in got if g.request_time >= at]

    wait_for(lambda: len(served()) == len(users), 120, "every user to be served at 3 generations/s")
    order = sorted(served(), key=lambda u: u.generated_at)
    groups = [u.priority_group for u in order[2:]]  # the first ones were served before the rest had arrived
    inversions = sum(1 for a, b in itertools.pairwise(groups) if b > a)
    assert inversions <= 2, groups
    assert redis_matches_expected(stack)


def test_redis_down_for_10s_retries_with_backoff_and_loses_nothing(stack: Stack) -> None:
    r = stack.redis()
    before = metric(stack, "adgen_redis_retries_total")
    r.shutdown(save=True)
    users = sorted(expected_windows(stack))
    stack.produce(final_requests(stack, "outage", users, datetime(2030, 4, 1, tzinfo=UTC), completes=True))
    time.sleep(10)
    stack.runtime.redis.start()  # same port and data dir: the saved data comes back
    wait_for(lambda: redis_matches_expected(stack), 180, "the backlog to reach Redis after the outage")
    assert metric(stack, "adgen_redis_retries_total") > before


def test_snapshot_timer_announces_a_snapshot_and_a_restart_resumes_from_its_offsets(stack: Stack) -> None:
    stack.kill_worker(signal.SIGTERM)
    stack.start_worker(ADGEN_WORKER__SNAPSHOT_INTERVAL_S="3")
    store = SnapshotStore(Path(stack.env["ADGEN_PATHS__INDEX"]), INDEX_KIND)

    def worker_snapshot() -> bool:
        return store.latest().manifest.meta.get("written_by") == "worker"

    wait_for(worker_snapshot, 60, "a snapshot written by the worker")
    meta = store.latest().manifest.meta
    offsets = meta["ad_updates_offsets"]
    assert set(offsets) == {"0", "1"} and all(v > 0 for v in offsets.values())  # both partitions were read
    assert len(meta["catalogue"]) >= ADS
    consumer = Consumer({"bootstrap.servers": stack.settings.kafka.bootstrap_servers, "group.id": "e2e-snap"})
    consumer.assign([TopicPartition("index-snapshots", 0, 0)])
    notice = None
    deadline = time.monotonic() + 30
    while notice is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            notice = json.loads(msg.value())
    consumer.close()
    assert notice is not None and notice["kind"] == INDEX_KIND and Path(notice["path"]).is_dir()
    # restart from that snapshot, then a brand-new ad must still reach the live index and Redis
    stack.kill_worker(signal.SIGTERM)
    stack.start_worker()
    new_ad = AdUpsert(
        event_id="e2e-new-ad",
        event_time=datetime(2030, 5, 1, tzinfo=UTC),
        ad_id="ad-e2e-new",
        name="Trail running shoe with a carbon plate",
        category_path=["Sports", "Running"],
    )
    stack.produce([new_ad])
    r = stack.redis()
    wait_for(lambda: r.hget(stack.keys.ad("ad-e2e-new"), "data") is not None, 60, "the new ad in Redis")
    record = json.loads(r.hget(stack.keys.ad("ad-e2e-new"), "data"))
    assert record["status"] == "active" and record["sid"]
