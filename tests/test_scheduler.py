"""Scheduling policy: ARPU groups, priority order, shared token budget, bounded queue, debounce."""

from __future__ import annotations

import random

import pytest

from adgen.processors.scheduler import (
    ArpuGroups,
    ArpuReservoir,
    Decision,
    GenerationQueue,
    GenerationScheduler,
    LastGeneration,
    PendingRequest,
    TokenBucket,
    debounce,
)


def test_quantile_groups_split_users_evenly_and_rank_by_value() -> None:
    rng = random.Random(0)
    values = [rng.lognormvariate(1, 1.5) for _ in range(5000)]
    groups = ArpuGroups.from_values(values, 25)
    assert groups.n_groups == 25
    counts = [0] * 25
    for v in values:
        counts[groups.group_of(v)] += 1
    assert min(counts) > 150 and max(counts) < 250
    assert groups.group_of(0.0) == 0 and groups.group_of(1e9) == 24


def test_reservoir_refits_edges_from_observed_arpu() -> None:
    res = ArpuReservoir(n_groups=4, refit_every=100, seed=1)
    for v in range(1000):
        res.observe(float(v))
    assert res.groups.group_of(10) == 0 and res.groups.group_of(990) == 3


def test_log_spaced_default_edges_are_ascending() -> None:
    groups = ArpuGroups.log_spaced(25)
    assert len(groups.edges) == 24 and groups.edges[0] == pytest.approx(0.1) and groups.edges[-1] == pytest.approx(1000)


def test_token_bucket_refills_at_rate_and_caps_at_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert bucket.available(0.0) == 5
    bucket.spend(5, 0.0)
    assert bucket.available(0.0) == 0
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    assert bucket.available(0.35) == 3
    assert bucket.available(100.0) == 5
    with pytest.raises(ValueError, match="cannot spend 6"):
        bucket.spend(6, 100.0)


def test_queue_pops_highest_group_first_then_oldest_and_keeps_one_entry_per_user() -> None:
    q = GenerationQueue(n_groups=3, capacity=10)
    q.push(PendingRequest("low", 0, 1.0))
    q.push(PendingRequest("mid", 1, 2.0))
    q.push(PendingRequest("high1", 2, 3.0))
    q.push(PendingRequest("high2", 2, 4.0))
    q.push(PendingRequest("mid", 1, 5.0))  # replaces the user's earlier request
    q.push(PendingRequest("mid", 1, 0.5))  # a late older request does not replace the newer one
    assert len(q) == 4
    popped = q.pop(10)
    assert [r.user_id for r in popped] == ["high1", "high2", "mid", "low"]
    assert popped[2].request_ts == 5.0


def test_full_queue_evicts_lowest_group_or_rejects_low_value_request() -> None:
    q = GenerationQueue(n_groups=3, capacity=2)
    assert q.push(PendingRequest("a", 1, 1.0)) is None
    assert q.push(PendingRequest("b", 0, 2.0)) is None
    dropped = q.push(PendingRequest("c", 2, 3.0))
    assert dropped is not None and dropped.user_id == "b"
    rejected = q.push(PendingRequest("d", 1, 4.0))
    assert rejected is not None and rejected.user_id == "d"
    assert sorted(r.user_id for r in q.pop(5)) == ["a", "c"]


def test_under_tight_budget_high_value_users_are_served_first() -> None:
    sched = GenerationScheduler(GenerationQueue(n_groups=25, capacity=1000), TokenBucket(rate=2, burst=2, now=0.0))
    rng = random.Random(3)
    for i in range(100):
        sched.offer(PendingRequest(f"u{i}", rng.randrange(25), float(i)))
    served: list[PendingRequest] = []
    now = 0.0
    while len(served) < 20:
        batch = sched.take(8, now)
        sched.charge(batch, now)
        served.extend(batch)
        now += 0.5
    groups = [r.group for r in served]
    assert groups == sorted(groups, reverse=True)
    assert len(served) == 20 and now == pytest.approx(9.5)  # burst 2 at t=0, then 1 per 0.5 s: the budget rules
    assert sum(sched.served_by_group) == 20


def test_debounce_skips_unchanged_too_soon_and_stale_requests() -> None:
    last = LastGeneration(request_ts=100.0, fingerprint="f1")
    assert debounce(50.0, "f1", None, 300) is Decision.FIRST
    assert debounce(1000.0, "f1", last, 300) is Decision.UNCHANGED
    assert debounce(200.0, "f2", last, 300) is Decision.TOO_SOON
    assert debounce(100.0, "f2", last, 300) is Decision.STALE
    assert debounce(400.0, "f2", last, 300) is Decision.CHANGED
    assert debounce(200.0, "f1", last, 300, list_has_dead_ads=True) is Decision.INDEX_CHANGED
    assert Decision.CHANGED.generate and Decision.INDEX_CHANGED.generate and not Decision.TOO_SOON.generate
