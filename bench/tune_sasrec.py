"""Tune the SASRec baseline on validation users only, so the generative model is compared with SASRec at its best.

    .venv/bin/python bench/tune_sasrec.py --config configs/amazon_full.yaml \
        --out docs/data/amazon-full/sasrec_tuning.json

Every configuration of the grid trains with full-softmax cross-entropy and early stopping on validation NDCG@10 over
*every* validation user (the item before each user's last); test items are never read here. The JSON keeps each
configuration's per-epoch validation history (so convergence can be checked) and names the best one; the run
configs take their `eval.sasrec` section from it (docs/results.md says which was chosen).

The JSON is rewritten after every point, and `--resume` keeps the points it already holds, so a grid can be
narrowed or widened (`--hidden 64,128 --dropout 0.2`) without re-running what was measured. When the largest size
of the grid wins, 256 is tried at the winning dropout (the grid's edge moves).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from adgen.core.catalogue import leave_one_out
from adgen.model.baselines import SASRecConfig, SASRecRecommender, ad_ids
from adgen.model.pipeline import load_config, load_dataset

GRID: dict[str, list[Any]] = {
    "hidden": [64, 128],
    "dropout": [0.2, 0.5],
    "lr": [0.003],
}
EXTEND_HIDDEN = 256  # tried (at the best dropout) only when the largest grid size wins: the grid's edge moves
FIXED: dict[str, Any] = {"blocks": 2, "heads": 1, "max_len": 50, "epochs": 200, "patience": 5, "batch_size": 128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="Pipeline YAML whose data section is used.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", default=None, help="Comma-separated hidden sizes instead of the grid's.")
    parser.add_argument("--dropout", default=None, help="Comma-separated dropouts instead of the grid's.")
    parser.add_argument("--resume", action="store_true", help="Keep the points already in --out; run the others.")
    args = parser.parse_args()
    if args.hidden:
        GRID["hidden"] = [int(x) for x in args.hidden.split(",")]
    if args.dropout:
        GRID["dropout"] = [float(x) for x in args.dropout.split(",")]

    cfg = load_config(args.config)
    data = load_dataset(cfg.data, cfg.seed)
    split = leave_one_out(data, cfg.data.min_ads)
    candidates = sorted(data.active_items())
    train = [ad_ids(e.history) for e in split.valid]  # each user's sequence before the validation target
    info = {"users": len(data.users), "items": len(data.items), "valid_users": len(split.valid)}
    runs: list[dict[str, Any]] = json.loads(args.out.read_text())["runs"] if args.resume and args.out.exists() else []
    load_start = os.getloadavg()
    started = time.perf_counter()
    names = list(GRID)
    grid = [dict(zip(names, values, strict=True)) for values in itertools.product(*(GRID[n] for n in names))]

    def run_point(point: dict[str, Any]) -> None:
        params = {**FIXED, **point, "seed": args.seed, "torch_threads": args.threads}
        t0 = time.perf_counter()
        model = SASRecRecommender(candidates, SASRecConfig(**params))
        fit = model.fit(train, split.valid)
        best_epoch = max(fit["epochs"], key=lambda r: r.get("valid", {}).get("ndcg@10", -1))["epoch"]
        runs.append(
            {
                "params": params,
                "best_valid_ndcg@10": fit["best_valid_ndcg@10"],
                "best_epoch": best_epoch,
                "epochs_run": len(fit["epochs"]),
                "seconds": time.perf_counter() - t0,
                "loadavg_end": os.getloadavg(),
                "history": fit["epochs"],
            }
        )
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "history"}), flush=True)
        write(args.out, runs, info, started, load_start)  # after every point: a stopped run keeps what it measured

    refined = False
    while grid:
        point = grid.pop(0)
        if any(all(r["params"][k] == v for k, v in point.items()) for r in runs):
            print(f"kept from {args.out}: {point}")
        else:
            run_point(point)
        if not grid and not refined:  # the grid's edge moves when its largest size wins
            refined = True
            top = max(runs, key=lambda r: r["best_valid_ndcg@10"])["params"]
            if top["hidden"] == max(GRID["hidden"]) and top["hidden"] < EXTEND_HIDDEN:
                grid = [{"hidden": EXTEND_HIDDEN, "dropout": top["dropout"], "lr": top["lr"]}]
    write(args.out, runs, info, started, load_start)
    best = max(runs, key=lambda r: r["best_valid_ndcg@10"])
    print(f"best: {json.dumps(best['params'])} valid ndcg@10 {best['best_valid_ndcg@10']:.4f} -> {args.out}")


def write(
    path: Path, runs: list[dict[str, Any]], info: dict[str, Any], started: float, load_start: tuple[float, ...]
) -> None:
    best = max(runs, key=lambda r: r["best_valid_ndcg@10"])
    out = {
        "what": "SASRec grid on validation NDCG@10 (every validation user); test never read",
        "data": info,
        "grid": GRID,
        "extend_hidden": EXTEND_HIDDEN,
        "fixed": FIXED,
        "best": {k: v for k, v in best.items() if k != "history"},
        "runs": runs,
        "seconds": time.perf_counter() - started,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
