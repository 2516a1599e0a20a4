"""The soak's verdicts fail when the run they judge is bad (bench/soak.py `judge`, no servers needed).

The live counterpart is a short soak with an injected fault (`--inject leak:...` / `slow-garbage:...`),
committed under docs/data/soak/ and shown failing in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


@pytest.fixture(scope="module")
def soak() -> Any:
    spec = importlib.util.spec_from_file_location("soak_under_test", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _samples(
    soak: Any, args: Any, rss: Any = lambda t: 900.0, good: Any = lambda phase: 40.0, lag_s: float = 0.5
) -> list[dict[str, Any]]:
    rows = []
    t = args.sample_s
    while t <= args.minutes * 60:
        phase = soak.phase_at(t - 0.01, args)
        rows.append(
            {
                "t_s": t,
                "phase": phase,
                "offered_good_per_s": 40.0,
                "offered_garbage_per_s": 6000.0 if phase == "garbage" else 0.0,
                "consumed_good_per_s": good(phase),
                "dead_letters_per_s": 6000.0 if phase == "garbage" else 0.0,
                "committed_lag": 10.0,
                "lag_s_of_input": lag_s,
                "request_to_features_p99_s": 0.25,
                "redis_write_p99_s": 0.025,
                "generation_queue": 0.0,
                "worker_rss_mb": rss(t),
                "search_http": {"probes": 20, "ok": 20, "errors": 0, "p50_s": 0.02, "p99_s": 0.1},
                "search_topic_served": 0.0,
            }
        )
        t += args.sample_s
    return rows


def _extras(capacity: float = 10_000.0, served: int = 100) -> dict[str, Any]:
    return {
        "capacity": {"events_per_s": capacity},
        "search_queries_produced": 100,
        "search_queries_served": served,
        "search_http_total": {"probes": 1000, "ok": 1000, "errors": 0, "p50_s": 0.02, "p99_s": 0.1},
    }


def test_a_healthy_run_passes(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    result = soak.judge(args, _samples(soak, args), _extras())
    assert result["verdicts"]["pass"], result["verdicts"]
    assert math.isclose(result["figures"]["garbage_half_over_clean_half"], 1.0)


def test_rss_growth_against_the_warm_up_point_fails_memory(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    leaking = _samples(soak, args, rss=lambda t: 900.0 + 0.5 * t)  # +30 MB/min
    verdicts = soak.judge(args, leaking, _extras())["verdicts"]
    assert not verdicts["memory_flat"] and not verdicts["pass"]


def test_rss_filled_during_the_warm_up_does_not_count(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    filling = _samples(soak, args, rss=lambda t: 700.0 + min(t, args.warmup_s))  # grows only in the warm-up
    assert soak.judge(args, filling, _extras())["verdicts"]["memory_flat"]


def test_good_throughput_lost_to_garbage_fails(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    slowed = _samples(soak, args, good=lambda phase: 30.0 if phase == "garbage" else 40.0)
    verdicts = soak.judge(args, slowed, _extras())["verdicts"]
    assert not verdicts["garbage_costs_little_throughput"] and not verdicts["pass"]


def test_two_starved_halves_fail_although_their_ratio_passes(soak: Any) -> None:
    """The injected slow-garbage run: the warm-up's garbage left a backlog, so the clean half consumed 8.7 of
    the 40 good events/s offered and the garbage half even more of its backlog (ratio 1.30)."""
    args = soak.parse_args(["--minutes", "12"])
    starved = _samples(soak, args, good=lambda phase: 11.3 if phase == "garbage" else 8.7)
    result = soak.judge(args, starved, _extras())
    assert result["figures"]["garbage_half_over_clean_half"] > args.min_good_ratio  # the ratio alone passes
    assert result["figures"]["good_consumed_over_offered_clean_half"] < args.min_good_ratio
    assert not result["verdicts"]["garbage_costs_little_throughput"] and not result["verdicts"]["pass"]


def test_catching_up_a_backlog_counts_as_keeping_up(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    catching_up = _samples(soak, args, good=lambda phase: 44.0)  # above the offered 40/s: a backlog drains
    assert soak.judge(args, catching_up, _extras())["verdicts"]["garbage_costs_little_throughput"]


def test_garbage_below_half_the_capacity_is_not_a_valid_run(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    verdicts = soak.judge(args, _samples(soak, args), _extras(capacity=20_000.0))["verdicts"]
    assert not verdicts["garbage_at_least_half_capacity"] and not verdicts["pass"]


def test_unanswered_search_queries_or_unbounded_lag_fail(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    assert not soak.judge(args, _samples(soak, args), _extras(served=90))["verdicts"]["search_served"]
    rows = _samples(soak, args)
    rows[30]["search_http"] = {"probes": 20, "ok": 0, "errors": 20, "p50_s": None, "p99_s": None}
    assert not soak.judge(args, rows, _extras())["verdicts"]["search_served"]
    assert not soak.judge(args, _samples(soak, args, lag_s=45.0), _extras())["verdicts"]["lag_bounded"]


def test_a_worker_that_missed_a_metrics_scrape_fails_the_run(soak: Any) -> None:
    args = soak.parse_args(["--minutes", "12"])
    stalled = {**_extras(), "unresponsive_intervals": 1}
    verdicts = soak.judge(args, _samples(soak, args), stalled)["verdicts"]
    assert not verdicts["worker_always_answered"] and not verdicts["pass"]
    assert soak.judge(args, _samples(soak, args), {**_extras(), "unresponsive_intervals": 0})["verdicts"]["pass"]
