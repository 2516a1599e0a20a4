"""`adgen init`: make a fresh volume servable: an index snapshot and a model version in the registry.

Run once before the first worker (docker-compose.yml runs it as the `init` service, on the volume the
workers mount). Every stage is skipped when its output is already there, so a second run, or a restart of
the stack, changes nothing:

    world     paths.world holds a world (manifest.json), or --world DIR, or a seeded synthetic one is generated
    index     paths.index holds a valid snapshot, or `adgen index build --world W --include-deleted`
              (`--collaborative W` for collaborative S-IDs, which configs/demo.yaml's recipe expects)
    model     the registry has a current version, or one is published from --checkpoint DIR, from a training
              run (`adgen train --no-eval` with --train-config F, data and index redirected to the paths above),
              or, only if asked with --untrained, from a random-initialised model (valid, meaningless lists)
    search    with --search: `adgen ci build` into <paths.index>/ci (the worker then serves GET /search)

Each stage is a real `adgen` sub-command in a child process, the same commands an operator would type.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from adgen.core.config import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
ADGEN = str(Path(sys.executable).parent / "adgen")


class InitError(RuntimeError):
    """A stage failed or nothing says where the model should come from."""


def _run(args: list[str], what: str) -> None:
    err.rule(what)
    proc = subprocess.run([ADGEN, *args], env=os.environ.copy(), check=False)
    if proc.returncode != 0:
        raise InitError(f"{what} failed (exit {proc.returncode}): adgen {' '.join(args)}")


def _has_index(settings: Settings) -> bool:
    from adgen.index.snapshot import INDEX_KIND, SnapshotError, SnapshotStore

    try:
        SnapshotStore(settings.paths.index, INDEX_KIND).latest()
    except SnapshotError:
        return False
    return True


def redirected_train_config(base: Path, world: Path, index: Path, out_dir: Path, scratch: Path) -> Path:
    """`base` with its data, index and output pointed at this volume (its `base:` chain kept absolute)."""
    raw = yaml.safe_load(base.read_text()) or {}
    if "base" in raw:
        raw["base"] = str((base.parent / raw["base"]).resolve())
    raw.setdefault("data", {}).update(source="world", path=str(world.resolve()))
    raw.setdefault("sids", {})["index"] = str(index.resolve())
    raw["out_dir"] = str(out_dir.resolve())
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "init_train.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def ensure_world(settings: Settings, world: Path | None, users: int, ads: int, seed: int) -> Path:
    world = world or settings.paths.world
    if (world / "manifest.json").is_file():
        err.print(f"world: reusing {world}")
        return world
    generate = ["world", "generate", "--users", str(users), "--ads", str(ads), "--seed", str(seed)]
    _run([*generate, "--queries", "300", "--out", str(world)], f"world: {users} users, {ads} ads into {world}")
    return world


def ensure_model(
    settings: Settings,
    world: Path | None,
    checkpoint: Path | None,
    train_config: Path | None,
    untrained: bool,
) -> tuple[str, bool]:
    """(current version, whether this run published it)."""
    from adgen.commands.lifecycle import latest_index, publish_checkpoint, registry_of

    registry = registry_of(settings)
    current = registry.current()
    if current is not None:
        err.print(f"model: the registry {registry.root} already serves {current}")
        return current, False
    chosen = [name for name, given in (("--checkpoint", checkpoint), ("--train-config", train_config)) if given]
    chosen += ["--untrained"] if untrained else []
    if len(chosen) != 1:
        raise InitError(
            f"the registry {registry.root} is empty: say where the model comes from with exactly one of "
            f"--checkpoint DIR, --train-config FILE or --untrained (got {chosen or 'none'})"
        )
    if train_config is not None:
        if world is None:
            raise InitError("--train-config needs a world to train on")
        out_dir = settings.paths.runs / "init-train"
        config = redirected_train_config(train_config, world, settings.paths.index, out_dir, settings.paths.runs)
        if not (out_dir / "model" / "config.json").is_file():
            _run(["train", "--config", str(config), "--no-eval"], f"model: training with {train_config}")
        checkpoint = out_dir / "model"
    elif untrained:
        checkpoint = write_untrained(settings)
    assert checkpoint is not None
    return publish_checkpoint(registry, checkpoint, latest_index(settings)), True


def write_untrained(settings: Settings) -> Path:
    """A random-initialised model over the index's S-IDs (marked UNTRAINED): for plumbing, never for results."""
    from adgen.commands.lifecycle import latest_index
    from adgen.index.semantic_ids import sid_vocabulary
    from adgen.processors.generation import write_untrained_checkpoint

    index = latest_index(settings)
    catalogue = index.snapshot.manifest.meta.get("catalogue") or []
    corpus = [d.get("title", "") for d in catalogue] or list(index.sid_map.items())
    directory = settings.paths.models / "untrained"
    err.print(f"[yellow]model: writing an UNTRAINED checkpoint to {directory} (valid but meaningless lists)[/yellow]")
    return write_untrained_checkpoint(directory, sid_vocabulary(index.sid_map.codebook_sizes), corpus * 3)


@app.command()
def init(
    world: Annotated[Path | None, typer.Option(help="World to index and train on (default: paths.world).")] = None,
    users: Annotated[int, typer.Option(help="Users of the synthetic world generated when there is none.")] = 1500,
    ads: Annotated[int, typer.Option(help="Ads of the synthetic world generated when there is none.")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of the generated world.")] = 0,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Publish this trained checkpoint as the first version.")
    ] = None,
    train_config: Annotated[Path | None, typer.Option(help="Train the first version with this config.")] = None,
    untrained: Annotated[bool, typer.Option(help="First version = random init (plumbing only).")] = False,
    search: Annotated[bool, typer.Option(help="Also build the RARE search index (CIs) for GET /search.")] = False,
    index_epochs: Annotated[int, typer.Option(help="RQ-VAE epochs of the index build.")] = 100,
    collaborative: Annotated[
        float, typer.Option(help="Collaborative weight of the index build's S-IDs (0 = text only), as `adgen demo`.")
    ] = 0.0,
    config_file: Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")] = None,
) -> None:
    """Index + model version (+ CI build) into the configured paths; skips what is already there."""
    settings = load_settings(config_file)
    summary: dict[str, Any] = {}
    try:
        needs_world = not _has_index(settings) or train_config is not None or search
        source = ensure_world(settings, world, users, ads, seed) if needs_world else world
        if _has_index(settings):
            err.print(f"index: reusing the newest snapshot in {settings.paths.index}")
        else:
            assert source is not None
            build = ["index", "build", "--world", str(source), "--include-deleted", "--epochs", str(index_epochs)]
            build += ["--collaborative", str(collaborative)] if collaborative > 0 else []
            _run(build, f"index: building from {source}")
        version, published = ensure_model(settings, source, checkpoint, train_config, untrained)
        summary.update(model_version=version, published_now=published)
        if search:
            ci_dir = settings.paths.index / "ci"
            if (ci_dir / "model").is_dir() and (ci_dir / "snapshots").is_dir():
                err.print(f"search: reusing the CI build in {ci_dir}")
            else:
                assert source is not None
                _run(["ci", "build", "--world", str(source), "--out", str(ci_dir)], "search: CI index")
    except (InitError, typer.BadParameter) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    from adgen.commands.lifecycle import latest_index, registry_of

    index = latest_index(settings)
    summary.update(
        index_snapshot=str(index.snapshot.path),
        live_ads=len(index.sid_map),
        registry=str(registry_of(settings).root),
        serve_with={"ADGEN_MODEL__REGISTRY": str(registry_of(settings).root)},
    )
    print(json.dumps(summary))
