"""README's measured-results table: cells that draw on several results, any of which may be an owed run.

Each cell is one `<!-- value: @readme NAME -->` marker (a table row cannot hold a block). A cell whose
source is owed (pending.py) says so with the command; one whose part is owed says so for that part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adgen.figures.decoder import TARGET_PROMPTS_PER_S, TARGET_SPEEDUP_OVER_HF
from adgen.figures.reliability import reliability_summary
from adgen.figures.sources import FigureError, PendingFigure, Sources, derived, format_value
from adgen.figures.worker import TARGET_EVENTS_PER_S

SOAK = "docs/data/soak/soak.json"
QUALITY = "docs/data/index-quality/report.json"
BUILD = "docs/data/index-quality/build_report.json"


def _owed(fn: Callable[[Sources], str], sources: Sources) -> str:
    try:
        return fn(sources)
    except PendingFigure as exc:
        return exc.note


def _met(value: float, spec: str) -> str:
    return format_value(value, spec)


def commands_demo(s: Sources) -> str:
    c = s.data("commands")
    if "demo" not in c:
        raise FigureError("bench/results/commands.json was run with --skip-demo: run it without")
    return (
        f"{c['demo']['wall_s'] / 60:.1f} min, run after command 2 in the same clone (its set-up already done; the"
        f" set-up alone is command 2's time minus pytest's); a second run with cached stages"
        f" {c['demo_again']['wall_s'] / 60:.1f} min; load average {c['run']['load_avg_start'][0]:.1f} at the start"
    )


def commands_test(s: Sources) -> str:
    t, run = s.data("commands")["test"], s.data("commands")["run"]
    return (
        f"{t['wall_s'] / 60:.1f} min: {t['passed']} passed, {t['skipped']} skipped, {t['failed']} failed (pytest"
        f" {t['pytest_s'] / 60:.1f} min); load average {run['load_avg_start'][0]:.1f} at the start"
    )


def index_quality(s: Sources) -> str:
    q, b = s.data(QUALITY), s.data(BUILD)
    first = s.get(QUALITY, "neighbours[level=first-level,k=10]")
    return (
        f"{b['items']:,} ads: {q['collision_rate_before_extra_code']:.1%} collisions before the extra code;"
        f" same-category top-10 neighbours {first['same_category']:.1%} (chance {first['chance']:.1%});"
        " docs/indexing.md"
    )


def decoder(s: Sources) -> str:
    d = s.data("decoder")
    small = s.get("decoder", "models[model=small]")
    ident = small["identity_a_vs_c"]
    return (
        f"{small['c_constrained_ms_per_prompt']:.1f} ms/prompt = **{small['c_prompts_per_s']:.1f} prompts/s** at"
        f" batch {small['c_best_batch']} (target {TARGET_PROMPTS_PER_S:.0f}:"
        f" {_met(small['c_prompts_per_s'], f'>={TARGET_PROMPTS_PER_S}')}), identical top-20 to HF on"
        f" {ident['identical_order']}/{ident['prompts']}; {small['speedup_a_over_c']:.1f}× faster than HF"
        f" `generate` at its own best batch size {small['a_best_batch']} (target {TARGET_SPEEDUP_OVER_HF:.0f}×:"
        f" {_met(small['speedup_a_over_c'], f'>={TARGET_SPEEDUP_OVER_HF}')}); prefix cache on a request stream"
        f" {d['prefix_cache']['cache_prompts_per_s']:.0f} prompts/s; {d['setup']['threads']} threads, load average"
        f" {d['run']['load_avg_start'][0]:.1f} at the start, {d['run']['load_avg_end'][0]:.1f} at the end"
        " (docs/decoding.md)"
    )


def windows(s: Sources) -> str:
    w = s.data("worker")["windows"]
    target = f">={TARGET_EVENTS_PER_S}"
    rate = w["batched"]["events_per_s"]
    text = (
        f"consumer below Faust: **{rate:,.0f} events/s** at 2,000 users (target {TARGET_EVENTS_PER_S:,}:"
        f" {_met(rate, target)}); {w['batched_vs_naive']:.1f}× a naive per-event Faust table agent,"
        f" {w['batched_vs_naive_redis']:.1f}× naive + per-event Redis; a Faust agent that only counts events:"
        f" {w['drain']['events_per_s']:,.0f}"
    )

    def hot(src: Sources) -> str:
        r = src.data("worker-200-users")["windows"]["batched"]["events_per_s"]
        return f"{r:,.0f} events/s ({_met(r, target)})"

    return text + f"; at 200 hot users: {_owed(hot, s)}"


def _runs(summary: dict[str, Any], name: str) -> str:
    part = summary[name]
    if not part["runs"]:
        return "not recorded yet"
    return f"{part['passed']} of {part['runs']} passed"


def faults(s: Sources) -> str:
    try:
        r = reliability_summary(s)
    except PendingFigure as exc:
        text = exc.note
    else:
        landed = r["kill_default"]["facts"].get("kills_landed_mid_batch")
        kill_default = _runs(r, "kill_default") + (f", {landed} kill proven mid-batch" if landed is not None else "")
        broker = _runs(r, "broker_restart")
        if r["broker_restart"]["runs"]:
            broker += f", {r['broker_restart']['broker_lost_events']} events lost"
        text = (
            f"worker SIGKILL ×2 (default: {kill_default}) and ×20 (slow: {_runs(r, 'kill_slow')}); two workers with"
            f" one killed ({_runs(r, 'rebalance')}); Redis SIGKILL ({_runs(r, 'redis')}); broker SIGKILL + restart"
            f" on s3:// storage ({broker})"
        )
        if "not recorded yet" in text:
            text += " (docs/reliability.md has the commands that record them)"

    def soak(src: Sources) -> str:
        d = src.data(SOAK)
        f, v = d["figures"], d["verdicts"]
        return (
            f"{d['config']['minutes']:g} min with garbage at {f['garbage_over_capacity']:.2f}× the worker's capacity:"
            f" {format_value(v['pass'], 'pass')} (good throughput {f['garbage_half_over_clean_half']:.2f}, RSS end /"
            f" warm-up {f['rss_end_over_warmup_point']:.2f}, search p99 {f['search_http_p99_s']:.2f} s)"
        )

    return f"{text}; soak: {_owed(soak, s)}; docs/reliability.md"


CELLS: dict[str, Callable[[Sources], str]] = {
    "commands_demo": commands_demo,
    "commands_test": commands_test,
    "index_quality": index_quality,
    "decoder": decoder,
    "windows": windows,
    "faults": faults,
}


@derived("readme")
def readme_cells(sources: Sources) -> dict[str, str]:
    """Every README cell; an owed source becomes its note (the reliability results may be partial: tests
    not run yet say so)."""
    return {name: _owed(fn, sources).replace("|", "\\|") for name, fn in CELLS.items()}
