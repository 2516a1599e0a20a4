"""Scale past one worker and one Redis: `adgen worker` subprocesses on a real 3-master Redis Cluster.

1. One worker, its store a cluster (`ADGEN_REDIS__URL=redis+cluster://...`): a replayed world ends with
   exactly the windows and lists the events imply, and the keys sit on all three masters.
2. Two workers share one generation budget and one priority order through Redis (`budget.shared`): users
   whose ARPU band follows their partition request ads all at once; the two together generate at the
   configured rate (+-10%; the floor drops to what the decoders could do when a loaded machine makes them
   slower than the budget) and serve higher ARPU groups first, across workers. Each worker alone would
   generate at the full rate (twice the budget), and each on its own order would interleave the bands.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from redis.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # the shared worker harness

from stack import Stack, build_assets, wait_for

from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot
from adgen.processors.feature_store import UserAds
from adgen.processors.redis_client import cluster_nodes
from adgen.processors.scheduler import ArpuGroups
from adgen.runtime.redis_cluster import LocalRedisCluster
from adgen.streams.events import AdClick, AdRequest, ProfileUpdate
from adgen.streams.topics import USER_BEHAVIOR

pytestmark = pytest.mark.integration

RATE, BURST = 5.0, 2
BANDS = (0.5, 5.0, 50.0, 500.0)  # ARPU of the users whose events go to partition 0, 1, 2, 3
PER_BAND = 30


class ClusterStack(Stack):
    """The fault-test harness with its store on a Redis Cluster (its oracle reads through a cluster client)."""

    def redis(self) -> RedisCluster:  # type: ignore[override]
        host, port = cluster_nodes(self.env["ADGEN_REDIS__URL"])[0]
        return RedisCluster(host=host, port=port, socket_timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, cluster: LocalRedisCluster) -> Iterator[ClusterStack]:
    root = tmp_path_factory.mktemp("scale")
    assets = build_assets(root / "assets", users=40, ads=60)
    s = ClusterStack.start(assets, root / "stack", ADGEN_REDIS__URL=cluster.url, ADGEN_BUDGET__SHARED="true")
    try:
        yield s
    finally:
        s.stop()


def test_a_worker_on_a_redis_cluster_ends_with_the_state_the_events_imply(
    stack: ClusterStack, cluster: LocalRedisCluster
) -> None:
    stack.start_worker("w1")
    assert stack.produce_world(0).wait(timeout=300) == 0
    stack.converge(300)  # windows and every user's newest list, read back from the cluster
    per_node = cluster.keys_per_node()
    assert len(per_node) == 3 and min(per_node.values()) > 10, per_node


def banded_users() -> list[tuple[int, str, float]]:
    """(partition, user, ARPU): the users of partition p all have ARPUs near BANDS[p]."""
    return [
        (band, f"s{band}-{i:03d}", arpu * (1 + i / 1000)) for band, arpu in enumerate(BANDS) for i in range(PER_BAND)
    ]


def send(stack: Stack, records: list[tuple[int, Any]]) -> None:
    """Produce each event to the partition named (the worker never cares which partition a user is in,
    only that all of a user's events share one)."""
    producer = Producer(stack.settings.kafka.producer_config(acks="all"))
    topic = stack.settings.kafka.topic_prefix + USER_BEHAVIOR.name
    for partition, event in records:
        producer.produce(topic, key=event.user_id.encode(), value=event.model_dump_json().encode(), partition=partition)
    assert producer.flush(30) == 0


def live_ads(stack: Stack) -> list[str]:
    index = Path(stack.env["ADGEN_PATHS__INDEX"])
    return sorted(read_index_snapshot(SnapshotStore(index, INDEX_KIND).latest()).sid_map.items())


def both_consuming(stack: Stack, at: datetime) -> bool:
    """Ping every partition; true once each worker has consumed user events (the group settled on both)."""
    stamp = time.time_ns()
    send(stack, [(p, ProfileUpdate(event_id=f"ping-{p}-{stamp}", event_time=at, user_id=f"ping{p}")) for p in range(4)])
    time.sleep(2)
    return all(w.metrics().get('adgen_events_total{topic="user-behavior"}', 0) > 0 for w in stack.workers.values())


def test_two_workers_share_one_budget_and_serve_higher_arpu_groups_first(stack: ClusterStack) -> None:
    stack.kill("w1")
    budget = {
        "ADGEN_BUDGET__GENERATIONS_PER_SECOND": str(RATE),
        "ADGEN_BUDGET__BURST": str(BURST),
        "ADGEN_BUDGET__BATCH_SIZE": "2",
        "ADGEN_BUDGET__BATCH_DEADLINE_MS": "20",
    }
    stack.start_worker("w1", **budget)
    stack.start_worker("w2", **budget)
    at = datetime(2032, 1, 1, tzinfo=UTC)
    wait_for(lambda: both_consuming(stack, at), 180, "both workers to own user-behavior partitions")
    users = banded_users()
    ads = live_ads(stack)
    events: list[tuple[int, Any]] = []
    for n, (p, user, arpu) in enumerate(users):
        events.append((p, ProfileUpdate(event_id=f"{user}-p", event_time=at, user_id=user, arpu=arpu)))
        for j in range(2):
            click_at = at + timedelta(seconds=j + 1)
            events.append(
                (p, AdClick(event_id=f"{user}-c{j}", event_time=click_at, user_id=user, ad_id=ads[(n + j) % len(ads)]))
            )
    send(stack, events)
    r = stack.redis()
    wait_for(lambda: all(r.hget(stack.keys.user_window(u), "data") for _, u, _ in users), 120, "every window")
    requested_at = time.time()
    send(
        stack, [(p, AdRequest(event_id=f"{u}-r", event_time=at + timedelta(minutes=5), user_id=u)) for p, u, _ in users]
    )
    wait_for(lambda: all(r.hget(stack.keys.user_ads(u), "data") for _, u, _ in users), 180, "a list for every user")
    lists = sorted(
        (UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data")) for _, u, _ in users),
        key=lambda a: a.generated_at,
    )
    scraped = [w.metrics() for w in stack.workers.values()]
    by_worker = [m.get("adgen_generations_total", 0) for m in scraped]
    assert all(n > 0 for n in by_worker), by_worker  # both workers generated under the one budget

    # rate: past the burst, the lists came at the budget's rate, both workers together. The ceiling is what
    # the bucket allowed over the wall time (two private budgets would give twice as many); the floor is
    # the budget, unless the decoders themselves could not go that fast on this (loaded) machine: then the
    # floor is what they could do in the decode time they used, so starving workers that had time still fails
    times = [a.generated_at.timestamp() for a in lists]
    rate = (len(times) - BURST - 1) / (times[-1] - times[BURST])
    assert len(lists) <= RATE * (times[-1] - requested_at) + BURST + 1  # the bucket's ceiling over the wall time
    assert rate <= 1.1 * RATE, f"combined rate {rate:.2f}/s above the budget {RATE}/s (per worker {by_worker})"
    capacity = sum(
        n / m["adgen_decode_batch_seconds_sum"]
        for n, m in zip(by_worker, scraped, strict=True)
        if m["adgen_decode_batch_seconds_sum"]
    )
    floor = 0.9 * min(RATE, capacity)
    assert rate >= floor, f"combined rate {rate:.2f}/s under {floor:.2f}/s (decoders could do {capacity:.1f}/s)"

    # order: one ARPU numbering on both workers, and higher groups first across both of them
    groups = ArpuGroups.log_spaced(25)
    band_of = {u: p for p, u, _ in users}
    arpu_of = {u: a for _, u, a in users}
    assert all(a.priority_group == groups.group_of(arpu_of[a.user_id]) for a in lists)
    # the burst's lists (BURST tokens + the first refill) are served as their requests arrive, before the rest
    # are queued, so no order can hold for them (a full-suite run failed on exactly those three: 0.033 > 0.03)
    bands = [band_of[a.user_id] for a in lists[BURST + 1 :]]
    pairs = [(x, y) for x, y in itertools.combinations(bands, 2) if x != y]
    inverted = sum(1 for x, y in pairs if x < y) / len(pairs)  # a lower band served before a higher one
    assert inverted <= 0.03, (inverted, bands)
