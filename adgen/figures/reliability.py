"""docs/reliability.md: each guarantee, the tests behind it, default or slow run, and their last recorded
result (docs/data/reliability/results.json, written by pytest with ADGEN_RECORD_RESULTS); the soak's
verdicts (docs/data/soak/*.json, written by bench/soak.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adgen.figures.regions import region
from adgen.figures.sources import PendingFigure, Sources, derived

RESULTS = "docs/data/reliability/results.json"
WORKER = "tests/reliability/test_worker_faults.py::"
FILES = "tests/reliability/test_snapshot_and_model_faults.py::"

Facts = Callable[[list[dict[str, Any]]], str]


def _kills(entries: list[dict[str, Any]]) -> str:
    f = entries[0]["facts"]
    if "kills" not in f:
        return ""
    return (
        f"{f['kills']} kills ({f['kills_aimed_mid_batch']} aimed mid-batch, {f['kills_during_startup']} more during"
        f" start-up); {f['kills_landed_mid_batch']} landed mid-batch, proven from the broker; re-deliveries per"
        f" kill {f['redeliveries_per_kill']} (bound {f['redelivery_bound']:,}); converged {f['converge_s']} s after"
        " the last restart"
    )


def _rebalance(entries: list[dict[str, Any]]) -> str:
    f = entries[0]["facts"]
    if "redeliveries" not in f:
        return ""
    return (
        f"{f['behaviour_events_produced']:,} behaviour events produced, {f['handled_by_survivor']:,.0f} handled by"
        f" the survivor + {f['handled_by_victim_before_kill']:,.0f} by the victim: {f['redeliveries']:,.0f}"
        f" re-deliveries (bound {f['redelivery_bound']:,})"
    )


def _redis(entries: list[dict[str, Any]]) -> str:
    f = entries[0]["facts"]
    return f"{f['retries']:,.0f} write retries during the outage" if "retries" in f else ""


def _broker_runs(entries: list[dict[str, Any]]) -> str:
    facts = [e["facts"] for e in entries if "broker_lost_events" in e["facts"]]
    if not facts:
        return ""
    lost = sum(f["broker_lost_events"] for f in facts)
    exact = sum(1 for f in facts if f.get("state_exact"))
    converge = [f["converge_s"] for f in facts if "converge_s" in f]
    text = f"events lost by the broker over {len(facts)} runs: {lost}; worker exact in {exact} of {len(facts)}"
    return text + (f"; converged in at most {max(converge)} s" if converge else "")


@dataclass(frozen=True)
class Backing:
    """Tests named by a node-id prefix (a test name prefix covers its parametrisations; `file::` the whole
    file) and how they run."""

    test: str
    run: str  # "default" or "slow"
    facts: Facts | None = None


@dataclass(frozen=True)
class Guarantee:
    claim: str
    how: str
    tests: list[Backing] = field(default_factory=list)


GUARANTEES = [
    Guarantee(
        "**At-least-once processing.** A worker killed at any moment (SIGKILL) loses no event: a behaviour batch's"
        " offsets are committed only after its changelog rows and dead letters are acknowledged, its rows are in"
        " RocksDB and its features in Redis; uncommitted events are delivered again after the restart.",
        "`processors/window_consumer.py` (manual commits after the batch)",
        [
            Backing(
                WORKER + "test_worker_sigkilled_twice_one_kill_mid_batch_ends_with_every_event_applied_once",
                "default",
                _kills,
            ),
            Backing(
                WORKER + "test_worker_sigkilled_20_times_at_random_points_ends_with_every_event_applied_once",
                "slow",
                _kills,
            ),
        ],
    ),
    Guarantee(
        "**Idempotent writes: replay converges.** Re-delivered events change nothing: the window is a set keyed by"
        " `event_id`, and every Redis write is a compare-and-set on the event time.",
        "`window_state`, `redis_client.GUARDED_SET_MANY_LUA`",
        [
            Backing(
                "tests/test_feature_store.py::test_older_or_replayed_result_never_overwrites_a_newer_one", "default"
            ),
            Backing("tests/test_feature_store.py::test_concurrent_writers_converge_to_the_newest_version", "default"),
        ],
    ),
    Guarantee(
        "**Rebalance without loss.** When one of two workers dies, the survivor restores the dead one's partitions"
        " from the compacted changelog before consuming them and replays what it had not committed.",
        "consumer-group rebalance, `processors/window_changelog.py`",
        [
            Backing(
                "tests/test_window_consumer.py::test_an_empty_local_store_is_restored_from_the_changelog", "default"
            ),
            Backing("tests/test_window_consumer.py::test_two_consumers_in_one_group_share_the_partitions", "default"),
            Backing(WORKER + "test_two_workers_in_one_group_one_killed", "slow", _rebalance),
        ],
    ),
    Guarantee(
        "**Redis outage: stall, never drop.** Writes retry with capped backoff while Redis is down; with AOF"
        " (`appendfsync always`) a Redis SIGKILL + restart loses nothing. A wrong password fails at once.",
        "`RedisClient.retrying` (processors/redis_client.py)",
        [
            Backing("tests/test_feature_store.py::test_writes_retry_with_backoff_while_redis_is_down", "default"),
            Backing(WORKER + "test_redis_sigkilled_and_restarted_mid_run", "slow", _redis),
            Backing("tests/test_security.py::test_feature_store_authenticates_and_a_wrong_password", "default"),
        ],
    ),
    Guarantee(
        "**Broker restart on durable (s3://) storage: zero loss.** Acknowledged records and committed offsets"
        " survive a broker SIGKILL; the worker rides the restart out and ends exact against every event produced.",
        "`adgen/runtime/s3.py`, `processors/window_consumer.py`, `tansu_quirks` 7",
        [
            Backing(WORKER + "test_broker_sigkilled_on_s3_storage_keeps_every_acknowledged_record", "slow"),
            Backing(WORKER + "test_broker_sigkilled_and_restarted_on_s3_storage", "slow", _broker_runs),
        ],
    ),
    Guarantee(
        "**Snapshots: atomic, and the old one stays.** Disk full or an unwritable directory is a clear"
        " `SnapshotError`; no temp dir is left; readers and a running worker keep the previous version.",
        "`index/snapshot.SnapshotStore.write`",
        [
            Backing(FILES + "test_disk_full_during_a_snapshot", "default"),
            Backing(FILES + "test_unwritable_snapshot_directory", "default"),
            Backing(WORKER + "test_snapshot_disk_full_in_a_running_worker", "slow"),
        ],
    ),
    Guarantee(
        "**Corrupt files are refused, never half-loaded.** Damaged snapshots, pickled arrays, RQ-VAE weights that"
        " fail their sha256 and truncated or bit-flipped LM checkpoints are refused.",
        "manifest sha256, `allow_pickle=False`, `load_rqvae` and `load_lm` checksums",
        [
            Backing(FILES + "test_a_corrupt_snapshot_is_refused", "default"),
            Backing(FILES + "test_a_snapshot_never_unpickles_an_object_array", "default"),
            Backing(FILES + "test_a_corrupt_rqvae_file_is_refused", "default"),
            Backing(FILES + "test_a_truncated_lm_checkpoint_is_refused", "default"),
            Backing(FILES + "test_an_lm_checkpoint_with_a_flipped_bit", "default"),
        ],
    ),
    Guarantee(
        "**Bad input ends in the dead-letter topic with a reason**, and leaves nothing behind in memory.",
        "`streams/codec.py`, `streams/dlq.py`",
        [
            Backing("tests/test_fuzz_decoders.py::", "default"),
            Backing("tests/test_codec.py::test_rejected_events_leave_nothing_behind", "default"),
        ],
    ),
    Guarantee(
        "**The search view answers 200 with catalogue ads or a 4xx with a reason**, never a 5xx.",
        "`processors/query_retrieval.handle_search_params`",
        [Backing("tests/test_fuzz_search_view.py::", "default")],
    ),
]


def _matching(tests: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Recorded entries whose node id starts with `prefix` (a test name prefix covers its parametrisations)."""
    return [entry for nodeid, entry in sorted(tests.items()) if nodeid.startswith(prefix)]


def _short(test: str) -> str:
    path, _, name = test.partition("::")
    return f"`{path.removeprefix('tests/')}::{name}…`" if name else f"`{path.removeprefix('tests/')}` (all)"


def result_cell(entries: list[dict[str, Any]], facts: Facts | None) -> str:
    if not entries:
        return "not recorded yet"
    passed = sum(e["outcome"] == "passed" for e in entries)
    last = max(e["finished_at"] for e in entries)[:10]
    seconds = sum(e["duration_s"] for e in entries)
    head = f"{passed} of {len(entries)} passed" if passed < len(entries) else f"passed ({len(entries)})"
    if passed < len(entries):
        head = "**" + head + "**"
        errors = [e.get("error") or e.get("reason", "") for e in entries if e["outcome"] != "passed"]
        head += f": {errors[0]}" if errors and errors[0] else ""
    loads = [e["facts"]["load_avg_start"][0] for e in entries if "load_avg_start" in e.get("facts", {})]
    detail = facts(entries) if facts else ""
    parts = [head, f"{last}, {seconds:,.0f} s"]
    if loads:
        parts.append(f"load {max(loads):.1f} at start")
    return "; ".join([*parts, detail] if detail else parts).replace("|", "\\|")


@region("reliability-guarantees")
def reliability_guarantees(sources: Sources) -> str:
    tests = sources.get(RESULTS, "tests")
    lines = ["| guarantee | how | test | run | last result |", "| --- | --- | --- | --- | --- |"]
    for guarantee in GUARANTEES:
        for i, backing in enumerate(guarantee.tests):
            claim, how = (guarantee.claim, guarantee.how) if i == 0 else ("", "")
            cell = result_cell(_matching(tests, backing.test), backing.facts)
            lines.append(f"| {claim} | {how} | {_short(backing.test)} | {backing.run} | {cell} |")
    return "\n".join(lines)


SOAKS = {
    "the 12-minute run": "docs/data/soak/soak.json",
    "injected leak": "docs/data/soak/soak-injected-leak.json",
    "injected slow garbage path": "docs/data/soak/soak-injected-slow-garbage.json",
}


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


@region("soak-verdicts")
def soak_verdicts(sources: Sources) -> str:
    """One column per committed soak run: its figures and verdicts against the targets."""
    main, *injected = SOAKS.items()
    runs = {main[0]: sources.data(main[1])}  # the 12-minute run is required (or owed: pending.py)
    owed: list[str] = []
    for label, path in injected:
        try:
            runs[label] = sources.data(path)
        except PendingFigure as exc:
            owed.append(f"- {label}: {exc.note}.")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("run", lambda r: f"{r['config']['minutes']:g} min, {r['started_at'][:16].replace('T', ' ')} UTC"),
        ("injected fault", lambda r: r["config"].get("inject") or "none"),
        ("load average at start / end (1 min)", lambda r: f"{r['load_avg_start'][0]:.1f} / {r['load_avg_end'][0]:.1f}"),
        ("capacity measured in the run (behaviour events/s)", lambda r: f"{r['capacity']['events_per_s']:,.0f}"),
        (
            "garbage offered in the garbage half (events/s, share of capacity)",
            lambda r: (
                f"{r['figures']['garbage_over_capacity'] * r['capacity']['events_per_s']:,.0f}"
                f" ({r['figures']['garbage_over_capacity']:.2f})"
            ),
        ),
        (
            "bad events dead-lettered/s in the garbage half",
            lambda r: (
                f"{r['figures']['dead_letters_per_s_garbage_half']:,.0f}"
                if "dead_letters_per_s_garbage_half" in r["figures"]
                else "not recorded"
            ),
        ),
        (
            "good events consumed/s, clean half → garbage half",
            lambda r: (
                f"{r['figures']['good_consumed_per_s_clean_half']:.1f} →"
                f" {r['figures']['good_consumed_per_s_garbage_half']:.1f}"
                f" (offered {r['figures']['good_offered_per_s']:.1f})"
            ),
        ),
        ("good throughput ratio (target ≥ 0.9)", lambda r: f"**{r['figures']['garbage_half_over_clean_half']:.3f}**"),
        (
            "good consumed / offered, clean half → garbage half (target ≥ 0.9 each)",
            lambda r: (
                f"{r['figures']['good_consumed_over_offered_clean_half']:.3f} →"
                f" {r['figures']['good_consumed_over_offered_garbage_half']:.3f}"
                if "good_consumed_over_offered_clean_half" in r["figures"]
                else "not recorded"
            ),
        ),
        (
            "worker RSS: first sample → warm-up point → end (MB)",
            lambda r: (
                f"{r['figures']['rss_first_sample_mb']:.0f} → {r['figures']['rss_warmup_point_mb']:.0f} →"
                f" {r['figures']['rss_end_mb']:.0f}"
            ),
        ),
        ("RSS end / warm-up point (target ≤ 1.10)", lambda r: f"**{r['figures']['rss_end_over_warmup_point']:.3f}**"),
        ("max lag (seconds of input; target ≤ 30)", lambda r: f"{r['figures']['max_lag_s_of_input']:.2f}"),
        (
            "request → features p99, worst interval (s, bucket bound)",
            lambda r: _fmt(r["figures"]["request_to_features_p99_s_worst_interval"], "g"),
        ),
        (
            "search over HTTP: probes, errors, p50 / p99 (s)",
            lambda r: (
                f"{r['search_http_total']['probes']:,}, {r['search_http_total']['errors']},"
                f" {_fmt(r['figures']['search_http_p50_s'], '.3f')} / {_fmt(r['figures']['search_http_p99_s'], '.3f')}"
            ),
        ),
        (
            "search on the topic: answered / produced",
            lambda r: f"{r['search_queries_served']:,.0f} / {r['search_queries_produced']:,}",
        ),
    ]
    verdicts = [
        ("garbage ≥ 50% of capacity", "garbage_at_least_half_capacity"),
        ("good throughput kept", "garbage_costs_little_throughput"),
        ("memory flat", "memory_flat"),
        ("lag bounded", "lag_bounded"),
        ("search served", "search_served"),
        ("worker answered every scrape", "worker_always_answered"),
        ("**verdict**", "pass"),
    ]
    lines = ["| | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in runs.values()) + " |")
    for label, key in verdicts:
        cells = ["pass" if r["verdicts"][key] else "**FAIL**" for r in runs.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if owed:
        lines += ["", "The runs that must fail:", "", *owed]
    lines += ["", "![soak: the 12-minute run](data/soak/soak.png)"]
    return "\n".join(lines)


def _summary(tests: dict[str, Any], prefix: str) -> dict[str, Any]:
    entries = _matching(tests, prefix)
    facts = [e["facts"] for e in entries]
    return {
        "runs": len(entries),
        "passed": sum(e["outcome"] == "passed" for e in entries),
        "all_passed": bool(entries) and all(e["outcome"] == "passed" for e in entries),
        "last": max((e["finished_at"][:10] for e in entries), default="never"),
        "facts": facts[0] if len(facts) == 1 else {},
        "broker_lost_events": sum(f.get("broker_lost_events", 0) for f in facts),
    }


@derived("reliability")
def reliability_summary(sources: Sources) -> dict[str, Any]:
    """Counts over the recorded fault tests, for figures outside the table (README)."""
    tests = sources.get(RESULTS, "tests")
    return {
        "kill_default": _summary(tests, GUARANTEES[0].tests[0].test),
        "kill_slow": _summary(tests, GUARANTEES[0].tests[1].test),
        "rebalance": _summary(tests, WORKER + "test_two_workers_in_one_group_one_killed"),
        "redis": _summary(tests, WORKER + "test_redis_sigkilled_and_restarted_mid_run"),
        "broker_records": _summary(
            tests, WORKER + "test_broker_sigkilled_on_s3_storage_keeps_every_acknowledged_record"
        ),
        "broker_restart": _summary(tests, WORKER + "test_broker_sigkilled_and_restarted_on_s3_storage"),
        "snapshot_disk_full": _summary(tests, WORKER + "test_snapshot_disk_full_in_a_running_worker"),
    }
