"""Hourly index snapshots (the `Snapshots` component): versioned, checksummed snapshots of the live index
(and of the CI index with new ads' CIs) and a notice announcing them.

The snapshot records the ad-update offsets and the catalogue it covers, so a worker that starts from it
catches up from exactly where it ends. The notice on `index-snapshots` lets other services (and ops) know
a new version exists; old versions are pruned to `keep`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import Protocol

from faust.types import TopicT
from pydantic import BaseModel

from adgen.core.clock import utc_now
from adgen.index.snapshot import SnapshotError, SnapshotStore
from adgen.processors.ad_indexer import LiveAdIndex
from adgen.processors.gc_policy import freeze_long_lived
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.worker_parts import Component, Readiness
from adgen.search.ci_index import CIError

log = logging.getLogger(__name__)


class SnapshotNotice(BaseModel):
    """The message on the index-snapshots topic (key: the index kind)."""

    schema_version: int = 1
    kind: str
    version: int
    path: str
    model_version: str
    index_version: str
    ads: int
    ad_updates_offsets: dict[str, int]
    checksums: dict[str, str]
    created_at: datetime


def write_snapshot(live: LiveAdIndex, store: SnapshotStore, keep: int = 5) -> SnapshotNotice:
    """Write (atomically, via the index's snapshot store) and describe one snapshot; prune old ones."""
    snap = live.snapshot(store)
    store.prune(keep)
    manifest = snap.manifest
    return SnapshotNotice(
        kind=store.kind,
        version=snap.version,
        path=str(snap.path),
        model_version=manifest.model_version,
        index_version=live.view.version,
        ads=len(live.ad_index.sid_map),
        ad_updates_offsets=manifest.meta.get("ad_updates_offsets", {}),
        checksums={name: entry.sha256 for name, entry in manifest.files.items()},
        created_at=utc_now(),
    )


async def snapshot_once(live: LiveAdIndex, store: SnapshotStore, keep: int = 5) -> SnapshotNotice:
    """The timer body: the write runs in a thread (fsync and hashing are I/O)."""
    notice = await asyncio.to_thread(write_snapshot, live, store, keep)
    log.info("index snapshot v%d written to %s (%d ads)", notice.version, notice.path, notice.ads)
    return notice


class CISnapshots(Protocol):
    """The search path's part of a snapshot (`QueryRetrieval.save_snapshot`)."""

    def save_snapshot(self) -> Path: ...


class Snapshots(Component):
    """Every `interval_s` (once the index has caught up): the CI index (if the search path runs), then the
    S-ID index with the ad-update offsets it covers, both under the index lock, then a notice on
    `index-snapshots`.

    The CI snapshot is written first: the S-ID snapshot's offsets say where a restarted worker resumes, so
    they must never pass CIs that are not on disk yet (a failed CI snapshot skips the S-ID one). A failure
    (disk full, unwritable) is logged and retried at the next tick; it never stops the worker.
    """

    def __init__(
        self,
        interval_s: float,
        live: LiveAdIndex,
        store: SnapshotStore,
        notices: TopicT,
        metrics: WorkerMetrics,
        readiness: Readiness,
        index_lock: asyncio.Lock,
        ci: CISnapshots | None = None,
        keep: int = 5,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.live = live
        self.store = store
        self.notices = notices
        self.metrics = metrics
        self.readiness = readiness
        self.index_lock = index_lock
        self.ci = ci
        self.keep = keep

    @Component.task
    async def _every_interval(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval_s)
            if not self.should_stop and self.readiness.is_set(Readiness.INDEX_CAUGHT_UP):
                await self.snapshot()

    async def snapshot(self) -> SnapshotNotice | None:
        """One snapshot (CI, then S-ID) and its notice; None when it failed (logged)."""
        try:
            async with self.index_lock:  # never between an ad batch's apply and its Redis write
                if self.ci is not None:
                    path = await asyncio.to_thread(self.ci.save_snapshot)
                    log.info("CI index snapshot written to %s", path)
                notice = await snapshot_once(self.live, self.store, self.keep)
        except (SnapshotError, CIError, OSError) as exc:
            log.error("index snapshot failed; still serving, retrying at the next tick: %s", exc)
            return None
        self.metrics.snapshots.inc()
        freeze_long_lived(collect=False)  # the ads indexed since the last one are long-lived too (gc_policy)
        await self.notices.send(key=notice.kind.encode(), value=notice.model_dump_json().encode())
        return notice
