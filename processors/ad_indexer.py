"""Live ad index: ad upserts and deletes -> incremental S-IDs (frozen RQ-VAE) -> trie -> Redis ad records.

Every worker needs the *whole* ad index (any user may be shown any ad), so ad-updates is read by a
broadcast consumer (all partitions assigned, no consumer group) rather than a Faust group agent. It starts
at the offsets recorded in the newest valid snapshot and catches up from there; the snapshot timer records
the offsets it covers, so a restart never skips an update nor needs the whole topic.

Generation decodes against one immutable `IndexView` per index version: a batch of ad updates builds a
new view and swaps it in with one reference assignment, so a decode never sees half an update, and from
the moment a delete is applied no view contains the deleted ad.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from adgen.core.ad_text import ad_text, meaningful_categories
from adgen.core.catalogue import Item
from adgen.core.config import Settings
from adgen.datasets import item_from_upsert
from adgen.index.ad_index import AdIndex
from adgen.index.semantic_ids import sid_vocabulary
from adgen.index.snapshot import Snapshot, SnapshotStore
from adgen.index.trie_arrays import TrieArrays, TrieError
from adgen.processors.feature_store import AdRecord
from adgen.processors.window_state import AdInfo
from adgen.streams.app import decode_or_dead_letter
from adgen.streams.dlq import DeadLetter
from adgen.streams.events import AdDelete, AdUpsert
from adgen.streams.topics import AD_UPDATES, topic_name

log = logging.getLogger(__name__)

AdUpdate = AdUpsert | AdDelete


@dataclass(frozen=True)
class IndexView:
    """One consistent index version: the trie the decoder reads and what its leaves mean."""

    version: str
    trie: TrieArrays | None  # None when no ad is live
    leaf_items: tuple[str, ...]
    sids: Mapping[str, tuple[int, ...]]  # every ad ever seen, deleted ones included (old behaviour in prompts)
    items: Mapping[str, Item]
    live: frozenset[str]
    watermark: datetime | None  # newest ad-update event time applied


@dataclass
class LiveAdIndex:
    """The index the worker mutates (under a lock) and the immutable view generation reads."""

    ad_index: AdIndex
    token_offset: int
    items: dict[str, Item] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # ad-updates partition -> next offset to read
    watermark: datetime | None = None
    snapshot_version: int | None = None
    last_update: dict[str, tuple[float, str]] = field(default_factory=dict)  # ad -> (event time, id) applied
    _known_sids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    view: IndexView = field(init=False)

    def __post_init__(self) -> None:
        sid_map = self.ad_index.sid_map
        self._known_sids.update({a: sid_map.sid_of(a) for a in sid_map.items()})
        self.view = self._make_view()

    @property
    def sid_vocabulary(self) -> list[str]:
        return sid_vocabulary(self.ad_index.sid_map.codebook_sizes)

    def _make_view(self) -> IndexView:
        sid_map = self.ad_index.sid_map
        try:
            trie, leaf_items = sid_map.trie_arrays(self.token_offset)
        except TrieError:
            trie, leaf_items = None, []
        return IndexView(
            version=f"{self.ad_index.model_version[:12]}.{sid_map.version}",
            trie=trie,
            leaf_items=tuple(leaf_items),
            sids=dict(self._known_sids),
            items=dict(self.items),
            live=frozenset(leaf_items),
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
                self.items[event.ad_id] = item
                if event.status == "active":
                    # re-encode only new or changed ads; the encoder's disk cache makes repeats cheap
                    if event.ad_id not in sid_map or old is None or ad_text(old) != ad_text(item):
                        to_code.append(item)
                    continue
            if event.ad_id in sid_map:  # deleted or paused: out of the trie from this version on
                sid_map.remove(event.ad_id)
        if to_code:
            self._known_sids.update(self.ad_index.upsert(to_code))
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


class AdUpdatesReader:
    """Broadcast consumer of ad-updates: every partition, from the snapshot's offsets, no group commits."""

    def __init__(self, settings: Settings, offsets: Mapping[int, int]) -> None:
        self.topic = topic_name(AD_UPDATES, settings.kafka.topic_prefix)
        self.settings = settings
        conf = {
            **settings.kafka.consumer_config(),
            "group.id": f"{settings.worker.app_id}-ad-index-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        self.consumer = Consumer(conf)
        self.consumer.assign(
            [TopicPartition(self.topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in range(AD_UPDATES.partitions)]
        )

    def poll(
        self, max_messages: int = 500, timeout_s: float = 0.5
    ) -> tuple[list[tuple[AdUpdate, int, int]], list[DeadLetter]]:
        """Decoded (event, partition, offset) and dead letters for the undecodable ones."""
        good: list[tuple[AdUpdate, int, int]] = []
        bad: list[DeadLetter] = []
        for msg in self.consumer.consume(max_messages, timeout_s):
            if msg.error() is not None:
                log.warning("ad-updates consumer error: %s", msg.error())
                continue
            result = decode_or_dead_letter(
                self.settings,
                topic=msg.topic(),
                value=msg.value(),
                key=msg.key(),
                partition=msg.partition(),
                offset=msg.offset(),
            )
            if isinstance(result, DeadLetter):
                bad.append(result)
                continue
            good.append((result, msg.partition(), msg.offset()))  # type: ignore[arg-type]
        return good, bad

    def close(self) -> None:
        self.consumer.close()


async def run_ad_indexer(
    live: LiveAdIndex,
    reader: AdUpdatesReader,
    on_applied: Callable[[list[AdRecord], list[DeadLetter], int], Any],
    on_idle: Callable[[], None],
    should_stop: Callable[[], bool],
    lock: asyncio.Lock | None = None,
) -> None:
    """Poll -> apply (in a thread: encoding is CPU work) -> hand records and dead letters to `on_applied`.

    `on_idle` runs after every empty poll: the worker uses the first one to decide the index has caught up
    with what the topic held at start-up, so behaviour windows see ad titles and categories from then on.
    """
    lock = lock or asyncio.Lock()
    while not should_stop():
        good, bad = await asyncio.to_thread(reader.poll)
        if not good and not bad:
            on_idle()
            continue
        # apply, publish, then advance the offsets, all under the lock the snapshot timer takes: a snapshot
        # never covers an update whose Redis records were not written yet
        async with lock:
            records = await asyncio.to_thread(live.apply, [e for e, _, _ in good]) if good else []
            result = on_applied(records, bad, len(good))
            if asyncio.iscoroutine(result):
                await result
            for _, partition, offset in good:
                live.offsets[partition] = max(live.offsets.get(partition, 0), offset + 1)
            for letter in bad:
                if letter.partition is not None and letter.offset is not None:
                    live.offsets[letter.partition] = max(live.offsets.get(letter.partition, 0), letter.offset + 1)
