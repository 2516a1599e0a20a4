"""docs/operations.md: the worker benchmark (bench/results/worker.json: windows at 2,000 users and
generation; bench/results/worker-200-users.json: windows at 200 hot users)."""

from __future__ import annotations

from typing import Any

from adgen.figures.regions import region
from adgen.figures.sources import PendingFigure, Sources

RUNS = {"worker": "2,000", "worker-200-users": "200 (hot)"}
TARGET_EVENTS_PER_S = 20_000
TARGET_GENERATION_RATIO = 0.8


def _load(run: dict[str, Any]) -> str:
    load = run.get("run", {}).get("load_avg_start") or run.get("load")
    return f"{load[0]:.1f}" if load else "not recorded"


@region("worker-windows")
def worker_windows(sources: Sources) -> str:
    lines = [
        "| users | started (UTC), load at start | drain (Faust ceiling) | naive (Faust table/event)"
        " | naive + Redis/event | batched (worker) | batched / naive | batched / naive+Redis | batched / drain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    batched, owed = [], []
    for ref, users in RUNS.items():
        try:
            d = sources.data(ref)
        except PendingFigure as exc:
            owed.append(f"{users} users: {exc.note}.")
            continue
        w = d["windows"]
        batched.append(w["batched"]["events_per_s"])
        lines.append(
            f"| {users} | {d['started_at'][:16].replace('T', ' ')}, {_load(d)} | {w['drain']['events_per_s']:,.0f}/s |"
            f" {w['naive']['events_per_s']:,.0f}/s | {w['naive_redis']['events_per_s']:,.0f}/s |"
            f" **{w['batched']['events_per_s']:,.0f}/s** | {w['batched_vs_naive']:.1f}x |"
            f" {w['batched_vs_naive_redis']:.1f}x | {w['batched_vs_drain']:.2f}x |"
        )
    met = all(b >= TARGET_EVENTS_PER_S for b in batched)
    lines += [
        "",
        f"Target {TARGET_EVENTS_PER_S:,} events/s per worker: **{'met' if met else 'missed'}** in "
        + ("every run above." if met else "at least one run above."),
        *(["", *owed] if owed else []),
    ]
    return "\n".join(lines)


@region("worker-generation")
def worker_generation(sources: Sources) -> str:
    g = sources.data("worker")["generation"]
    ok = g["generation_vs_decoder"] >= TARGET_GENERATION_RATIO
    return (
        f"Generation, same run ({g['users']} users, {g['ads']:,}-ad trie, {g['model']}, K = {g['k']}, beams ="
        f" {g['beams']}, batch {g['batch_size']}, ~{g['mean_prompt_tokens']:.0f}-token prompts): decoder alone"
        f" {g['decoder_users_per_s']:.1f} users/s in a worker thread (as the worker runs it) and"
        f" {g['decoder_main_thread_users_per_s']:.1f} users/s on the main thread; the full generation step (queue,"
        " budget, debounce read, prompts from windows, decode on the worker's dedicated decode thread, guarded"
        f" Redis write) {g['generation_users_per_s']:.1f} users/s = **{g['generation_vs_decoder']:.2f} of the"
        f" decoder's rate in a thread** (target >= {TARGET_GENERATION_RATIO}: {'met' if ok else '**missed**'}),"
        f" {g['generation_users_per_s'] / g['decoder_main_thread_users_per_s']:.2f} of its main-thread rate."
        f" Request -> features latency with requests arriving at {g['latency_load_users_per_s']:g} users/s:"
        f" p50 {g['latency_p50_ms']:.0f} ms, p99 {g['latency_p99_ms']:.0f} ms."
    )
