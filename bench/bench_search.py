"""Benchmark of the RARE query path: cache-hit and cache-miss latency (p50/p99), queries/s, and the rate at
which new ads get CIs by constrained inference, with baselines measured in the same run.

Baselines: BM25 (rank-bm25) over the same ads and queries, and unconstrained beam search of the same model
(same beams and depth, no CI trie), so the ratios show what the trie and the cache buy. The service runs
with the settings the build chose on validation (serving.json); misses are the build's test queries,
answered by a second copy of the service without a head cache.
Targets (printed, not asserted): hit < 1 ms, miss < 50 ms at beam 20.

    adgen world generate --users 300 --ads 1000 --out var/world
    adgen ci build --world var/world --out var/index/ci
    python bench/bench_search.py --world var/world --ci-dir var/index/ci --out var/runs/bench_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from adgen.datasets import load_world
from adgen.processors.query_retrieval import SearchService, validate_query
from adgen.search.ci_data import QUERY_PROMPT
from adgen.search.ci_eval import BM25Retriever
from adgen.search.ci_pipeline import load_split
from adgen.search.query_log import world_query_log

HIT_TARGET_MS = 1.0
MISS_TARGET_MS = 50.0


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t0)


def _summary(ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "qps_single": float(1000 / arr.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("var/world"))
    parser.add_argument("--ci-dir", type=Path, default=Path("var/index/ci"))
    parser.add_argument("--out", type=Path, default=Path("var/runs/bench_search.json"))
    parser.add_argument("--beams", type=int, default=None, help="Override the build's tuned beam width.")
    parser.add_argument("--top-cis", type=int, default=None, help="Override the build's tuned CIs per query.")
    parser.add_argument("--miss-queries", type=int, default=200)
    parser.add_argument("--hit-repeats", type=int, default=2000)
    parser.add_argument("--new-ads", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in {"beams": args.beams, "top_cis": args.top_cis}.items() if v is not None}
    service = SearchService.from_build(args.ci_dir, **overrides)
    dataset = load_world(args.world)
    items = dataset.active_items()
    held_out = load_split(args.ci_dir, world_query_log(args.world, items)).test
    head = dict(service.head_cache)
    if not head:
        raise SystemExit("the snapshot has no head cache; build with --head-cache > 0")
    misses = [q.text for q in held_out][: args.miss_queries]
    if not misses:
        raise SystemExit("the build has no test queries to time as misses; build with a labelled query log")
    uncached = SearchService.from_build(args.ci_dir, **overrides)
    uncached.head_cache.clear()

    # warm-up (first calls pay allocator and lazy-init costs)
    uncached.search(misses[0])
    service.search(next(iter(head)))

    hit_keys = list(head)
    hit_queries = [hit_keys[i % len(hit_keys)] for i in range(args.hit_repeats)]
    hit_ms = [_timed(lambda q=q: service.search(q)) for q in hit_queries]
    miss_ms = [_timed(lambda q=q: uncached.search(q)) for q in misses]

    t0 = time.perf_counter()
    for start in range(0, len(misses), args.batch):
        uncached.search_batch(misses[start : start + args.batch])
    batched_qps = len(misses) / (time.perf_counter() - t0)

    # baselines on the same queries
    bm25 = BM25Retriever(items)
    bm25_ms = [_timed(lambda q=q: bm25(q)) for q in misses]
    trie = service.trie
    prompts = [service.model.prompt_ids(QUERY_PROMPT.format(text=validate_query(q))) for q in misses]
    search = service.model.backend.search  # the torch decoder (its unconstrained mode is the baseline)
    unconstrained_ms = [
        _timed(lambda p=p: search.generate_unconstrained([p], steps=trie.max_depth, beams=service.config.beams))
        for p in prompts[: min(len(prompts), 100)]
    ]

    # new ads: constrained inference into the existing CI set + incremental index update
    source = list(items.values())[: args.new_ads]
    new_items = [item.model_copy(update={"item_id": f"bench-new-{i}"}) for i, item in enumerate(source)]
    t0 = time.perf_counter()
    assigned = service.upsert_ads(new_items)
    assign_s = time.perf_counter() - t0
    service.index.check_consistency()
    for item in new_items:
        service.remove_ad(item.item_id)

    hit, miss = _summary(hit_ms), _summary(miss_ms)
    bm25_s, unc = _summary(bm25_ms), _summary(unconstrained_ms)
    result = {
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "machine": {
            "cpus_used": args.threads,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "setup": {
            "ads": len(service.index.ad_cis),
            "cis": service.index.num_cis,
            "trie_depth": trie.max_depth,
            "head_cache": len(head),
            "beams": service.config.beams,
            "top_cis": service.config.top_cis,
            "lexical_weight": service.config.lexical_weight,
            "model_parameters": sum(p.numel() for p in service.model.model.parameters()),
        },
        "cache_hit": hit,
        "cache_miss": miss,
        "miss_batched_qps": batched_qps,
        "baseline_bm25": bm25_s,
        "baseline_unconstrained_beam": unc,
        "new_ads": {
            "ads": len(new_items),
            "seconds": assign_s,
            "ads_per_s": len(new_items) / assign_s,
            "avg_cis_per_ad": statistics.mean(len(c) for c in assigned.values()),
        },
        "ratios": {
            "miss_p50_over_hit_p50": miss["p50_ms"] / hit["p50_ms"],
            "miss_p50_over_bm25_p50": miss["p50_ms"] / bm25_s["p50_ms"],
            "hit_p50_over_bm25_p50": hit["p50_ms"] / bm25_s["p50_ms"],
            "miss_p50_over_unconstrained_p50": miss["p50_ms"] / unc["p50_ms"],
        },
        "targets": {
            "hit_p50_under_1ms": hit["p50_ms"] < HIT_TARGET_MS,
            "hit_p99_under_1ms": hit["p99_ms"] < HIT_TARGET_MS,
            "miss_p50_under_50ms": miss["p50_ms"] < MISS_TARGET_MS,
            "miss_p99_under_50ms": miss["p99_ms"] < MISS_TARGET_MS,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(
        f"\nhit p50 {hit['p50_ms']:.3f} ms p99 {hit['p99_ms']:.3f} ms | miss p50 {miss['p50_ms']:.1f} ms "
        f"p99 {miss['p99_ms']:.1f} ms | batched miss {batched_qps:.1f} q/s | BM25 p50 {bm25_s['p50_ms']:.2f} ms | "
        f"unconstrained beam p50 {unc['p50_ms']:.1f} ms | new ads {len(new_items) / assign_s:.1f} ads/s",
        f"\nwrote {args.out}",
    )


if __name__ == "__main__":
    main()
