"""`adgen retrain` (daily retraining from what the system stored) and `adgen model list|publish|use|rollback`.

The registry is `model.registry` (default `<paths.models>/registry`); workers started with
`ADGEN_MODEL__REGISTRY` serve its current version and swap in whatever it points to next. `--kind ci` picks
the search path's CI model registry instead: `model.ci_registry` (default `<paths.models>/ci-registry`),
followed by workers started with `ADGEN_MODEL__CI_REGISTRY`.

    adgen retrain                      # once: stored windows + live index -> gated candidate -> maybe v000N
    adgen retrain --every 24h          # in the foreground, on a schedule (or cron: docs/operations.md)
    adgen model list                   # versions, gates, scores; * = served
    adgen model rollback               # serve the previous version again
    adgen model publish --kind ci var/index/ci/model   # a CI model (checked against the newest CI snapshot)
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adgen.core.config import Settings, load_settings

if TYPE_CHECKING:
    from adgen.index.snapshot import IndexSnapshot
    from adgen.model.registry import ModelRegistry

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
model_app = typer.Typer(no_args_is_help=True, add_completion=False, help="The model registry: versions workers serve.")
app.add_typer(model_app, name="model")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")]


class ModelKind(StrEnum):
    """Which registry an `adgen model` command acts on."""

    leadre = "leadre"
    ci = "ci"


KindOpt = Annotated[
    ModelKind,
    typer.Option(
        "--kind", help="Which registry: the LEADRE model's (model.registry) or the CI model's (model.ci_registry)."
    ),
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '24h', '1d' -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 24h or 1d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def registry_of(settings: Settings, kind: ModelKind = ModelKind.leadre) -> ModelRegistry:
    from adgen.model.registry import ModelRegistry

    if kind is ModelKind.ci:
        return ModelRegistry(settings.model.ci_registry or settings.paths.models / "ci-registry")
    return ModelRegistry(settings.model.registry or settings.paths.models / "registry")


def latest_index(settings: Settings) -> IndexSnapshot:
    from adgen.index.snapshot import INDEX_KIND, SnapshotError, SnapshotStore, read_index_snapshot

    try:
        return read_index_snapshot(SnapshotStore(settings.paths.index, INDEX_KIND).latest())
    except SnapshotError as exc:
        raise typer.BadParameter(f"{exc}; build the index first (`adgen index build`)") from exc


def index_info(index: IndexSnapshot) -> dict[str, Any]:
    return {
        "rqvae_version": index.snapshot.manifest.model_version,
        "codebook_sizes": list(index.sid_map.codebook_sizes),
        "snapshot_version": index.snapshot.version,
        "live_ads": len(index.sid_map),
    }


def publish_checkpoint(
    registry: ModelRegistry, checkpoint: Path, index: IndexSnapshot, make_current: bool = True
) -> str:
    """Import an existing checkpoint (e.g. from `adgen train`) as the next version, after checking that its
    tokenizer holds the index's S-ID vocabulary; returns the version name."""
    from adgen.index.semantic_ids import sid_vocabulary
    from adgen.model.checkpoint_layout import CheckpointLayout
    from adgen.model.recipe import ServingRecipe, load_recipe
    from adgen.model.registry import INDEX_ADS_FILE
    from adgen.model.tokenizer import load_tokenizer, token_offset

    layout = CheckpointLayout.of(checkpoint)
    if not (layout.lm_dir / "config.json").is_file():
        raise typer.BadParameter(f"no model in {checkpoint}: expected config.json + model.safetensors (or lm/)")
    try:
        token_offset(load_tokenizer(layout.tokenizer_dir), sid_vocabulary(index.sid_map.codebook_sizes))
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(f"{checkpoint} does not fit the index in {index.snapshot.path}: {exc}") from exc
    recipe = load_recipe(layout.recipe_dir) if layout.recipe_dir is not None else ServingRecipe()
    record = registry.publish(
        checkpoint,
        {
            "source": str(Path(checkpoint).resolve()),
            "recipe": recipe.model_dump(mode="json"),
            "index": index_info(index),
            "data": {"untrained": (Path(checkpoint) / "UNTRAINED").is_file()},
        },
        make_current=make_current,
        extra={INDEX_ADS_FILE: "\n".join(sorted(index.sid_map.items())) + "\n"},
    )
    return record.version


def publish_ci_model(registry: ModelRegistry, model_dir: Path, settings: Settings, make_current: bool = True) -> str:
    """Import a CI model directory (`adgen ci build` writes one under <build>/model) as the next CI version,
    after checking it loads and represents the CI set of the newest CI snapshot under <paths.index>/ci, when
    there is one; returns the version name. The version records its tokenizer fingerprint and that CI set."""
    from adgen.search.ci_index import CIError, load_latest_snapshot
    from adgen.search.ci_model import CIModel, CIModelError

    try:
        model = CIModel.load(model_dir)
    except (CIModelError, OSError, ValueError) as exc:
        raise typer.BadParameter(f"no loadable CI model in {model_dir}: {exc}") from exc
    data: dict[str, Any] = {"tokenizer_fingerprint": model.fingerprint()}
    snapshots = settings.paths.index / "ci" / "snapshots"
    if snapshots.is_dir():
        try:
            snapshot = load_latest_snapshot(snapshots)
            model.checked_ci_sequences(snapshot.ci_set)
        except (CIError, CIModelError) as exc:
            raise typer.BadParameter(f"{model_dir} cannot serve the CI set under {snapshots}: {exc}") from exc
        data.update(ci_version=snapshot.manifest.version, num_cis=len(snapshot.ci_set.texts))
    record = registry.publish(
        model_dir, {"kind": "ci", "source": str(Path(model_dir).resolve()), "data": data}, make_current=make_current
    )
    return record.version


def run_retrain(settings: Settings, config: Any, work_dir: Path | None = None) -> dict[str, Any]:
    """One retraining run end to end (see model/retrain.py); returns the report (also kept by the registry)."""
    from adgen.core.catalogue import Item
    from adgen.model.registry import INDEX_ADS_FILE, IndexRef
    from adgen.model.retrain import retrain
    from adgen.processors.stored_windows import read_stored_windows

    registry = registry_of(settings)
    index = latest_index(settings)
    if registry.current() is None:
        if settings.model.checkpoint is None:
            raise typer.BadParameter(
                f"the registry {registry.root} is empty and model.checkpoint is unset: nothing to warm-start from"
            )
        first = publish_checkpoint(registry, settings.model.checkpoint, index)
        err.print(f"imported the serving checkpoint {settings.model.checkpoint} as {first}")
    parent = registry.current()
    assert parent is not None
    parent_info = registry.info(parent)
    if parent_info.index is not None and parent_info.index.rqvae_version != index.snapshot.manifest.model_version:
        raise typer.BadParameter(
            f"{parent} was trained against the RQ-VAE {parent_info.index.rqvae_version} but the live index uses "
            f"{index.snapshot.manifest.model_version}: train a new model (`adgen train`), then `adgen model publish`"
        )
    serving = registry.verify(parent)
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="adgen-retrain-"))
    try:
        started = datetime.now(UTC)
        windows = read_stored_windows(settings, scratch / "stored")
        histories = {u: w.to_history() for u, w in windows.items()}
        meta_items = index.snapshot.manifest.meta.get("catalogue") or []
        catalogue = {d["item_id"]: Item.model_validate(d) for d in meta_items}
        result = retrain(serving, histories, index.sid_map, catalogue, scratch / "run", config)
        previous_ads = registry.index_ads(parent)
        live_ads = set(index.sid_map.items())
        data = {
            **result.data,
            "new_live_ads_since_parent": len(live_ads - previous_ads) if previous_ads is not None else None,
            "catalogue_entries": len(catalogue),
            "source": "user-windows-changelog + newest index snapshot",
        }
        report: dict[str, Any] = {
            "parent": parent,
            "started_at": started.isoformat(),
            "gate": result.gate.model_dump(),
            "scores": result.scores,
            "data": data,
            "seconds": result.seconds,
            "config": config.model_dump(),
        }
        if result.gate.passed:
            record = registry.publish(
                result.candidate_dir,
                {
                    "parent": parent,
                    "source": "retrain",
                    "gate": result.gate,
                    "scores": result.scores,
                    "data": data,
                    "recipe": result.recipe,
                    "index": IndexRef(**index_info(index)),
                },
                extra={INDEX_ADS_FILE: "\n".join(sorted(live_ads)) + "\n"},
            )
            report["published"] = record.version
        else:
            report["published"] = None
            report["rejected_report"] = str(registry.reject(report))
        return report
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


@app.command()
def retrain(
    every: Annotated[str | None, typer.Option(help="Run on this schedule (e.g. 24h) instead of once.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs over the stored samples (warm start).")] = 2,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    margin: Annotated[
        float, typer.Option(help="Publish only if candidate >= parent + margin on the gate metric.")
    ] = 0.0,
    metric: Annotated[str, typer.Option(help="Gate metric on the hold-out.")] = "ndcg@10",
    eval_users: Annotated[int, typer.Option(help="Hold-out users scored (seeded sample).")] = 500,
    min_ads: Annotated[int, typer.Option(help="Ad interactions a user needs to give a hold-out target.")] = 3,
    torch_threads: Annotated[int, typer.Option(help="Training threads.")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    work_dir: Annotated[Path | None, typer.Option(help="Keep the run's files here (default: a temp dir).")] = None,
    config_file: ConfigOpt = None,
) -> None:
    """Retrain the served model from the stored windows and the live index; publish it if the gate passes."""
    from adgen.model.retrain import RetrainConfig, RetrainError

    settings = load_settings(config_file)
    config = RetrainConfig(
        epochs=epochs,
        lr=lr,
        margin=margin,
        metric=metric,
        eval_users=eval_users,
        min_ads=min_ads,
        torch_threads=torch_threads,
        seed=seed,
    )
    period = parse_duration(every) if every else None
    while True:
        started = time.monotonic()
        try:
            report = run_retrain(settings, config, work_dir)
            out.print_json(json.dumps(report, default=str))
        except (RetrainError, typer.BadParameter) as exc:
            err.print(f"[red]error:[/red] {exc}")
            if period is None:
                raise typer.Exit(code=2) from exc
        if period is None:
            return
        pause = max(0.0, period - (time.monotonic() - started))
        err.print(f"next retraining in {pause:.0f}s")
        time.sleep(pause)


@model_app.command("list")
def list_versions(kind: KindOpt = ModelKind.leadre, config_file: ConfigOpt = None) -> None:
    """Every version: when, from what, its gate and scores (a CI model: its tokenizer and CI set); * marks the
    one workers serve."""
    settings = load_settings(config_file)
    registry = registry_of(settings, kind)
    current = registry.current()
    table = Table(title=f"{'CI ' if kind is ModelKind.ci else ''}model registry {registry.root}")
    details = ("tokenizer", "CI set") if kind is ModelKind.ci else ("gate", "parent score", "candidate score")
    for column in ("", "version", "created", "parent", "source", *details):
        table.add_column(column)
    for version in registry.versions():
        info = registry.info(version)
        gate = info.gate
        if kind is ModelKind.ci:
            cis = info.data.get("num_cis")
            row = (str(info.data.get("tokenizer_fingerprint", "-")), f"{info.data.get('ci_version')} ({cis} CIs)")
        else:
            row = (
                ("passed" if gate.passed else "refused") + f" ({gate.metric})" if gate else "-",
                f"{gate.parent:.4f}" if gate and gate.parent is not None else "-",
                f"{gate.candidate:.4f}" if gate and gate.candidate is not None else "-",
            )
        table.add_row(
            "*" if version == current else "",
            version,
            f"{info.created_at:%Y-%m-%d %H:%M}",
            info.parent or "-",
            info.source if len(info.source) < 40 else "…" + info.source[-39:],
            *row,
        )
    out.print(table)


@model_app.command("publish")
def publish(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint dir (from `adgen train`: <out_dir>/model; --kind ci: <ci build>/model).")
    ],
    no_current: Annotated[bool, typer.Option("--no-current", help="Publish without serving it yet.")] = False,
    kind: KindOpt = ModelKind.leadre,
    config_file: ConfigOpt = None,
) -> None:
    """Import a trained checkpoint as the next version (checked against the newest index snapshot, or for a CI
    model the newest CI snapshot)."""
    settings = load_settings(config_file)
    registry = registry_of(settings, kind)
    try:
        if kind is ModelKind.ci:
            version = publish_ci_model(registry, checkpoint, settings, not no_current)
        else:
            version = publish_checkpoint(registry, checkpoint, latest_index(settings), not no_current)
    except typer.BadParameter as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    out.print(json.dumps({"published": version, "current": not no_current}))


def _point(action: str, settings: Settings, kind: ModelKind, version: str | None = None) -> None:
    from adgen.model.registry import RegistryError

    registry = registry_of(settings, kind)
    try:
        pointer = registry.rollback() if version is None else registry.use(version)
    except RegistryError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    out.print(json.dumps({action: pointer.version, "history": pointer.history}))


@model_app.command("use")
def use(
    version: Annotated[str, typer.Argument(help="Version to serve, e.g. v0003.")],
    kind: KindOpt = ModelKind.leadre,
    config_file: ConfigOpt = None,
) -> None:
    """Serve VERSION (verified first); running workers swap to it at their next check."""
    _point("serving", load_settings(config_file), kind, version)


@model_app.command("rollback")
def rollback(kind: KindOpt = ModelKind.leadre, config_file: ConfigOpt = None) -> None:
    """Serve the version served before the current one; running workers swap back at their next check."""
    _point("serving", load_settings(config_file), kind)
