"""Decode-time levers of a trained LEADRE run, on validation users only (test is never read).

Three questions that need no retraining, asked of one trained seed:
- does a wider beam find better lists (is beam search the bottleneck)? Every validation user is decoded at
  each `--beams` width;
- does weighting the trie levels help the top of the list? An ad's score is the sum of its codes' log-probs,
  one per level; re-weighting them (level 1 fixed at 1) changes how much the coarse code (the category-like
  cluster) counts against the fine ones and the collision code. The best `--pool` ads of a `--pool`-wide beam
  are re-ranked offline for every weight vector of the grid;
- does a popularity penalty help the tail? The same pools re-ranked by
  log P(ad) - beta * log(1 + the ad's count in the training sequences) (a negative beta is a boost);
- both at once: the joint grid of level weights and betas.
The pools (leaf values and per-level log-probs) are saved as safetensors under `--pool-cache`, so a new grid
reads them instead of decoding again.

    .venv/bin/python bench/decode_levers.py --config configs/amazon_full.yaml --seed 0 \\
        --run-dir var/runs/amazon-full/leadre/seed0 \\
        --out docs/data/amazon-full/exploration/decode_levers_seed0.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adgen.model.metrics import ranking_metrics
from adgen.model.pipeline import Run
from adgen.model.pool_priors import PopularityPrior

KS = [1, 5, 10]


def ranked_metrics(scores: torch.Tensor, values: torch.Tensor, target_values: torch.Tensor) -> dict[str, float]:
    """HR@{1,5,10} and NDCG@{5,10} of pools [U, P] ranked by `scores` (-inf = empty slot)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranked = values.gather(1, order)
    hit = (ranked == target_values.unsqueeze(1)) & torch.isfinite(scores.gather(1, order))
    found = hit.any(dim=1)
    rank = torch.where(found, hit.float().argmax(dim=1), torch.full_like(found, 10**6, dtype=torch.long))
    out: dict[str, float] = {}
    for k in KS:
        out[f"hr@{k}"] = float((rank < k).float().mean())
    for k in (5, 10):
        gain = torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2), torch.zeros_like(rank, dtype=torch.float))
        out[f"ndcg@{k}"] = float(gain.mean())
    return out


def cached_pool(run: Run, rec: Any, examples: list[Any], pool: int, cache_dir: Path) -> tuple[torch.Tensor, ...]:
    """Each example's best `pool` finished ads of a `pool`-wide beam (leaf values [U, P], per-level log-probs
    [U, P, depth]), decoded once and then read from a safetensors file named after the run and the width."""
    cache = cache_dir / f"{Path(run.out).resolve().as_posix().replace('/', '_')}_pool{pool}.safetensors"
    if cache.exists():
        saved = load_file(cache)
        return saved["values"], saved["levels"]
    values, levels = rec.search.generate_levels(
        rec.prompts(examples), rec.trie, pool, pool, renormalize=rec.renormalize
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"values": values.contiguous(), "levels": levels.contiguous()}, cache)
    return values, levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=None, help="Trained run (default: the config's out_dir).")
    parser.add_argument("--beams", default="20,60", help="Comma-separated beam widths.")
    parser.add_argument("--pool", type=int, default=60, help="Ads per user re-ranked by level weights / penalty.")
    parser.add_argument("--weights", default="0.5,0.7,0.85,1,1.2,1.5,2", help="Grid of each level's weight.")
    parser.add_argument("--betas", default="-0.5,-0.4,-0.3,-0.2,-0.1,0,0.1,0.2", help="Popularity penalties.")
    parser.add_argument("--pool-cache", type=Path, default=Path("var/cache/decode-levers"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Run.trained(args.config, args.seed, args.run_dir)
    cfg = run.cfg
    valid = run.valid
    targets = [e.target for e in valid]
    beam_rows = []
    for beams in sorted(int(b) for b in args.beams.split(",") if b):
        run.cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"beams": beams})})
        started = time.perf_counter()
        lists = run.recommender().recommend(valid, 10)
        beam_rows.append(
            {"beams": beams, **ranking_metrics(lists, targets, KS), "seconds": time.perf_counter() - started}
        )
        print(json.dumps(beam_rows[-1]), flush=True)
    run.cfg = cfg

    rec = run.recommender()
    started = time.perf_counter()
    values, levels = cached_pool(run, rec, valid, args.pool, args.pool_cache)
    pool_seconds = time.perf_counter() - started
    value_of = {ad: v for v, ad in enumerate(rec.leaf_items)}
    target_values = torch.tensor([value_of.get(t, -2) for t in targets])
    empty = values < 0
    depth = levels.shape[-1]
    level_means = [float(levels[~empty][:, d].mean()) for d in range(depth)]

    grid_rows = []
    choices = [float(w) for w in args.weights.split(",")]
    for rest in itertools.product(choices, repeat=depth - 1):
        weights = torch.tensor([1.0, *rest])
        scores = torch.where(empty, float("-inf"), (levels * weights).sum(-1))
        grid_rows.append({"weights": weights.tolist(), **ranked_metrics(scores, values, target_values)})
    unweighted = next(r for r in grid_rows if all(w == 1.0 for w in r["weights"]))
    grid_rows.sort(key=lambda r: r["ndcg@10"], reverse=True)
    print(json.dumps({"unweighted_pool": unweighted, "best": grid_rows[0]}), flush=True)

    # the product's own counts and table (model/pool_priors.py), so the grid measures what serving would add
    log_count = PopularityPrior.build(enumerate(rec.leaf_items), run.training_ad_counts, 1.0).log_count_of_value
    penalty_rows = []
    base = torch.where(empty, float("-inf"), levels.sum(-1))
    for beta in [float(b) for b in args.betas.split(",")]:
        scores = base - beta * log_count[values.clamp(min=0)]
        penalty_rows.append({"beta": beta, **ranked_metrics(scores, values, target_values)})
        print(json.dumps(penalty_rows[-1]), flush=True)
    betas = [float(b) for b in args.betas.split(",")]
    joint_rows = []
    for rest in itertools.product(choices, repeat=depth - 1):
        weights = torch.tensor([1.0, *rest])
        weighted = torch.where(empty, float("-inf"), (levels * weights).sum(-1))
        for beta in betas:
            scores = weighted - beta * log_count[values.clamp(min=0)]
            joint_rows.append(
                {"weights": weights.tolist(), "beta": beta, **ranked_metrics(scores, values, target_values)}
            )
    joint_rows.sort(key=lambda r: r["ndcg@10"], reverse=True)
    print(json.dumps({"joint_best": joint_rows[0]}), flush=True)
    out = {
        "config": str(args.config),
        "run_dir": str(run.out),
        "seed": args.seed,
        "split": "valid",
        "users": len(targets),
        "beams": beam_rows,
        "level_weights": {
            "pool": args.pool,
            "pool_seconds": pool_seconds,
            "mean_logprob_per_level": level_means,
            "unweighted": unweighted,
            "best": grid_rows[0],
            "top": grid_rows[:25],
            "grid_size": len(grid_rows),
        },
        "popularity_penalty": {"pool": args.pool, "rows": penalty_rows},
        "joint": {"best": joint_rows[0], "top": joint_rows[:25], "grid_size": len(joint_rows)},
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
