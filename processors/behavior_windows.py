"""One behaviour batch folded into window rows: group by user, one multi-get, one fold and one row per user.

Updating a row once per event tops out far below 20k events/s (each write is a RocksDB put plus a
changelog record), so the consumer (processors/window_consumer.py) hands whole batches here; the pure,
order-free and idempotent fold in `window_state.apply_events` makes one fold per user per batch equal to
per-event updates, and a replayed batch change nothing. What a batch changed comes back as changelog
rows, Redis window features and updates for the generation service; writing them is the caller's job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from adgen.processors.feature_store import UserWindowFeatures
from adgen.processors.window_state import AdLookup, UserEvent, UserWindow, WindowLimits, apply_events
from adgen.processors.window_store import WindowStore

#: (new window, it carries a newer ad request than before this batch)
WindowUpdate = tuple[UserWindow, bool]


@dataclass
class FoldedBatch:
    """What one batch changed; users whose window stayed the same (a pure replay) appear nowhere."""

    rows: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)  # partition -> (user id, row)
    updates: list[WindowUpdate] = field(default_factory=list)
    features: list[UserWindowFeatures] = field(default_factory=list)
    users: int = 0  # users with events in the batch (changed or not)


def fold_batch(
    store: WindowStore,
    events: Mapping[int, Sequence[UserEvent]],
    limits: WindowLimits,
    ad_lookup: AdLookup | None,
) -> FoldedBatch:
    """Fold each partition's events into the stored rows (not written back: see FoldedBatch)."""
    out = FoldedBatch()
    for partition, batch in events.items():
        by_user: dict[str, list[UserEvent]] = {}
        for event in batch:
            by_user.setdefault(event.user_id, []).append(event)
        keys = [user.encode() for user in by_user]
        out.users += len(keys)
        rows: list[tuple[bytes, bytes]] = []
        stored = store.get_many(partition, keys)
        for key, (user_id, user_events), raw in zip(keys, by_user.items(), stored, strict=True):
            window = UserWindow.from_bytes(raw) if raw else UserWindow(user_id=user_id)
            new = apply_events(window, user_events, limits, ad_lookup)
            if new == window:
                continue
            rows.append((key, new.to_bytes()))
            out.updates.append((new, new.last_request_id != window.last_request_id))
            out.features.append(window_features(new))
        if rows:
            out.rows[partition] = rows
    return out


def window_features(window: UserWindow) -> UserWindowFeatures:
    """The part of a window the ranking service reads from Redis."""
    return UserWindowFeatures(
        user_id=window.user_id,
        interest_summary=window.summary,
        window_events=len(window.events),
        arpu=window.profile.arpu,
        newest_event_time=datetime.fromtimestamp(window.newest_ts, UTC),
    )


def windows_in_store(store: WindowStore, partitions: Iterable[int]) -> Iterator[UserWindow]:
    """Every window of `partitions` (e.g. the ones just assigned, to re-queue unserved ad requests)."""
    for partition in partitions:
        for _, raw in store.rows(partition):
            yield UserWindow.from_bytes(raw)
