"""`adgen train --config F` and `adgen eval --config F`: the LEADRE model pipeline (model/pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
err = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Option("--config", help="Pipeline YAML (see configs/).", exists=True, dir_okay=False)]


def _load(config: Path, out_dir: Path | None, seed: int | None = None):
    from pydantic import ValidationError

    from adgen.model.pipeline import load_config

    try:
        overrides = {"out_dir": str(out_dir)} if out_dir else {}
        return load_config(config, seed=seed, **overrides)
    except ValidationError as exc:
        err.print(f"[red]error:[/red] invalid config {config}:\n{exc}")
        raise typer.Exit(code=2) from exc


def _table(results: dict[str, dict]) -> None:
    if not results:
        return
    keys = ["hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "concentration@10", "abundance@10", "mean_ecpm@10", "dice@10"]
    table = Table(title="test users")
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in results.items():
        table.add_row(name, *(f"{m[k]:.4f}" if k in m else "-" for k in keys))
    console.print(table)


@app.command()
def train(
    config: ConfigArg,
    out_dir: Annotated[Path | None, typer.Option(help="Override out_dir of the config.")] = None,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Evaluate against baselines after training.")
    ] = True,
    seed: Annotated[
        int | None, typer.Option(help="Re-seed the whole run (S-IDs, model, data order, baselines).")
    ] = None,
) -> None:
    """Train through the curriculum (resumable), evaluate, optionally DPO; prints the summary path."""
    from adgen.model.pipeline import run_pipeline

    cfg = _load(config, out_dir, seed)
    console.print_json(cfg.model_dump_json())
    try:
        summary = run_pipeline(cfg, evaluate=evaluate)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    _table(summary.get("results") or {})
    if summary.get("dpo"):
        _table({"before dpo": summary["dpo"]["before"], "after dpo": summary["dpo"]["after"]})
    console.print(f"summary: {cfg.out_dir / 'summary.json'}")


@app.command(name="eval")
def evaluate_cmd(
    config: ConfigArg,
    out_dir: Annotated[Path | None, typer.Option(help="Override out_dir of the config.")] = None,
    models: Annotated[
        str, typer.Option(help="Comma-separated subset of leadre,popularity,sasrec,successions to (re-)evaluate.")
    ] = "leadre,popularity,sasrec,successions",
    seed: Annotated[
        int | None, typer.Option(help="The seed the run was trained with (see `adgen train --seed`).")
    ] = None,
) -> None:
    """Evaluate the trained model in out_dir/model and the baselines on the test split (JSON + PNG)."""
    from adgen.model.pipeline import Run

    cfg = _load(config, out_dir, seed)
    chosen = [m.strip() for m in models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - {"leadre", "popularity", "sasrec", "successions"})
    if unknown:
        err.print(f"[red]error:[/red] unknown model(s) {unknown}; choose from leadre, popularity, sasrec, successions")
        raise typer.Exit(code=2)
    run = Run(cfg)
    try:
        if "leadre" in chosen:
            run.load_trained()
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc
    results = run.evaluate(chosen)
    run.summary("summary_eval.json", results=results)
    _table(results)
    console.print(json.dumps({"report": str(cfg.out_dir / "eval" / "eval.json")}))
