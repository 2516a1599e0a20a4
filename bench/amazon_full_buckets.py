"""Where LEADRE loses to SASRec: NDCG@10 of both per target-frequency bucket, on validation and test users.

A diagnosis of trained protocol runs (bench/amazon_full.py), read after their settings were fixed: nothing here feeds
back into a setting. Each target is bucketed by how often its ad occurs in the training sequences (the behaviour
before each user's validation target, what both models trained on). Loads the LEADRE checkpoint and the SASRec that
run fitted (same seed, split and users) and ranks every validation and test user with both.

    .venv/bin/python bench/amazon_full_buckets.py --seeds 0,1,2 --out docs/data/amazon-full/buckets.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import torch

from adgen.model.baselines import SASRecRecommender, ad_ids
from adgen.model.metrics import ranking_metrics
from adgen.model.pipeline import Run

#: (label, lowest count, highest count) of each bucket of a target's training occurrences
BUCKETS = [("0", 0, 0), ("1-2", 1, 2), ("3-9", 3, 9), ("10-29", 10, 29), ("30+", 30, None)]


def bucket_of(count: int) -> str:
    return next(label for label, low, high in BUCKETS if count >= low and (high is None or count <= high))


def diagnose(config: Path, seed: int, work: Path) -> dict[str, dict[str, dict[str, float]]]:
    run = Run.trained(config, seed, work)
    cfg = run.cfg
    counts = Counter(ad for e in run.split.valid for ad in ad_ids(e.history))
    sas_cfg = cfg.eval.sasrec.model_copy(update={"seed": cfg.seed, "torch_threads": cfg.train.torch_threads})
    sasrec = SASRecRecommender(sorted(run.data.active_items()), sas_cfg)
    if sasrec.load_fitted(run.out / "sasrec") is None:
        raise SystemExit(f"{run.out / 'sasrec'}: no SASRec fitted with this config; run bench/amazon_full.py first")
    leadre = run.recommender()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split, examples in (("valid", run.valid), ("test", run.test)):
        ranked = {"leadre": leadre.recommend(examples, 10), "sasrec": sasrec.recommend(examples, 10)}
        rows: dict[str, dict[str, float]] = {}
        for label, _, _ in BUCKETS:
            members = [i for i, e in enumerate(examples) if bucket_of(counts[e.target]) == label]
            targets = [examples[i].target for i in members]
            row: dict[str, float] = {"users": len(members)}
            for name, lists in ranked.items():
                row[name] = ranking_metrics([lists[i] for i in members], targets, [10])["ndcg@10"] if members else 0.0
            rows[label] = row
        out[split] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/amazon_full.yaml"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--work", type=Path, default=Path("var/runs/amazon-full/leadre"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    seeds = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        seeds[str(seed)] = diagnose(args.config, seed, args.work / f"seed{seed}")
        print(json.dumps({seed: seeds[str(seed)]}), flush=True)
    out = {
        "config": str(args.config),
        "buckets": [label for label, _, _ in BUCKETS],
        "count": "occurrences of the target ad in the training sequences (behaviour before validation targets)",
        "seeds": seeds,
        "seconds": time.perf_counter() - started,
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
