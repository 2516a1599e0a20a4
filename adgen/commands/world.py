"""`adgen world ...`: generate and check synthetic ad worlds (format: docs/data-formats.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from tqdm import tqdm

from adgen.core.config import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console(stderr=True)


@app.command()
def generate(
    users: Annotated[int, typer.Option(help="Number of users (streamed; memory does not grow with it).")] = 1000,
    ads: Annotated[int, typer.Option(help="Number of initial ads (plus a share added during the window).")] = 500,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: settings paths.world).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed and options give byte-identical files.")] = 0,
    days: Annotated[int, typer.Option(help="Length of the event window in days.")] = 60,
    content: Annotated[int | None, typer.Option(help="Content items (default max(200, ads // 2)).")] = None,
    queries: Annotated[int, typer.Option(help="Labelled search queries.")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="Replace a world already in OUT.")] = False,
    workers: Annotated[int, typer.Option(help="Processes simulating user shards (same files for any value).")] = 1,
) -> None:
    """Generate a seeded synthetic ad world with a progress bar; prints the manifest counts and the rate."""
    from adgen.world import WorldConfig, generate_world  # imported here: keeps every other `adgen` command fast

    out = out if out is not None else load_settings().paths.world
    config = WorldConfig(users=users, ads=ads, seed=seed, days=days, content=content, queries=queries)
    started = time.perf_counter()
    with tqdm(total=users, unit="user", desc="users", mininterval=0.5) as bar:
        done = [0]

        def advance(n: int) -> None:
            bar.update(n - done[0])
            done[0] = n

        try:
            manifest = generate_world(config, out, overwrite=overwrite, on_user=advance, workers=workers)
        except (FileExistsError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out),
        "seconds": round(seconds, 2),
        "users_per_second": round(users / seconds, 1),
        "workers": workers,
        "counts": manifest["counts"],
    }
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


@app.command()
def validate(directory: Annotated[Path, typer.Argument(help="World directory.")]) -> None:
    """Check every line against the event contracts, the time order and the manifest counts."""
    from adgen.world.validate import WorldValidationError, validate_world

    try:
        report = validate_world(directory)
    except WorldValidationError as exc:
        console.print(f"[red]invalid world:[/red] {exc}")
        raise typer.Exit(1) from exc
    typer.echo(report.model_dump_json(indent=2))
