"""Decode-time levers of a trained LEADRE run, on validation users only (test is never read).

Two questions that need no retraining, asked of the chosen recipe's seed-0 model:
- does a wider beam find better lists (is beam search the bottleneck)? Every validation user is decoded at
  each `--beams` width;
- does a popularity penalty help the tail? The top `--pool` ads of the narrowest beam are re-ranked by
  log P(ad) - beta * log(1 + the ad's count in the training sequences), for each beta of `--betas`.

    .venv/bin/python bench/decode_levers.py --config configs/amazon_full.yaml \\
        --run-dir var/runs/amazon-full/leadre/seed0 --out docs/data/amazon-full/exploration/decode_levers.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

import torch

from adgen.model.baselines import ad_ids
from adgen.model.metrics import ranking_metrics
from adgen.model.pipeline import Run

KS = [1, 5, 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="Trained run (default: the config's out_dir).")
    parser.add_argument("--beams", default="20,60", help="Comma-separated beam widths.")
    parser.add_argument("--betas", default="0,0.05,0.1,0.2,0.3,0.5", help="Comma-separated popularity penalties.")
    parser.add_argument("--pool", type=int, default=50, help="Ads per user re-ranked by the penalty.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run.trained(args.config, args.seed, args.run_dir)
    cfg = run.cfg
    valid = run.valid
    targets = [e.target for e in valid]
    beam_rows = []
    for beams in sorted(int(b) for b in args.beams.split(",")):
        run.cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"beams": beams})})
        started = time.perf_counter()
        lists = run.recommender().recommend(valid, 10)
        beam_rows.append(
            {"beams": beams, **ranking_metrics(lists, targets, KS), "seconds": time.perf_counter() - started}
        )
        print(json.dumps(beam_rows[-1]), flush=True)
    run.cfg = cfg
    counts = Counter(ad for e in run.split.valid for ad in ad_ids(e.history))  # the training sequences
    pools = run.recommender().recommend_scored(valid, args.pool)
    penalty_rows = []
    for beta in [float(b) for b in args.betas.split(",")]:

        def score(pair: tuple[str, float], beta: float = beta) -> float:
            return pair[1] - beta * math.log1p(counts.get(pair[0], 0))

        lists = [[ad for ad, _ in sorted(pool, key=score, reverse=True)[:10]] for pool in pools]
        penalty_rows.append({"beta": beta, **ranking_metrics(lists, targets, KS)})
        print(json.dumps(penalty_rows[-1]), flush=True)
    out = {
        "config": str(args.config),
        "run_dir": str(run.out),
        "seed": args.seed,
        "split": "valid",
        "users": len(targets),
        "beams": beam_rows,
        "popularity_penalty": {"pool": args.pool, "rows": penalty_rows},
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
