"""Choose the next-ad prior's decode weight (eval.ad_prior_weight, model/ad_head.py) on validation users only.

Loads a run trained with train.ad_head_weight > 0, decodes every validation user once per weight, and writes
HR/NDCG per weight plus the best one to --out. Test users are never read.

    .venv/bin/python bench/choose_ad_prior.py --config configs/amazon_full.yaml --seed 0 \\
        --weights 0,0.5,1,2 --out docs/data/amazon-full/exploration/ad_prior_weight_seed0.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from adgen.model.metrics import ranking_metrics
from adgen.model.pipeline import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="Trained run (default: the config's out_dir).")
    parser.add_argument("--weights", default="0,0.5,1,2", help="Comma-separated decode weights to score.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run.trained(args.config, args.seed, args.run_dir)
    cfg = run.cfg
    targets = [e.target for e in run.valid]
    rows = []
    for weight in [float(w) for w in args.weights.split(",")]:
        run.cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"ad_prior_weight": weight})})
        started = time.perf_counter()
        rankings = run.recommender().recommend(run.valid, 10)
        metrics = ranking_metrics(rankings, targets, [1, 5, 10])
        rows.append({"weight": weight, **metrics, "seconds": time.perf_counter() - started})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["ndcg@10"])
    out = {
        "config": str(args.config),
        "seed": args.seed,
        "split": "valid",
        "users": len(targets),
        "rows": rows,
        "best_weight": best["weight"],
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"best weight {best['weight']} (valid NDCG@10 {best['ndcg@10']:.4f}) -> {args.out}")


if __name__ == "__main__":
    main()
