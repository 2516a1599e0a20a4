"""Figures of bench/results_notes.md (the notes docs/results.md carries under its older sections) that are
computed from more than one number of the committed runs in docs/data/runs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adgen.figures.sources import Sources, derived

RUNS = Path("docs/data/runs")
NOTED_RUNS = ("world-small", "world-ablation-full", "amazon-small", "amazon-small-main-only")


@derived("notes")
def notes(sources: Sources) -> dict[str, Any]:
    dpo = sources.data(str(RUNS / "world-small" / "dpo" / "report.json"))
    before, after = dpo["before"], dpo["after"]
    params = [sources.data(str(RUNS / name / "summary.json"))["model_parameters"] for name in NOTED_RUNS]
    return {
        "dpo_ecpm_gain_pct": 100 * (after["mean_ecpm@10"] / before["mean_ecpm@10"] - 1),
        "dpo_ndcg_cost_points": 100 * (before["ndcg@10"] - after["ndcg@10"]),
        "params_min_m": min(params) / 1e6,
        "params_max_m": max(params) / 1e6,
    }
