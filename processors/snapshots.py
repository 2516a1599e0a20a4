"""Hourly index snapshots: write a versioned, checksummed snapshot of the live index and announce it.

The snapshot records the ad-update offsets and the catalogue it covers, so a worker that starts from it
catches up from exactly where it ends. The notice on `index-snapshots` lets other services (and ops) know
a new version exists; old versions are pruned to `keep`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from pydantic import BaseModel

from adgen.index.snapshot import SnapshotStore
from adgen.processors.ad_indexer import LiveAdIndex

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
        created_at=datetime.now(UTC),
    )


async def snapshot_once(live: LiveAdIndex, store: SnapshotStore, keep: int = 5) -> SnapshotNotice:
    """The timer body: the write runs in a thread (fsync and hashing are I/O)."""
    notice = await asyncio.to_thread(write_snapshot, live, store, keep)
    log.info("index snapshot v%d written to %s (%d ads)", notice.version, notice.path, notice.ads)
    return notice
