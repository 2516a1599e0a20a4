"""`adgen bench`: run the benchmarks; `adgen bench report`: render every documented figure from committed JSON.

Run both from the repository root. `adgen bench report --check` changes nothing and exits 1 when a
document shows a figure its JSON does not give (the docs test runs the same check).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adgen.bench_report import BENCHMARKS, result_path

app = typer.Typer(add_completion=False, invoke_without_command=True, help=__doc__)
console = Console()


def _repo_root() -> Path:
    root = Path.cwd()
    if not (root / "bench").is_dir() or not (root / "docs").is_dir():
        console.print("[red]error:[/red] run `adgen bench` from the repository root (no bench/ and docs/ here)")
        raise typer.Exit(2)
    return root


@app.callback()
def bench(
    ctx: typer.Context,
    only: Annotated[str, typer.Option(help="Comma-separated subset of: " + ", ".join(BENCHMARKS))] = "",
) -> None:
    """Run every benchmark (writes bench/results/<name>.json), then `adgen bench report`."""
    if ctx.invoked_subcommand is not None:
        return
    root = _repo_root()
    chosen = [n.strip() for n in only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        console.print(f"[red]error:[/red] unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
        raise typer.Exit(2)
    failed = []
    for name in chosen:
        script, extra = BENCHMARKS[name]
        console.rule(f"[bold cyan]benchmark: {name}")
        proc = subprocess.run([sys.executable, script, *extra, "--out", str(result_path(name))], cwd=root, check=False)
        if proc.returncode != 0:
            console.print(f"[red]{name} failed with exit {proc.returncode}[/red]; its old result (if any) is kept")
            failed.append(name)
    report(check=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def report(
    check: Annotated[bool, typer.Option(help="Change nothing; exit 1 if a document is out of date.")] = False,
) -> None:
    """Re-render every generated region of README.md and docs/*.md (and docs/benchmarks.png) from the JSON."""
    from adgen.figures.regions import render_documents

    root = _repo_root()
    problems = render_documents(root, write=not check)
    if not check:
        from adgen.bench_report import all_results, plot_overview

        results = {name: root / path for name, path in all_results(root).items()}
        for what in plot_overview(results, root / "docs/data/runs", root / "docs/benchmarks.png"):
            console.print(f"[yellow]not plotted (no result):[/yellow] {what}")
    for problem in problems:
        console.print(f"[red]{problem}[/red]", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print("documents are up to date with their JSON" if check else "documents re-rendered from their JSON")
