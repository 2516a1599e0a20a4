"""The transition prior of a trained LEADRE run, on validation users only (test is never read).

Question: the recipe finds the right ads (its HR@10 is above SASRec's on the full Amazon data) and puts them first
less often (its HR@1 is below), and it loses on ads seen 1-9 times in training. An item-ID model memorises which ad
followed which; an S-ID decoder spreads that over code siblings. Does adding `t * log(1 + transitions)` to each
pooled ad (model/pool_priors.py `TransitionPrior`: how often the ad followed the user's last `window` ads in the
training sequences) order the pool better, alone and with the popularity prior?

The pools are the best `pool` ads of a `pool`-wide beam (pool 20 is what serving decodes at beams 20; 60 is wider),
cached as safetensors by bench/decode_levers.py's `cached_pool`; every (pool, window, t, popularity weight) of the
grid re-ranks them offline with the product's own prior classes.

    .venv/bin/python bench/transition_levers.py --config configs/amazon_full.yaml --seed 0 \\
        --run-dir var/runs/amazon-full/leadre/seed0 \\
        --out docs/data/amazon-full/exploration/transition_levers_seed0.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_levers import cached_pool, ranked_metrics

from adgen.model.baselines import ad_ids
from adgen.model.metrics import ranking_metrics
from adgen.model.pipeline import Run
from adgen.model.pool_priors import PopularityPrior, TransitionCounts


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="Trained run (default: the config's out_dir).")
    parser.add_argument("--pools", default="20,60", help="Comma-separated pool widths (beam = pool).")
    parser.add_argument("--windows", default="1,2,3", help="How many of the user's last ads the prior reads.")
    parser.add_argument("--transition-weights", default="0,0.1,0.2,0.3,0.5,0.75,1,1.5,2,3,5,7.5,10,20,50")
    parser.add_argument("--popularity-weights", default="0,0.1,0.2,0.3,0.5,0.75,1")
    parser.add_argument("--pool-cache", type=Path, default=Path("var/cache/decode-levers"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run.trained(args.config, args.seed, args.run_dir)
    valid = run.valid
    rec = run.recommender()
    value_of = {ad: v for v, ad in enumerate(rec.leaf_items)}
    target_values = torch.tensor([value_of.get(e.target, -2) for e in valid])
    log_count = PopularityPrior.build(enumerate(rec.leaf_items), run.training_ad_counts, 1.0).log_count_of_value
    training = [ad_ids(e.history) for e in run.split.valid]  # the training part: what the priors may read
    recents = [ad_ids(e.history) for e in valid]

    rows = []
    pool_seconds = {}
    for pool in (int(p) for p in args.pools.split(",") if p):
        started = time.perf_counter()
        values, levels = cached_pool(run, rec, valid, pool, args.pool_cache)
        pool_seconds[pool] = time.perf_counter() - started
        base = torch.where(values < 0, float("-inf"), levels.sum(-1))
        popularity = log_count[values.clamp(min=0)]
        for window in (int(w) for w in args.windows.split(",") if w):
            counts = TransitionCounts.from_sequences(training, window)
            unit = counts.prior(value_of, recents, 1.0).rescore(torch.empty(0), torch.zeros_like(base), values)
            unit = torch.where(torch.isfinite(unit), unit, 0.0)  # log(1 + transitions) per pooled ad
            for t, w in itertools.product(floats(args.transition_weights), floats(args.popularity_weights)):
                scores = base + t * unit + w * popularity
                row = {"pool": pool, "window": window, "transition_weight": t, "popularity_weight": w}
                rows.append({**row, **ranked_metrics(scores, values, target_values)})
        best = max((r for r in rows if r["pool"] == pool), key=lambda r: r["ndcg@10"])
        print(json.dumps({"pool": pool, "seconds": pool_seconds[pool], "best": best}), flush=True)
    rows.sort(key=lambda r: r["ndcg@10"], reverse=True)
    # the control: the same counts with no LM at all (each window's successions, ties and the rest by popularity),
    # ranked over the whole catalogue, so what the LM adds over the counts it is fused with stays visible
    counts_alone = []
    by_count = sorted(rec.leaf_items, key=lambda ad: -run.training_ad_counts.get(ad, 0))
    for window in (int(w) for w in args.windows.split(",") if w):
        counts = TransitionCounts.from_sequences(training, window)
        lists = []
        for recent in recents:
            bonus = counts.bonus(recent)
            head = sorted(bonus, key=lambda ad: (-bonus[ad], -run.training_ad_counts.get(ad, 0)))[:10]
            lists.append(head + [ad for ad in by_count[:20] if ad not in bonus][: 10 - len(head)])
        counts_alone.append({"window": window, **ranking_metrics(lists, [e.target for e in valid], [1, 5, 10])})
    print(json.dumps({"counts_alone": counts_alone}), flush=True)
    out = {
        "config": str(args.config),
        "run_dir": str(run.out),
        "seed": args.seed,
        "split": "valid",
        "users": len(valid),
        "pool_seconds": pool_seconds,
        "best": rows[0],
        "counts_alone": counts_alone,
        "rows": rows,
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}: best {json.dumps(rows[0])}")


if __name__ == "__main__":
    main()
