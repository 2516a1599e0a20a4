"""The behaviour-window agent: user-behavior events -> per-user window rows in a RocksDB-backed Faust table.

Updating the table once per event tops out around 1k events/s per worker here (each write is a RocksDB
put plus a changelog message, each event a trip through the agent). So the agent takes events in
batches (`take_events(n, within=...)`), groups them by user and writes each user's row once per batch;
the pure fold in `window_state.apply_events` makes that equal to per-event updates, in any order, and
idempotent on replay. After the table write, the batch's interest summaries go to Redis in one pipeline,
and users whose window changed or who asked for ads are handed to the generation service.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import EventT, StreamT, TopicT

from adgen.config import Settings
from adgen.processors.feature_store import FeatureStore, UserWindowFeatures
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.window_state import AdLookup, UserEvent, UserWindow, WindowLimits, apply_events
from adgen.streams.app import send_dead_letter
from adgen.streams.codec import EventDecodeError, decode_event
from adgen.streams.dlq import DeadLetter
from adgen.streams.topics import USER_BEHAVIOR

log = logging.getLogger(__name__)

WINDOW_TABLE = "user-windows"

#: (new window, it carries a newer ad request than before this batch)
WindowUpdate = tuple[UserWindow, bool]


def declare_window_table(app: faust.App, settings: Settings) -> Any:
    """The RocksDB-backed (settings.worker.store) table with changelog; co-partitioned with user-behavior."""
    table = app.Table(
        WINDOW_TABLE,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=USER_BEHAVIOR.partitions,
        help="Per-user behaviour window (processors/window_state.UserWindow as JSON).",
    )
    # rows are already pydantic JSON bytes: store and changelog them as they are (Faust would JSON them again)
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    return table


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event, so a table write lands in that event's partition.

    Faust finds the table partition (RocksDB shard and changelog partition) through the current event;
    inside a `take_events` batch that is whichever event came last, so we name the user's own event.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def decoded_batches(
    stream: StreamT, dead_letters: TopicT, settings: Settings, metrics: WorkerMetrics, size: int, within_s: float
) -> AsyncIterator[list[tuple[UserEvent, EventT]]]:
    """Batches of (decoded event, its Faust event); undecodable ones go to the dead-letter topic with the reason."""
    prefix, max_bytes = settings.kafka.topic_prefix, settings.kafka.max_message_bytes
    async for batch in stream.take_events(size, within=within_s):
        good: list[tuple[UserEvent, EventT]] = []
        for raw in batch:
            message = raw.message
            value = raw.value if raw.value is not None else b""
            try:
                event = decode_event(message.topic, value, key=raw.key, prefix=prefix, max_message_bytes=max_bytes)
            except EventDecodeError as error:
                log.warning("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)
                letter = DeadLetter.from_error(
                    error,
                    source_topic=message.topic,
                    value=value,
                    key=raw.key,
                    partition=message.partition,
                    offset=message.offset,
                )
                await send_dead_letter(dead_letters, letter)
                metrics.dead_letters.labels(USER_BEHAVIOR.name).inc()
                continue
            good.append((event, raw))  # type: ignore[arg-type]
        metrics.events.labels(USER_BEHAVIOR.name).inc(len(good))
        yield good


class BehaviorWindows:
    """The agent's work on one batch, kept apart from the Faust decorator so tests and the benchmark call it."""

    def __init__(
        self,
        table: Any,
        limits: WindowLimits,
        ad_lookup: AdLookup | None,
        store: FeatureStore | None,
        metrics: WorkerMetrics,
        on_windows: Callable[[Sequence[WindowUpdate]], None] | None = None,
    ) -> None:
        self.table = table
        self.limits = limits
        self.ad_lookup = ad_lookup
        self.store = store
        self.metrics = metrics
        self.on_windows = on_windows

    async def apply_batch(self, batch: Sequence[tuple[UserEvent, EventT]]) -> list[WindowUpdate]:
        started = time.perf_counter()
        by_user: dict[str, list[UserEvent]] = {}
        last_of: dict[str, EventT] = {}
        for event, raw in batch:
            by_user.setdefault(event.user_id, []).append(event)
            last_of[event.user_id] = raw
        updates: list[WindowUpdate] = []
        features: list[UserWindowFeatures] = []
        for user_id, events in by_user.items():
            key = user_id.encode()
            with acting_for(last_of[user_id]):  # read and write the user's own partition
                raw_row = self.table.get(key)
                window = UserWindow.from_bytes(raw_row) if raw_row else UserWindow(user_id=user_id)
                new = apply_events(window, events, self.limits, self.ad_lookup)
                if new == window:
                    continue  # a pure replay: nothing to write
                self.table[key] = new.to_bytes()
            updates.append((new, new.last_request_id != window.last_request_id))
            features.append(window_features(new))
        if self.store is not None and features:
            await self.store.write_user_windows(features)
        if self.on_windows is not None and updates:
            self.on_windows(updates)
        self.metrics.window_batch_users.observe(len(by_user))
        self.metrics.window_batch_seconds.observe(time.perf_counter() - started)
        return updates


def window_features(window: UserWindow) -> UserWindowFeatures:
    """The part of a window the ranking service reads from Redis."""
    return UserWindowFeatures(
        user_id=window.user_id,
        interest_summary=window.summary,
        window_events=len(window.events),
        arpu=window.profile.arpu,
        newest_event_time=datetime.fromtimestamp(window.newest_ts, UTC),
    )


def windows_in_table(table: Any) -> Iterator[UserWindow]:
    """Every window row this worker holds (its assigned partitions), e.g. to re-queue unserved requests."""
    for _, raw in table.items():
        if raw:
            yield UserWindow.from_bytes(raw)
