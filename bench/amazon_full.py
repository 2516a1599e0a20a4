"""Issue 13's protocol on the full Amazon Scientific data: every variant x every seed, one harness, JSON committed.

    .venv/bin/python bench/amazon_full.py --seeds 0,1,2 --out docs/data/amazon-full \\
        --variant leadre=configs/amazon_full.yaml --variant tiger=configs/amazon_full_sid_only.yaml

Each (variant, seed) runs `adgen train` (configs give the settings chosen on validation users; test is read once
per run, at its end). The variant whose config lists baselines also trains and scores popularity and the tuned
SASRec with the same seed on the same split and users. What each run leaves in `--out/<variant>/seed<n>/`:
summary.json (sizes, timings incl. wall time, per-epoch validation history of every stage) and eval.json
(test metrics, validation metrics, channel value). `bench/make_results.py` renders docs/results.md from them.
Runs already present in `--out` are skipped unless `--force`; a run's working files stay in `--work`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from adgen.figures.amazon_full import aggregate
from adgen.figures.sources import Sources
from adgen.model.pipeline import Run, load_config, run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="name=config.yaml (repeatable)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("docs/data/amazon-full"))
    parser.add_argument("--work", type=Path, default=Path("var/runs/amazon-full"))
    parser.add_argument("--force", action="store_true", help="Re-run (variant, seed) pairs already in --out.")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="Do not train: re-evaluate each run's trained model in --work with the config as it is now (e.g. the "
        "SASRec baseline once tuning has fixed it), refreshing eval.json and the summary's evaluation timing.",
    )
    parser.add_argument(
        "--baselines",
        default=None,
        help="Comma-separated override of eval.baselines for this invocation (recorded in summary.json), e.g. "
        "'popularity' while SASRec is still being tuned; `--evaluate-only` then adds the tuned SASRec.",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="Override train.torch_threads (all stages).")
    parser.add_argument(
        "--sasrec-from",
        default=None,
        help="Variant whose work dir (same seed) already holds the fitted SASRec: it is copied into each new run, "
        "which then loads it (the baseline row and a distilled model's teacher) instead of fitting it again; the "
        "fit is the same config, seed and split. An ensemble teacher's other seeds (train.distill_teacher_seeds) "
        "are copied from that variant's runs of those seeds. Recorded in summary.json.",
    )
    parser.add_argument(
        "--reuse-sasrec",
        action="store_true",
        help="With --evaluate-only: load the SASRec a run dir already fitted with the same config and seed instead of "
        "fitting it again (eval.reuse_fitted_sasrec; recorded in summary.json).",
    )
    parser.add_argument(
        "--models-from",
        default=None,
        help="With --evaluate-only: evaluate the models trained as this variant (its work dirs; its summary.json is "
        "copied to the new variant first), e.g. the same models decoded with another config's eval settings.",
    )
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, config in variants.items():
            dest = args.out / name / f"seed{seed}"
            if args.evaluate_only:
                source = args.models_from or name
                work = args.work / source / f"seed{seed}"
                if args.models_from is not None:
                    trained = args.out / source / f"seed{seed}"
                    dest.mkdir(parents=True, exist_ok=True)
                    for part in ("summary.json", "sasrec_history.json"):
                        if (trained / part).exists():
                            shutil.copy(trained / part, dest / part)
                reevaluate(Path(config), seed, work, dest, args.torch_threads, args.reuse_sasrec)
                continue
            if (dest / "eval.json").exists() and not args.force:
                print(f"skip {name} seed {seed}: {dest} exists")
                continue
            work = args.work / name / f"seed{seed}"
            if work.exists():
                shutil.rmtree(work)  # a fresh run: no stage is resumed from an older config
            cfg = load_config(Path(config), seed=seed, out_dir=str(work))
            if args.sasrec_from is not None:
                fitted = args.work / args.sasrec_from
                shutil.copytree(fitted_sasrec(fitted, seed), work / "sasrec")
                for other in cfg.train.distill_teacher_seeds or []:  # an ensemble teacher's other members
                    if other != seed:
                        shutil.copytree(fitted_sasrec(fitted, other), work / f"sasrec_seed{other}")
            if args.sasrec_from is not None:
                cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reuse_fitted_sasrec": True})})
            if args.torch_threads is not None:
                train = cfg.train.model_copy(update={"torch_threads": args.torch_threads})
                cfg = cfg.model_copy(update={"train": train})
            if args.baselines is not None:
                wanted = [b for b in args.baselines.split(",") if b]
                cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"baselines": wanted})})
            load_start = os.getloadavg()
            t0 = time.perf_counter()
            summary = run_pipeline(cfg)
            summary["loadavg_start"], summary["loadavg_end"] = load_start, os.getloadavg()
            summary["runner_wall_s"] = time.perf_counter() - t0
            summary["config_file"] = config
            summary["baselines_override"] = args.baselines
            summary["sasrec_from"] = args.sasrec_from
            dest.mkdir(parents=True, exist_ok=True)
            results = summary.pop("results")
            (dest / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
            (dest / "eval.json").write_text(json.dumps(results, indent=1))
            sasrec_metrics = work / "sasrec" / "metrics.json"
            if sasrec_metrics.exists():
                shutil.copy(sasrec_metrics, dest / "sasrec_history.json")
            scores = {k: v["ndcg@10"] for k, v in results.items() if isinstance(v, dict) and "ndcg@10" in v}
            print(f"{name} seed {seed}: test ndcg@10 {json.dumps(scores)}", flush=True)
    # means and sds over every committed run (README's inline figures cite this file)
    totals = aggregate(Sources(Path(__file__).resolve().parents[1]))
    (args.out / "aggregate.json").write_text(json.dumps(totals, indent=1))
    print(f"aggregate -> {args.out / 'aggregate.json'}: ratio {totals.get('ratio_ndcg@10')}")


def fitted_sasrec(variant_work: Path, seed: int) -> Path:
    """The SASRec fitted with `seed` in a variant's runs: its own run's `sasrec`, or the `sasrec_seed<seed>` of a run
    that fitted it as an ensemble teacher's member (a seed trained from scratch fits every member)."""
    candidates = [variant_work / f"seed{seed}" / "sasrec", *sorted(variant_work.glob(f"seed*/sasrec_seed{seed}"))]
    for path in candidates:
        if (path / "metrics.json").exists():
            return path
    raise SystemExit(
        f"no SASRec fitted with seed {seed} under {variant_work} (looked for {candidates[0]} and */sasrec_seed{seed})"
    )


def reevaluate(config: Path, seed: int, work: Path, dest: Path, threads: int | None, reuse_sasrec: bool) -> None:
    """Evaluate the trained run in `work` again with `config` now; LEADRE's rankings are recomputed (the same
    model and beams give the same lists) so the channel value pairs it with the re-trained baselines."""
    if not (dest / "summary.json").exists():
        raise SystemExit(f"{dest}/summary.json missing: train this (variant, seed) first")
    cfg = load_config(config, seed=seed, out_dir=str(work))
    if threads is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"torch_threads": threads})})
    if reuse_sasrec:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"reuse_fitted_sasrec": True})})
    (work / "eval" / "eval.json").unlink(missing_ok=True)  # nothing kept from the earlier evaluation
    run = Run(cfg)
    run.load_trained()
    t0 = time.perf_counter()
    results = run.evaluate()
    summary = json.loads((dest / "summary.json").read_text())
    summary.setdefault("reevaluated", []).append(
        {
            "config": str(config),
            "eval_s": time.perf_counter() - t0,
            "loadavg": os.getloadavg(),
            "baselines": list(cfg.eval.baselines),
            "sasrec_reused": bool(run.timings.get("sasrec_reused", False)),
        }
    )
    (dest / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (dest / "eval.json").write_text(json.dumps(results, indent=1))
    if (work / "sasrec" / "metrics.json").exists():
        shutil.copy(work / "sasrec" / "metrics.json", dest / "sasrec_history.json")
    print(f"re-evaluated {dest}: {json.dumps({k: v.get('ndcg@10') for k, v in results.items() if 'ndcg@10' in v})}")


if __name__ == "__main__":
    main()
