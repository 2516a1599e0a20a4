"""The ad index end to end: catalogue -> ad text -> embeddings -> RQ-VAE codes -> S-IDs -> trie -> snapshot.

`build_ad_index` trains the RQ-VAE once per catalogue; afterwards `AdIndex` assigns S-IDs to new or
changed ads with the frozen encoder + RQ-VAE and the next free collision code, never retraining. This is
the API the `ad_indexer` agent and the `adgen index` commands share.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from threadpoolctl import ThreadpoolController

from adgen.core.ad_text import TextEncoder, ad_text
from adgen.core.catalogue import Item
from adgen.index.rqvae import RQVAE, RQVAEConfig, code_usage_metrics, load_rqvae, save_rqvae, train_rqvae
from adgen.index.semantic_ids import SemanticIdMap
from adgen.index.snapshot import (
    IndexSnapshot,
    Snapshot,
    SnapshotStore,
    read_index_snapshot,
    read_model_files,
    write_index_snapshot,
)

log = logging.getLogger(__name__)
_blas_limited = False


def one_blas_thread() -> None:
    """Put numpy's BLAS on one thread for the rest of the process (first call only; idempotent).

    Live upserts code ~100 ads at a time with the frozen RQ-VAE (numpy matmuls). At that size OpenBLAS
    hands the work to its thread pool, and on a busy 2-core machine the hand-off dominates: 100 ads took
    2.0 s with the default 2 threads against 1.8 ms with one (measured while other jobs held the cores).
    Changing the limit per call is no way out: OpenBLAS rebuilds its pool each time (~17 ms). Offline
    builds (`build_ad_index`) do not call this and keep every thread for their million-row batches.
    """
    global _blas_limited
    if not _blas_limited:
        ThreadpoolController().select(user_api="blas").limit(limits=1)
        _blas_limited = True
        log.info("numpy BLAS limited to one thread for live RQ-VAE coding")


class IndexBuildError(ValueError):
    """A catalogue that cannot be indexed as asked (empty, or collisions beyond the collision level)."""


class BuildReport(BaseModel):
    """What a build did and how good the codes are; written as JSON next to the model."""

    items: int
    model_version: str
    codebook_sizes: list[int]
    utilisation: list[float]
    perplexity: list[float]
    collision_rate: float = Field(description="1 - distinct semantic code tuples / items, before the extra code")
    max_collisions: int = Field(description="largest number of ads sharing one semantic code tuple")
    seconds: dict[str, float]


def collision_level_size(codes: np.ndarray, requested: int | None) -> int:
    """The collision level: `requested`, or room for twice the largest group (power of two, >= 16).

    Headroom matters because new ads land next to similar old ones; an explicit size that is too small
    for the catalogue is an error here rather than a failure halfway through indexing.
    """
    _, counts = np.unique(codes, axis=0, return_counts=True)
    largest = int(counts.max())
    if requested is None:
        return max(16, 1 << (2 * largest - 1).bit_length())
    if requested < largest:
        raise IndexBuildError(
            f"collision level of {requested} codes is too small: {largest} ads share one semantic code tuple; "
            f"use --collision-size >= {largest} (or larger codebooks)"
        )
    return requested


@dataclass
class AdIndex:
    """The live index: S-ID map + frozen RQ-VAE (+ encoder for raw ads)."""

    sid_map: SemanticIdMap
    rqvae: RQVAE
    model_version: str
    model_files: dict[str, bytes]  # the frozen RQ-VAE's safetensors + JSON, re-published with every snapshot
    encoder: TextEncoder | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def codes_for(self, items: Sequence[Item]) -> np.ndarray:
        if self.encoder is None:
            raise IndexBuildError("this index has no text encoder; pass one to encode new ads")
        vecs = self.encoder.encode([ad_text(i) for i in items], progress=len(items) > 256)
        one_blas_thread()
        return self.rqvae.codes(self.rqvae.input_from_text(vecs))

    def add_codes(self, item_id: str, codes: Sequence[int]) -> tuple[int, ...]:
        return self.sid_map.add(item_id, codes)

    def add_embedding(self, item_id: str, embedding: np.ndarray) -> tuple[int, ...]:
        """Insert an ad whose embedding is already known (frozen RQ-VAE, next free collision code)."""
        return self.sid_map.add(item_id, self.rqvae.codes(embedding[None, :])[0].tolist())

    def upsert(self, items: Sequence[Item]) -> dict[str, tuple[int, ...]]:
        """Insert new ads and re-code changed ones; an ad whose semantic codes did not change keeps its S-ID."""
        out: dict[str, tuple[int, ...]] = {}
        for item, codes in zip(items, self.codes_for(items), strict=True):
            semantic = tuple(int(c) for c in codes)
            if item.item_id in self.sid_map:
                current = self.sid_map.sid_of(item.item_id)
                if current[:-1] == semantic:
                    out[item.item_id] = current
                    continue
                self.sid_map.remove(item.item_id)
            out[item.item_id] = self.sid_map.add(item.item_id, semantic)
        return out

    def remove(self, item_id: str) -> None:
        self.sid_map.remove(item_id)

    def snapshot(self, store: SnapshotStore, **meta: Any) -> Snapshot:
        return write_index_snapshot(store, self.sid_map, self.model_files, self.model_version, {**self.meta, **meta})

    @classmethod
    def from_snapshot(cls, restored: IndexSnapshot, encoder: TextEncoder | None = None) -> AdIndex:
        rqvae, version = load_rqvae(restored.model_dir)
        if version != restored.snapshot.manifest.model_version:
            raise IndexBuildError(
                f"snapshot v{restored.snapshot.version} names model {restored.snapshot.manifest.model_version} "
                f"but carries model {version}"
            )
        meta = dict(restored.snapshot.manifest.meta)
        return cls(restored.sid_map, rqvae, version, read_model_files(restored.model_dir), encoder, meta)

    @classmethod
    def load_latest(cls, store: SnapshotStore, encoder: TextEncoder | None = None) -> AdIndex:
        return cls.from_snapshot(read_index_snapshot(store.latest()), encoder)


def build_ad_index(
    items: Sequence[Item],
    embeddings: np.ndarray,
    config: RQVAEConfig,
    model_dir: Path,
    collision_size: int | None = None,
    progress: bool = True,
    text_map: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[AdIndex, BuildReport]:
    """Train the RQ-VAE on the catalogue's embeddings and index every ad. Deterministic for a seed.

    `text_map` (weights, bias) is the text -> collaborative map for embeddings built by
    `model.collaborative.catalogue_vectors`; it is saved inside the RQ-VAE so live ads get coded the same way.
    """
    if not items:
        raise IndexBuildError("the catalogue is empty: nothing to index")
    if len(items) != len(embeddings):
        raise IndexBuildError(f"{len(items)} items but {len(embeddings)} embeddings")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, _ = train_rqvae(embeddings, config, metrics_path=model_dir / "rqvae_metrics.json", progress=progress)
    if text_map is not None:
        model.set_text_map(*text_map)
    version = save_rqvae(model, model_dir)
    timings["train_rqvae"] = time.perf_counter() - start
    start = time.perf_counter()
    codes = model.codes(embeddings)
    size = collision_level_size(codes, collision_size)
    sizes = (config.codebook_size,) * config.num_levels + (size,)
    sid_map = SemanticIdMap.build([i.item_id for i in items], codes, sizes)
    sid_map.trie_arrays(0)
    timings["assign_and_trie"] = time.perf_counter() - start
    util, perp, collision = code_usage_metrics(codes, config.codebook_size)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    report = BuildReport(
        items=len(items),
        model_version=version,
        codebook_sizes=list(sizes),
        utilisation=util,
        perplexity=perp,
        collision_rate=collision,
        max_collisions=int(counts.max()),
        seconds=timings,
    )
    (model_dir / "build_report.json").write_text(json.dumps(report.model_dump(), indent=1))
    ad_index = AdIndex(sid_map, model, version, read_model_files(model_dir), meta={"items_at_build": len(items)})
    return ad_index, report
