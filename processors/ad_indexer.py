"""Live ad index: ad upserts and deletes -> incremental S-IDs (frozen RQ-VAE) -> trie, as immutable views.

The worker component that feeds it from the ad-updates topic is `AdIndexer` (processors/ad_updates.py);
this module is the index itself: apply a batch, read the current view, write a snapshot.

Generation decodes against one immutable `IndexView` per index version: a batch of ad updates builds a
new view and swaps it in with one reference assignment, so a decode never sees half an update, and from
the moment a delete is applied no view contains the deleted ad. Building a view costs what the batch
changed, not the catalogue: the trie and leaf lookups come from `LiveSidIndex` (index/live_index.py), the
catalogue and S-ID maps are persistent `immutables.Map`s that share all but the changed entries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import immutables

from adgen.core.ad_text import ad_text, meaningful_categories
from adgen.core.catalogue import Item
from adgen.datasets import item_from_upsert
from adgen.index.ad_index import AdIndex
from adgen.index.live_index import LeafItems, LiveSidIndex
from adgen.index.semantic_ids import sid_vocabulary
from adgen.index.snapshot import Snapshot, SnapshotStore
from adgen.index.trie_arrays import TrieArrays
from adgen.processors.feature_store import AdRecord
from adgen.processors.window_state import AdInfo
from adgen.streams.events import AdDelete, AdUpsert

log = logging.getLogger(__name__)

AdUpdate = AdUpsert | AdDelete


@dataclass(frozen=True)
class IndexView:
    """One consistent index version: the trie the decoder reads and what its leaves mean."""

    version: str
    trie: TrieArrays | None  # None when no ad is live
    leaf_items: LeafItems | Sequence[str]  # leaf value -> ad id; len / `in` = live ads
    sids: Mapping[str, tuple[int, ...]]  # every ad ever seen, deleted ones included (old behaviour in prompts)
    items: Mapping[str, Item]
    live: Set[str]
    watermark: datetime | None  # newest ad-update event time applied


@dataclass
class LiveAdIndex:
    """The index the worker mutates (under a lock) and the immutable view generation reads."""

    ad_index: AdIndex
    token_offset: int
    items: immutables.Map[str, Item] = field(default_factory=immutables.Map)  # a dict given is converted
    offsets: dict[int, int] = field(default_factory=dict)  # ad-updates partition -> next offset to read
    watermark: datetime | None = None
    snapshot_version: int | None = None
    last_update: dict[str, tuple[float, str]] = field(default_factory=dict)  # ad -> (event time, id) applied
    _known_sids: immutables.Map[str, tuple[int, ...]] = field(default_factory=immutables.Map)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    view: IndexView = field(init=False)
    _sid_index: LiveSidIndex = field(init=False)

    def __post_init__(self) -> None:
        sid_map = self.ad_index.sid_map
        self.items = self.items if isinstance(self.items, immutables.Map) else immutables.Map(self.items)
        self._known_sids = immutables.Map(self._known_sids).update({a: sid_map.sid_of(a) for a in sid_map.items()})
        self._sid_index = LiveSidIndex(sid_map, self.token_offset)
        self.view = self._make_view()

    @property
    def sid_vocabulary(self) -> list[str]:
        return sid_vocabulary(self.ad_index.sid_map.codebook_sizes)

    def _make_view(self) -> IndexView:
        published = self._sid_index.publish()  # O(changes since the last view)
        return IndexView(
            version=f"{self.ad_index.model_version[:12]}.{published.map_version}",
            trie=published.trie,
            leaf_items=published.leaf_items,
            sids=self._known_sids,
            items=self.items,
            live=published.leaf_items.live,
            watermark=self.watermark,
        )

    def ad_info(self, ad_id: str) -> AdInfo | None:
        item = self.items.get(ad_id)
        if item is None:
            return None
        cats = meaningful_categories(item)
        return AdInfo(title=item.title, category=cats[0] if cats else "")

    def apply(self, events: Sequence[AdUpdate]) -> list[AdRecord]:
        """Apply a batch (any order, replays allowed: the newest event per ad by event time wins)."""
        newest: dict[str, AdUpdate] = {}
        for event in events:
            key = (event.event_time.timestamp(), event.event_id)
            seen = newest.get(event.ad_id)
            if key > self.last_update.get(event.ad_id, (float("-inf"), "")) and (
                seen is None or key > (seen.event_time.timestamp(), seen.event_id)
            ):
                newest[event.ad_id] = event
        if not newest:
            return []
        with self._lock:
            records = self._apply_locked(list(newest.values()))
            self.view = self._make_view()
        return records

    def _apply_locked(self, events: list[AdUpdate]) -> list[AdRecord]:
        sid_map = self.ad_index.sid_map
        to_code: list[Item] = []
        for event in events:
            self.last_update[event.ad_id] = (event.event_time.timestamp(), event.event_id)
            self.watermark = max(self.watermark or event.event_time, event.event_time)
            if isinstance(event, AdUpsert):
                item, old = item_from_upsert(event), self.items.get(event.ad_id)
                self.items = self.items.set(event.ad_id, item)
                if event.status == "active":
                    # re-encode only new or changed ads; the encoder's disk cache makes repeats cheap
                    if event.ad_id not in sid_map or old is None or ad_text(old) != ad_text(item):
                        to_code.append(item)
                    continue
            if event.ad_id in sid_map:  # deleted or paused: out of the trie from this version on
                sid_map.remove(event.ad_id)
        if to_code:
            self._known_sids = self._known_sids.update(self.ad_index.upsert(to_code))
        version = f"{self.ad_index.model_version[:12]}.{sid_map.version}"
        return [self._record(e, version) for e in events]

    def _record(self, event: AdUpdate, index_version: str) -> AdRecord:
        if isinstance(event, AdDelete):
            return AdRecord(
                ad_id=event.ad_id, status="deleted", index_version=index_version, event_time=event.event_time
            )
        item = self.items[event.ad_id]
        cats = meaningful_categories(item)
        return AdRecord(
            ad_id=event.ad_id,
            status=event.status,
            sid=list(self._known_sids[event.ad_id]) if event.status == "active" else None,
            title=item.title,
            category=cats[0] if cats else "",
            ecpm=item.ecpm,
            index_version=index_version,
            event_time=event.event_time,
        )

    # ---- snapshots ----------------------------------------------------------------------------------

    def snapshot(self, store: SnapshotStore) -> Snapshot:
        """Write a snapshot that records the ad-update offsets and catalogue it covers (consistent under the lock)."""
        with self._lock:
            meta: dict[str, Any] = {
                "ad_updates_offsets": {str(p): o for p, o in sorted(self.offsets.items())},
                "watermark": self.watermark.isoformat() if self.watermark else None,
                "catalogue": [item.model_dump(mode="json") for item in self.items.values()],
                "last_update": {a: list(v) for a, v in self.last_update.items()},
                "written_by": "worker",
            }
            snap = self.ad_index.snapshot(store, **meta)
            self.snapshot_version = snap.version
            return snap

    @classmethod
    def from_snapshot_meta(cls, ad_index: AdIndex, token_offset: int, version: int | None) -> LiveAdIndex:
        meta = ad_index.meta
        watermark = meta.get("watermark")
        live = cls(
            ad_index=ad_index,
            token_offset=token_offset,
            items={d["item_id"]: Item.model_validate(d) for d in meta.get("catalogue", [])},
            offsets={int(p): int(o) for p, o in meta.get("ad_updates_offsets", {}).items()},
            watermark=datetime.fromisoformat(watermark) if watermark else None,
            snapshot_version=version,
            last_update={a: (float(v[0]), str(v[1])) for a, v in meta.get("last_update", {}).items()},
        )
        return live
