"""Per-user rolling behaviour window: pure logic, no Faust, no Kafka.

The window is a *set function* of the events applied to it: the newest `max_events` positive events
(ordered by event time, then event id) within `days` of the newest event time seen for the user. Because
the horizon only moves forward and a dropped event can never re-enter, applying events in any order, or
applying an event twice (a replay after a crash), gives the same window. That is what lets the worker be
killed mid-stream and replay from its last committed offset without double counting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from adgen.core.catalogue import POSITIVE_KINDS, HistoryEvent, UserHistory, UserProfile
from adgen.streams.events import (
    AdClick,
    AdConversion,
    AdRequest,
    ContentComplete,
    ContentPlay,
    ContentSearch,
    ProfileUpdate,
)

DAY_SECONDS = 86_400.0
NO_TIME = -1e18  # "never": finite so it survives a JSON round trip
ROW_FORMAT = 1
PROFILE_FIELDS = frozenset(UserProfile.model_fields)

UserEvent = AdClick | AdConversion | ContentPlay | ContentComplete | ContentSearch | AdRequest | ProfileUpdate


@dataclass(frozen=True)
class AdInfo:
    """What the window needs to know about an ad to describe a click on it (title, top category)."""

    title: str
    category: str


AdLookup = Callable[[str], AdInfo | None]


class WindowEntry(NamedTuple):
    """One positive behaviour kept in the window; `event_id` makes replays idempotent.

    A plain tuple, not a pydantic model: the worker loads and stores thousands of windows a second, and
    tuples sort by (ts, event_id) natively and round-trip through the C JSON codec.
    """

    ts: float
    event_id: str
    kind: str
    ref: str
    title: str = ""
    category: str = ""


@dataclass(slots=True)
class UserWindow:
    """The state one user's table row holds: window entries, interest summary, profile, last request."""

    user_id: str
    events: list[WindowEntry] = field(default_factory=list)  # ascending by (ts, event_id)
    summary: dict[str, int] = field(default_factory=dict)  # category -> count over `events`
    profile: UserProfile = field(default_factory=UserProfile)
    profile_key: tuple[float, str] = (NO_TIME, "")  # (event time, event id) of the applied profile
    newest_ts: float = NO_TIME  # newest event time of any kind applied: the window's clock
    last_request_ts: float = NO_TIME
    last_request_id: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes exactly when the prompt inputs (events, profile) change: the debounce compares it."""
        digest = hashlib.blake2b(digest_size=12)
        digest.update("\x00".join(e.event_id for e in self.events).encode())
        digest.update(json.dumps(self.profile.model_dump(), sort_keys=True).encode())
        return digest.hexdigest()

    def to_history(self) -> UserHistory:
        """The window as the catalogue's UserHistory, the shape the prompt builder consumes."""
        return UserHistory(
            user_id=self.user_id,
            profile=self.profile,
            events=[
                HistoryEvent(ts=e.ts, kind=e.kind, ref=e.ref, title=e.title, category=e.category)  # type: ignore[arg-type]
                for e in self.events
            ],
        )

    def to_bytes(self) -> bytes:
        """Row format v1: a JSON array (compact and fast; field names would double the size)."""
        return json.dumps(
            [
                ROW_FORMAT,
                self.user_id,
                self.events,
                self.summary,
                {k: v for k, v in self.profile.model_dump().items() if v is not None},
                list(self.profile_key),
                self.newest_ts,
                self.last_request_ts,
                self.last_request_id,
            ],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserWindow:
        row = json.loads(raw)
        if not isinstance(row, list) or not row or row[0] != ROW_FORMAT:
            raise ValueError(f"window row is not format {ROW_FORMAT}: {raw[:80]!r}")
        _, user_id, events, summary, profile, profile_key, newest_ts, last_ts, last_id = row
        return cls(
            user_id=user_id,
            events=[WindowEntry(*e) for e in events],
            summary=summary,
            profile=UserProfile.model_construct(**profile),  # our own validated data: no re-validation
            profile_key=(profile_key[0], profile_key[1]),
            newest_ts=newest_ts,
            last_request_ts=last_ts,
            last_request_id=last_id,
        )

    def replace(self, **changes: object) -> UserWindow:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WindowLimits:
    days: float = 90.0
    max_events: int = 50

    @property
    def horizon_s(self) -> float:
        return self.days * DAY_SECONDS


def _entry_for(event: UserEvent, ad_lookup: AdLookup | None) -> WindowEntry | None:
    """The window entry a positive event becomes, or None for events that are not kept (plays, requests)."""
    ts = event.event_time.timestamp()
    match event:
        case AdClick() | AdConversion():
            info = ad_lookup(event.ad_id) if ad_lookup is not None else None
            return WindowEntry(
                ts, event.event_id, event.type, event.ad_id, info.title if info else "", info.category if info else ""
            )
        case ContentComplete():
            return WindowEntry(ts, event.event_id, "content_complete", event.content_id, event.title, event.category)
        case ContentSearch():
            return WindowEntry(
                event_id=event.event_id, ts=ts, kind="content_search", ref=event.query, title=event.query
            )
        case _:
            return None


def apply_events(
    window: UserWindow, events: Iterable[UserEvent], limits: WindowLimits, ad_lookup: AdLookup | None = None
) -> UserWindow:
    """Fold a batch of one user's events into the window (any order, duplicates allowed); returns a new window.

    Events of other users are a programming error and raise ValueError rather than corrupting the row.
    """
    entries = list(window.events)
    ids = {e.event_id for e in entries}
    added = False
    newest_ts = window.newest_ts
    profile, profile_key = window.profile, window.profile_key
    last_request_ts, last_request_id = window.last_request_ts, window.last_request_id
    for event in events:
        if event.user_id != window.user_id:
            raise ValueError(f"event {event.event_id} of user {event.user_id!r} in the window of {window.user_id!r}")
        ts = event.event_time.timestamp()
        if ts > newest_ts:
            newest_ts = ts
        if isinstance(event, ProfileUpdate):
            key = (ts, event.event_id)
            if key > profile_key:
                profile_key = key
                profile = UserProfile(**event.model_dump(include=PROFILE_FIELDS))
            continue
        if isinstance(event, AdRequest):
            if (ts, event.event_id) > (last_request_ts, last_request_id):
                last_request_ts, last_request_id = ts, event.event_id
            continue
        if event.event_id in ids:
            continue
        entry = _entry_for(event, ad_lookup)
        if entry is not None and entry.kind in POSITIVE_KINDS:
            entries.append(entry)
            ids.add(entry.event_id)
            added = True
    if added or newest_ts != window.newest_ts:
        entries = _trim(entries, newest_ts, limits)
        summary = interest_summary(entries)
    else:
        summary = window.summary
    return UserWindow(
        user_id=window.user_id,
        events=entries,
        summary=summary,
        profile=profile,
        profile_key=profile_key,
        newest_ts=newest_ts,
        last_request_ts=last_request_ts,
        last_request_id=last_request_id,
    )


def _trim(entries: list[WindowEntry], newest_ts: float, limits: WindowLimits) -> list[WindowEntry]:
    cutoff = newest_ts - limits.horizon_s
    entries.sort()  # (ts, event_id, ...): event-time order, ties by id; nearly sorted, so cheap
    first = 0
    while first < len(entries) and entries[first].ts < cutoff:
        first += 1
    return entries[max(first, len(entries) - limits.max_events) :]


def interest_summary(entries: Iterable[WindowEntry]) -> dict[str, int]:
    """Category -> count over the window, most frequent first (LEADRE's `category^count` summary)."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.category:
            counts[e.category] = counts.get(e.category, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
