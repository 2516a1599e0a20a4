"""`adgen index build|add|remove|stats|report`: the semantic-ID index of the ad catalogue.

Every command that changes the index publishes a new snapshot version (atomic, checksummed) under
`paths.index`; readers (the decoder, the ad_indexer agent) load the newest valid one.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console

from adgen.core.config import Settings, load_settings

if TYPE_CHECKING:  # the heavy modules (torch, the encoder) load inside the commands: `adgen up` stays fast
    from adgen.core.catalogue import Item
    from adgen.index.ad_index import AdIndex
    from adgen.index.snapshot import SnapshotStore
    from adgen.model.encoder import CachedEncoder

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")]
IndexOpt = Annotated[Path | None, typer.Option("--index", help="Snapshot directory (default: paths.index).")]
AMAZON_DEFAULT = Path("/work/shared/datasets/amazon-scientific")


def _store(settings: Settings, index: Path | None) -> SnapshotStore:
    from adgen.index.snapshot import INDEX_KIND, SnapshotStore

    return SnapshotStore(index or settings.paths.index, kind=INDEX_KIND)


def _encoder(settings: Settings, name: str | None) -> CachedEncoder:
    from adgen.model.encoder import CachedEncoder, load_encoder

    return CachedEncoder(
        load_encoder(name or settings.model.encoder, settings.model.device), settings.paths.embedding_cache
    )


def _load_items(
    amazon: Path | None, world: Path | None, jsonl: Path | None, include_deleted: bool = False
) -> tuple[str, list[Item], list[list[str]] | None]:
    """(source, ads, training ad sequences or None): the sequences are every user's ads before their last two
    (the leave-one-out validation and test targets), for collaborative S-IDs; items JSONL has no behaviour."""
    from adgen import datasets
    from adgen.core.catalogue import AD_KINDS, leave_one_out

    chosen = [(n, p) for n, p in (("amazon", amazon), ("world", world), ("jsonl", jsonl)) if p is not None]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one source: --amazon DIR, --world DIR or --jsonl ITEMS")
    kind, path = chosen[0]
    if kind == "jsonl":
        return f"jsonl:{path}", sorted(datasets.load_items_jsonl(path).values(), key=lambda i: i.item_id), None
    dataset = datasets.load_amazon(path) if kind == "amazon" else datasets.load_world(path)
    items = dataset.items if include_deleted else dataset.active_items()
    sequences = [[e.ref for e in ex.history if e.kind in AD_KINDS] for ex in leave_one_out(dataset).valid]
    return f"{kind}:{path}", sorted(items.values(), key=lambda i: i.item_id), sequences


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


@app.command()
def build(
    amazon: Annotated[Path | None, typer.Option(help="Amazon (LC-Rec format) directory.")] = None,
    world: Annotated[Path | None, typer.Option(help="Synthetic world directory.")] = None,
    jsonl: Annotated[Path | None, typer.Option(help="Items JSONL file (adgen.core.catalogue.Item per line).")] = None,
    index: IndexOpt = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder name or local model dir.")] = None,
    levels: Annotated[int, typer.Option(help="RQ-VAE levels M (semantic codes per ad).")] = 3,
    codebook_size: Annotated[int | None, typer.Option(help="Codes per level K (default: sized to catalogue).")] = None,
    epochs: Annotated[int, typer.Option(help="RQ-VAE training epochs.")] = 100,
    collision_size: Annotated[int | None, typer.Option(help="Collision codes (default: 2x largest group).")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Autoencoder steps before k-means (tiny catalogues).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed (default: model.seed).")] = None,
    include_deleted: Annotated[
        bool,
        typer.Option(
            help="Also index ads the world deletes later: training histories mention them, and a worker that"
            " replays ad-updates applies the deletes itself."
        ),
    ] = False,
    collaborative: Annotated[
        float,
        typer.Option(
            help="Weight of the collaborative part of the S-ID embedding (model/collaborative.py; 0 = text only)."
            " Learnt from each user's ads before their last two, so evaluation targets never shape the S-IDs."
        ),
    ] = 0.0,
    config_file: ConfigOpt = None,
) -> None:
    """Catalogue -> ad texts -> embeddings (cached) -> RQ-VAE -> S-IDs -> trie -> new snapshot."""
    import torch

    from adgen.core.ad_text import ad_text
    from adgen.index.ad_index import build_ad_index
    from adgen.index.rqvae import RQVAEConfig
    from adgen.model.collaborative import CollaborativeConfig, catalogue_vectors

    settings = load_settings(config_file)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        source, items, sequences = _load_items(amazon, world, jsonl, include_deleted)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if collaborative > 0 and sequences is None:
        _fail("--collaborative needs behaviour to learn from: use --world or --amazon (an items JSONL has none)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    enc = _encoder(settings, encoder)
    text = enc.encode([ad_text(i) for i in items])
    timings["embed"] = time.perf_counter() - start
    model_seed = settings.model.seed if seed is None else seed
    embeddings, text_map = catalogue_vectors(
        text, [i.item_id for i in items], sequences or [], CollaborativeConfig(weight=collaborative), seed=model_seed
    )
    overrides: dict[str, object] = {
        "warmup_steps": warmup_steps,
        "num_levels": levels,
        "epochs": epochs,
        "seed": model_seed,
    }
    if codebook_size is not None:
        overrides["codebook_size"] = codebook_size
    if text_map is not None:
        overrides.update(text_dim=enc.dim, collaborative_weight=collaborative)
    config = RQVAEConfig.sized_for(len(items), embeddings.shape[1], **overrides)
    model_dir = settings.paths.models / "rqvae" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    try:
        ad_index, report = build_ad_index(
            items,
            embeddings,
            config,
            model_dir,
            collision_size,
            text_map=(text_map.weights, text_map.bias) if text_map is not None else None,
        )
    except ValueError as exc:
        _fail(str(exc))
    start = time.perf_counter()
    ad_index.meta.update(source=source, encoder=enc.name, build=report.model_dump())
    snap = ad_index.snapshot(_store(settings, index))
    timings["snapshot"] = time.perf_counter() - start
    out.print_json(
        json.dumps({"snapshot": str(snap.path), "version": snap.version, **report.model_dump(), "embed_s": timings})
    )


def _open_live(settings: Settings, index: Path | None, encoder: str | None) -> tuple[SnapshotStore, AdIndex]:
    from adgen.index.ad_index import AdIndex

    store = _store(settings, index)
    try:
        return store, AdIndex.load_latest(store, _encoder(settings, encoder) if encoder != "none" else None)
    except (ValueError, RuntimeError) as exc:
        _fail(f"{exc} (build one with `adgen index build`)")
        raise


@app.command()
def add(
    items: Annotated[Path, typer.Argument(help="JSONL file of adgen.core.catalogue.Item objects to add or update.")],
    index: IndexOpt = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder (must match the one the index was built with).")] = None,
    config_file: ConfigOpt = None,
) -> None:
    """Assign S-IDs to new or changed ads with the frozen encoder + RQ-VAE, then publish a snapshot."""
    from adgen.datasets import load_items_jsonl

    settings = load_settings(config_file)
    try:
        new_items = list(load_items_jsonl(items).values())
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    store, live = _open_live(settings, index, encoder)
    built_with = live.meta.get("encoder")
    if built_with and live.encoder is not None and built_with != live.encoder.name:
        _fail(f"index was built with encoder {built_with!r}, not {live.encoder.name!r}; pass the same --encoder")
    try:
        assigned = live.upsert(new_items)
    except ValueError as exc:
        _fail(str(exc))
    snap = live.snapshot(store)
    out.print_json(json.dumps({"version": snap.version, "assigned": {k: list(v) for k, v in assigned.items()}}))


@app.command()
def remove(
    item_ids: Annotated[list[str], typer.Argument(help="Ad ids to delete from the index.")],
    index: IndexOpt = None,
    config_file: ConfigOpt = None,
) -> None:
    """Delete ads from the index and publish a snapshot (their collision codes become free)."""
    settings = load_settings(config_file)
    store, live = _open_live(settings, index, "none")
    unknown = [i for i in item_ids if i not in live.sid_map]
    if unknown:
        _fail(f"not in the index (v{store.latest().version}): {', '.join(unknown)}")
    for item_id in item_ids:
        live.remove(item_id)
    snap = live.snapshot(store)
    out.print_json(json.dumps({"version": snap.version, "removed": item_ids, "items": len(live.sid_map)}))


@app.command()
def stats(index: IndexOpt = None, config_file: ConfigOpt = None) -> None:
    """Size, code usage, collisions and trie memory of the newest valid snapshot."""
    from adgen.index.rqvae import code_usage_metrics
    from adgen.index.sid_trie import trie_nbytes
    from adgen.index.snapshot import LiveSnapshot, read_index_snapshot

    settings = load_settings(config_file)
    store = _store(settings, index)
    live = LiveSnapshot(store)
    try:
        live.refresh()
    except RuntimeError as exc:
        _fail(str(exc))
    if live.current is None:
        why = f": {live.last_error}" if live.last_error else ""
        _fail(f"no valid snapshot under {store.root}{why}; run `adgen index build`")
    restored = read_index_snapshot(live.current)
    sids, _ = restored.sid_map.to_arrays()
    sizes = restored.sid_map.codebook_sizes
    util, perp, collision = code_usage_metrics(sids[:, :-1], max(sizes[:-1]))
    trie_bytes = trie_nbytes(restored.trie)
    manifest = live.current.manifest
    out.print_json(
        json.dumps(
            {
                "snapshot": str(live.current.path),
                "version": manifest.version,
                "created_at": manifest.created_at.isoformat(),
                "model_version": manifest.model_version,
                "refused_newer": live.last_error,
                "items": len(sids),
                "codebook_sizes": list(sizes),
                "utilisation": util,
                "perplexity": perp,
                "collision_rate_before_extra_code": collision,
                "max_collision_code": int(sids[:, -1].max()) if len(sids) else 0,
                "trie_nodes": restored.trie.num_nodes,
                "trie_bytes": trie_bytes,
                "trie_bytes_per_ad": trie_bytes / max(len(sids), 1),
                "snapshot_bytes": sum(f.bytes for f in manifest.files.values()),
                "source": manifest.meta.get("source"),
            }
        )
    )


@app.command()
def report(
    amazon: Annotated[Path, typer.Option(help="Amazon directory the index was built from.")] = AMAZON_DEFAULT,
    index: IndexOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where report.json and report.png go.")] = Path(
        "var/runs/index-report"
    ),
    samples: Annotated[int, typer.Option(help="Ads sampled for the neighbour check.")] = 1000,
    encoder: Annotated[str | None, typer.Option(help="Encoder the index was built with.")] = None,
    config_file: ConfigOpt = None,
) -> None:
    """Quality report (JSON + PNG) of the index on the real Amazon data: code usage, Table 3, coherence."""
    from adgen.core.ad_text import ad_text, meaningful_categories
    from adgen.datasets import load_amazon
    from adgen.index.quality import plot_report, quality_report

    settings = load_settings(config_file)
    store, live = _open_live(settings, index, "none")
    items = load_amazon(amazon).items
    missing = [i for i in live.sid_map.items() if i not in items]
    if missing:
        _fail(f"{len(missing)} indexed ads (e.g. {missing[0]!r}) are not in {amazon}; use the source it was built from")
    ids = [i for i in live.sid_map.items() if meaningful_categories(items[i])]
    enc = _encoder(settings, encoder)
    embeddings = enc.encode([ad_text(items[i]) for i in ids])
    sids = np.array([live.sid_map.sid_of(i) for i in ids])
    cats = {i: meaningful_categories(items[i]) for i in ids}
    levels = {
        "first-level": [cats[i][0] for i in ids],
        "second-level": [" > ".join(cats[i][:2]) for i in ids],
    }
    result = quality_report(embeddings, sids, live.sid_map.codebook_sizes, levels, samples=samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(
        json.dumps({"snapshot_version": store.latest().version, **result.model_dump()}, indent=1)
    )
    plot_report(result, out_dir / "report.png")
    out.print_json(result.model_dump_json())
    err.print(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.png'}")
