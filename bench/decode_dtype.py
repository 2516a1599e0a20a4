"""bf16 against fp32 decoding of the trained recipe, on validation users only (test is never read).

Issue 13's bar for making bf16 the default decode dtype on CPUs that multiply it natively (model/lm.py
`resolve_dtype`, `ADGEN_MODEL__DTYPE=auto`): validation NDCG@10 within one standard error of fp32's on this protocol.
Each seed's trained model decodes every validation user with the config's beam and pool priors, once in fp32 and
once cast to bf16; wall time per pass is recorded (one pass each, after a warm-up batch, on a quiet machine).

    .venv/bin/python bench/decode_dtype.py --config configs/amazon_full.yaml --seeds 0,1,2 \\
        --out docs/data/amazon-full/exploration/decode_dtype.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from adgen.model.lm import cpu_has_native_bf16
from adgen.model.metrics import ranking_metrics
from adgen.model.pipeline import Run

KS = [1, 5, 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("var/runs/amazon-full/leadre"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",") if s):
        run = Run.trained(args.config, seed, args.work / f"seed{seed}")
        targets = [e.target for e in run.valid]
        for dtype in (torch.float32, torch.bfloat16):
            run.model = run.model.to(dtype)
            rec = run.recommender()
            rec.recommend(run.valid[:32], 10)  # warm-up: first-call allocations and kernels
            started = time.perf_counter()
            lists = rec.recommend(run.valid, 10)
            seconds = time.perf_counter() - started
            row = {"seed": seed, "dtype": str(dtype).removeprefix("torch."), **ranking_metrics(lists, targets, KS)}
            rows.append({**row, "seconds": seconds, "users": len(targets)})
            print(json.dumps(rows[-1]), flush=True)
    by = {d: [r for r in rows if r["dtype"] == d] for d in ("float32", "bfloat16")}
    fp32 = [r["ndcg@10"] for r in by["float32"]]
    diffs = [b["ndcg@10"] - f["ndcg@10"] for f, b in zip(by["float32"], by["bfloat16"], strict=True)]
    standard_error = statistics.stdev(fp32) / math.sqrt(len(fp32)) if len(fp32) > 1 else None
    mean_diff = statistics.mean(diffs)
    out = {
        "config": str(args.config),
        "split": "valid",
        "native_bf16": cpu_has_native_bf16(),
        "rows": rows,
        "ndcg@10_fp32_mean": statistics.mean(fp32),
        "ndcg@10_bf16_mean": statistics.mean(r["ndcg@10"] for r in by["bfloat16"]),
        "mean_difference": mean_diff,
        "fp32_standard_error": standard_error,
        "within_one_standard_error": standard_error is not None and abs(mean_diff) <= standard_error,
        "seconds_fp32": statistics.mean(r["seconds"] for r in by["float32"]),
        "seconds_bf16": statistics.mean(r["seconds"] for r in by["bfloat16"]),
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}: {json.dumps({k: v for k, v in out.items() if k != 'rows'})}")


if __name__ == "__main__":
    main()
