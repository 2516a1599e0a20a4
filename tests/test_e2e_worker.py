"""End to end: `adgen worker` as a real subprocess on the embedded Tansu broker and a real redis-server.

One small synthetic world is replayed with `adgen produce`; the worker is SIGKILLed mid-stream and
restarted; Redis is shut down for 10 s; bad events are sent. After each fault, Redis must hold exactly
what the events imply (window sizes, profiles and the prompt-input fingerprint of every user's last list).
The harness (world, index, untrained checkpoint, broker, redis-server, workers, the oracle) is the one
the fault tests use: tests/reliability/stack.py.

The model is a randomly initialised small LM (no trained checkpoint is needed to test the plumbing): its
lists are valid ads, not good ones. Slow (~4-6 min on the shared 2-core box): `pytest -m slow`.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # the shared harness (as bench/soak.py loads it)

from stack import ADGEN, Stack, build_assets, wait_for

from adgen.index.snapshot import INDEX_KIND, SnapshotStore
from adgen.processors.feature_store import UserAds
from adgen.streams.events import AD_UPDATE_ADAPTER, AdDelete, AdRequest, AdUpsert, ContentComplete
from adgen.streams.producer import EventProducer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS, ADS = 40, 100


def events_seen(stack: Stack, name: str) -> float:
    return stack.workers[name].metrics().get("adgen_events_total", 0.0)


def converged(stack: Stack, require_lists: bool = True) -> bool:
    return not stack.mismatches(require_lists=require_lists)


def final_requests(at: datetime, users: list[str], tag: str, completes: bool) -> list:
    """One (optionally completed video and) ad request per user, after everything else."""
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
    assets = build_assets(root / "assets", users=USERS, ads=ADS)
    s = Stack.start(assets, root / "stack", ADGEN_MODEL__TOP_K="10", ADGEN_MODEL__BEAMS="10")
    try:
        yield s
    finally:
        s.stop()


def test_worker_killed_mid_stream_and_restarted_ends_with_the_state_the_events_imply(stack: Stack) -> None:
    stack.start_worker("w1")
    producer = stack.produce_world(500)
    wait_for(lambda: events_seen(stack, "w1") > 800, 60, "the worker to be mid-stream")
    stack.kill("w1", signal.SIGKILL)
    assert producer.wait(timeout=120) == 0
    stack.start_worker("w1")
    wait_for(lambda: converged(stack, require_lists=False), 180, "windows to converge after restart")
    # one last request per user, after everything: each user's newest list must reflect the whole window
    users = sorted(stack.expected_windows())
    stack.produce(final_requests(datetime(2030, 1, 1, tzinfo=UTC), users, "final", completes=False))
    wait_for(lambda: converged(stack), 180, "every user's list to reflect the full window")


def test_deleted_ads_never_appear_after_their_delete_event(stack: Stack) -> None:
    with open(stack.assets.world / "events/ad-updates.jsonl", "rb") as f:
        ad_updates = [AD_UPDATE_ADAPTER.validate_json(line) for line in f]
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
    stack.produce(final_requests(datetime(2030, 2, 2, tzinfo=UTC), users, "after-delete", completes=False))

    def regenerated() -> bool:
        fresh = [UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data")) for u in users]
        return all(f.request_time >= datetime(2030, 2, 2, tzinfo=UTC) for f in fresh)

    wait_for(regenerated, 120, "lists holding the deleted ad to be regenerated")
    for u in users:
        fresh = UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data"))
        assert victim not in {a.ad_id for a in fresh.ads}
    shown = subprocess.run(
        [ADGEN, "features", "get", users[0]], env=stack.env, check=True, capture_output=True, text=True
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
    letters: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(letters) < 3:
        letters = stack.dead_letters()
    kinds = sorted((d["source_topic"], d["error_kind"]) for d in letters)
    assert len(letters) == 3, letters
    assert [k[0] for k in kinds] == ["ad-updates", "user-behavior", "user-behavior"]
    assert any("key" in d["error"] for d in letters)
    assert stack.workers["w1"].metrics().get("adgen_dead_letters_total") == 3


def test_priority_users_are_served_first_under_a_tight_budget(stack: Stack) -> None:
    stack.kill("w1", signal.SIGTERM)
    stack.start_worker(
        "w1", ADGEN_BUDGET__GENERATIONS_PER_SECOND="3", ADGEN_BUDGET__BURST="1", ADGEN_BUDGET__BATCH_SIZE="1"
    )
    users = sorted(stack.expected_windows())
    at = datetime(2030, 3, 1, tzinfo=UTC)
    stack.produce(final_requests(at, users, "prio", completes=True))
    r = stack.redis()

    def served() -> list[UserAds]:
        got = [UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data")) for u in users]
        return [g for g in got if g.request_time >= at]

    wait_for(lambda: len(served()) == len(users), 120, "every user to be served at 3 generations/s")
    order = sorted(served(), key=lambda u: u.generated_at)
    groups = [u.priority_group for u in order[2:]]  # the first ones were served before the rest had arrived
    inversions = sum(1 for a, b in itertools.pairwise(groups) if b > a)
    assert inversions <= 2, groups
    assert converged(stack)


def test_redis_down_for_10s_retries_with_backoff_and_loses_nothing(stack: Stack) -> None:
    r = stack.redis()
    before = stack.workers["w1"].metrics().get("adgen_redis_retries_total", 0)
    r.shutdown(save=True)
    users = sorted(stack.expected_windows())
    stack.produce(final_requests(datetime(2030, 4, 1, tzinfo=UTC), users, "outage", completes=True))
    time.sleep(10)
    stack.runtime.redis.start()  # same port and data dir: the saved data comes back
    wait_for(lambda: converged(stack), 180, "the backlog to reach Redis after the outage")
    assert stack.workers["w1"].metrics().get("adgen_redis_retries_total", 0) > before


def test_snapshot_timer_announces_a_snapshot_and_a_restart_resumes_from_its_offsets(stack: Stack) -> None:
    stack.kill("w1", signal.SIGTERM)
    stack.start_worker("w1", ADGEN_WORKER__SNAPSHOT_INTERVAL_S="3")
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
    stack.kill("w1", signal.SIGTERM)
    stack.start_worker("w1")
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
