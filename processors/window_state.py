"""Per-user rolling behaviour window: pure logic, no Faust, no Kafka.

The window is a *set function* of the events applied to it: the newest `max_events` positive events
(ordered by event time, then event id) within `days` of the newest event time seen for the user. Because
the horizon only moves forward and a dropped event can never re-enter, applying events in any order, or
applying an event twice (a replay after a crash), gives the same window. That is what lets the worker be
killed mid-stream and replay from its last committed offset without double counting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from adgen.catalogue import POSITIVE_KINDS, BehaviorKind, HistoryEvent, UserHistory, UserProfile
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

UserEvent = AdClick | AdConversion | ContentPlay | ContentComplete | ContentSearch | AdRequest | ProfileUpdate


@dataclass(frozen=True)
class AdInfo:
    """What the window needs to know about an ad to describe a click on it (title, top category)."""

    title: str
    category: str


AdLookup = Callable[[str], AdInfo | None]


class WindowEntry(BaseModel):
    """One positive behaviour kept in the window; `event_id` makes replays idempotent."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    ts: float
    kind: BehaviorKind
    ref: str
    title: str = ""
    category: str = ""

    @property
    def order_key(self) -> tuple[float, str]:
        return (self.ts, self.event_id)


class UserWindow(BaseModel):
    """The state one user's table row holds: window entries, interest summary, profile, last request."""

    user_id: str
    events: list[WindowEntry] = []  # ascending by (ts, event_id)
    summary: dict[str, int] = {}  # category -> count over `events`
    profile: UserProfile = UserProfile()
    profile_key: tuple[float, str] = (NO_TIME, "")  # (event time, event id) of the applied profile
    newest_ts: float = NO_TIME  # newest event time of any kind applied: the window's clock
    last_request_ts: float = NO_TIME
    last_request_id: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes exactly when the prompt inputs (events, profile) change: the debounce compares it."""
        digest = hashlib.blake2b(digest_size=12)
        for entry in self.events:
            digest.update(entry.event_id.encode())
            digest.update(b"\x00")
        digest.update(self.profile.model_dump_json().encode())
        return digest.hexdigest()

    def to_history(self) -> UserHistory:
        """The window as the catalogue's UserHistory, the shape the prompt builder consumes."""
        return UserHistory(
            user_id=self.user_id,
            profile=self.profile,
            events=[
                HistoryEvent(ts=e.ts, kind=e.kind, ref=e.ref, title=e.title, category=e.category) for e in self.events
            ],
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserWindow:
        return cls.model_validate_json(raw)


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
                event_id=event.event_id,
                ts=ts,
                kind=event.type,
                ref=event.ad_id,
                title=info.title if info else "",
                category=info.category if info else "",
            )
        case ContentComplete():
            return WindowEntry(
                event_id=event.event_id,
                ts=ts,
                kind="content_complete",
                ref=event.content_id,
                title=event.title,
                category=event.category,
            )
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
    entries = {e.event_id: e for e in window.events}
    newest_ts = window.newest_ts
    profile, profile_key = window.profile, window.profile_key
    last_request_ts, last_request_id = window.last_request_ts, window.last_request_id
    for event in events:
        if event.user_id != window.user_id:
            raise ValueError(
                f"event {event.event_id} of user {event.user_id!r} applied to window of {window.user_id!r}"
            )
        ts = event.event_time.timestamp()
        newest_ts = max(newest_ts, ts)
        if isinstance(event, ProfileUpdate):
            key = (ts, event.event_id)
            if key > profile_key:
                profile_key = key
                profile = UserProfile(**event.model_dump(include=set(UserProfile.model_fields)))
            continue
        if isinstance(event, AdRequest):
            if (ts, event.event_id) > (last_request_ts, last_request_id):
                last_request_ts, last_request_id = ts, event.event_id
            continue
        entry = _entry_for(event, ad_lookup)
        if entry is not None and entry.kind in POSITIVE_KINDS and entry.event_id not in entries:
            entries[entry.event_id] = entry
    kept = _trim(entries.values(), newest_ts, limits)
    return UserWindow(
        user_id=window.user_id,
        events=kept,
        summary=interest_summary(kept),
        profile=profile,
        profile_key=profile_key,
        newest_ts=newest_ts,
        last_request_ts=last_request_ts,
        last_request_id=last_request_id,
    )


def _trim(entries: Iterable[WindowEntry], newest_ts: float, limits: WindowLimits) -> list[WindowEntry]:
    cutoff = newest_ts - limits.horizon_s
    live = sorted((e for e in entries if e.ts >= cutoff), key=lambda e: e.order_key)
    return live[-limits.max_events :]


def interest_summary(entries: Iterable[WindowEntry]) -> dict[str, int]:
    """Category -> count over the window, most frequent first (LEADRE's `category^count` summary)."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.category:
            counts[e.category] = counts.get(e.category, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
