"""The ad-index component: owns the ad-updates topic and keeps the live index, Redis ad records and CIs current.

Every worker needs the *whole* ad index (any user may be shown any ad), so ad-updates is read by a
broadcast consumer (all partitions assigned, no consumer group), not a Faust group agent. It starts at the
offsets recorded in the newest valid snapshot, so a restart never skips an update nor reads the whole topic.
One batch, under the index lock the snapshot component also takes:

    poll (bad events: dead letters, counted) -> apply to the live index (a thread: encoding is CPU work)
    -> CIs for new ads (search path, if loaded) -> Redis ad records + index pointer -> advance the offsets

so a snapshot never covers an update whose Redis records are not written yet. The first empty poll after
start-up (or after the first batch) marks the index caught up: the behaviour windows wait for that.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from adgen.core.catalogue import Item
from adgen.core.clock import utc_now
from adgen.core.config import Settings
from adgen.index.snapshot import Snapshot, SnapshotStore
from adgen.processors.ad_indexer import AdUpdate, IndexView
from adgen.processors.feature_store import AdRecord, FeatureStore, IndexPointer
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.window_state import AdInfo
from adgen.processors.worker_parts import Component, DeadLetters, Readiness
from adgen.streams.app import decode_batch
from adgen.streams.dlq import DeadLetter
from adgen.streams.topics import AD_UPDATES, topic_name

log = logging.getLogger(__name__)

#: The reader counts as caught up at its first empty poll after this long (or after its first batch).
CATCH_UP_MIN_S = 2.0
LAG_EVERY_S = 2.0


class LiveIndex(Protocol):
    """What the component needs from the live index (processors/ad_indexer.py's `LiveAdIndex`)."""

    offsets: dict[int, int]  # ad-updates partition -> next offset to read
    snapshot_version: int | None

    @property
    def view(self) -> IndexView: ...

    def apply(self, events: Sequence[AdUpdate]) -> list[AdRecord]: ...

    def ad_info(self, ad_id: str) -> AdInfo | None: ...

    def snapshot(self, store: SnapshotStore) -> Snapshot: ...


@dataclass(frozen=True)
class AssignedCIs:
    """An ad batch's records with their CIs filled, and each changed ad's CIs before the batch (for `ci:*`)."""

    records: list[AdRecord]
    before: dict[str, dict[int, float]]


class CIAssigner(Protocol):
    """The search path's part in an ad batch (`QueryRetrieval`): CIs are assigned first, the ad records are
    written, and only then do the `ci:*` keys name the ads, so a reader who finds an ad through a CI always
    finds its record."""

    async def index_ads(self, records: Sequence[AdRecord], items: Mapping[str, Item]) -> AssignedCIs: ...

    async def publish_ads(self, assigned: AssignedCIs) -> None: ...


class AdUpdatesReader:
    """Broadcast consumer of ad-updates: every partition, from the snapshot's offsets, no group commits.

    Used from one thread at a time (the component's poll thread); `lag` is refreshed there too."""

    def __init__(self, settings: Settings, offsets: Mapping[int, int]) -> None:
        self.topic = topic_name(AD_UPDATES, settings.kafka.topic_prefix)
        self.settings = settings
        self.consumer = Consumer(
            settings.kafka.consumer_config(
                **{
                    "group.id": f"{settings.worker.app_id}-ad-index-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        self.consumer.assign(
            [TopicPartition(self.topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in range(AD_UPDATES.partitions)]
        )
        self.lag: dict[tuple[str, int], int] = {}
        self._lag_at = 0.0

    def poll(
        self, max_messages: int = 500, timeout_s: float = 0.5
    ) -> tuple[list[tuple[AdUpdate, int, int]], list[DeadLetter]]:
        """Decoded (event, partition, offset) and dead letters for the undecodable ones, in one pass (never
        raises for a bad message: `decode_batch` turns even a codec bug into a dead letter)."""
        batch = decode_batch(self.settings, self.consumer.consume(max_messages, timeout_s))
        self._measure_lag()
        return batch.events, batch.letters  # type: ignore[return-value]

    def _measure_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        try:
            lag = {}
            for tp in self.consumer.position(self.consumer.assignment()):
                if tp.offset >= 0:
                    _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                    lag[(tp.topic, tp.partition)] = max(0, high - tp.offset)  # a hint (tansu_quirks 2)
            self.lag = lag
        except KafkaException as exc:
            log.debug("ad-updates lag skipped: %s", exc)

    def close(self) -> None:
        self.consumer.close()


class AdIndexer(Component):
    """Owns ad-updates; sets `Readiness.INDEX_CAUGHT_UP` once it has read what the topic held at start-up."""

    def __init__(
        self,
        settings: Settings,
        live: LiveIndex,
        store: FeatureStore,
        snapshots: SnapshotStore,
        dead_letters: DeadLetters,
        metrics: WorkerMetrics,
        readiness: Readiness,
        index_lock: asyncio.Lock,
        ci: CIAssigner | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.live = live
        self.store = store
        self.snapshots = snapshots
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.readiness = readiness
        self.index_lock = index_lock
        self.ci = ci
        self.reader: AdUpdatesReader | None = None
        self._consumed = False
        self._started_at = 0.0

    @property
    def ready(self) -> bool:
        return self.readiness.is_set(Readiness.INDEX_CAUGHT_UP) and super().ready

    def lag(self) -> dict[tuple[str, int], int]:
        return dict(self.reader.lag) if self.reader is not None else {}

    @Component.task
    async def _consume(self) -> None:
        self.reader = reader = AdUpdatesReader(self.settings, self.live.offsets)
        self._started_at = time.monotonic()
        polling: asyncio.Future[tuple[list[tuple[AdUpdate, int, int]], list[DeadLetter]]] | None = None
        try:
            while not self.should_stop:
                polling = asyncio.get_running_loop().run_in_executor(None, reader.poll)
                good, bad = await polling
                polling = None
                if good or bad:
                    self._consumed = True
                    await self.apply_batch(good, bad)
                else:
                    self._maybe_caught_up()
        finally:
            if polling is not None:  # let the poll in flight finish before closing its consumer
                await asyncio.wait([polling], timeout=5.0)
            reader.close()

    def _maybe_caught_up(self) -> None:
        if self.readiness.is_set(Readiness.INDEX_CAUGHT_UP):
            return
        if self._consumed or time.monotonic() - self._started_at > CATCH_UP_MIN_S:
            self.metrics.index_live_ads.set(len(self.live.view.live))
            self.readiness.set(Readiness.INDEX_CAUGHT_UP)

    async def apply_batch(self, good: Sequence[tuple[AdUpdate, int, int]], bad: Sequence[DeadLetter]) -> None:
        """One batch end to end (module docstring), under the index lock."""
        async with self.index_lock:
            records = await asyncio.to_thread(self.live.apply, [e for e, _, _ in good]) if good else []
            await self.dead_letters.send_batch(bad, AD_UPDATES.name)
            self.metrics.events.labels(AD_UPDATES.name).inc(len(good))
            if records:
                view = self.live.view
                assigned = await self.ci.index_ads(records, view.items) if self.ci is not None else None
                records = assigned.records if assigned is not None else records
                await self.store.write_ads(records)
                if self.ci is not None and assigned is not None:
                    await self.ci.publish_ads(assigned)  # after the records (CIAssigner)
                self.metrics.index_updates.inc(len(records))
                self.metrics.index_live_ads.set(len(view.live))
                version = self.live.snapshot_version
                await self.store.write_index_pointer(
                    IndexPointer(
                        version=view.version,
                        watermark=view.watermark,
                        snapshot=str(self.snapshots.path_of(version)) if version else None,
                        ads=len(view.live),
                        updated_at=utc_now(),
                    )
                )
            offsets = self.live.offsets
            for _, partition, offset in good:
                offsets[partition] = max(offsets.get(partition, 0), offset + 1)
            for letter in bad:
                if letter.partition is not None and letter.offset is not None:
                    offsets[letter.partition] = max(offsets.get(letter.partition, 0), letter.offset + 1)


__all__ = ["AdIndexer", "AdUpdatesReader", "CIAssigner", "LiveIndex"]
