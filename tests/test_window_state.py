"""Behaviour-window semantics: horizon, cap, event-time order, replay idempotence, profile, summary."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from adgen.processors.window_state import AdInfo, UserWindow, WindowLimits, apply_events
from adgen.streams.events import AdClick, AdRequest, ContentComplete, ContentPlay, ContentSearch, ProfileUpdate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def click(i: int, day: float, user: str = "u1", ad: str = "ad1") -> AdClick:
    return AdClick(event_id=f"c{i}", event_time=T0 + timedelta(days=day), user_id=user, ad_id=ad)


def complete(i: int, day: float, category: str = "Books") -> ContentComplete:
    return ContentComplete(
        event_id=f"cc{i}", event_time=T0 + timedelta(days=day), user_id="u1", content_id=f"v{i}", category=category
    )


def test_only_positive_events_are_kept_and_ad_clicks_get_title_and_category() -> None:
    events = [
        click(1, 0),
        ContentPlay(event_id="p1", event_time=T0, user_id="u1", content_id="v9"),
        ContentSearch(event_id="s1", event_time=T0 + timedelta(hours=1), user_id="u1", query="red shoes"),
        AdRequest(event_id="r1", event_time=T0 + timedelta(hours=2), user_id="u1"),
    ]
    lookup = {"ad1": AdInfo(title="Trail shoe", category="Sports")}.get
    w = apply_events(UserWindow(user_id="u1"), events, WindowLimits(), lookup)
    assert [e.event_id for e in w.events] == ["c1", "s1"]
    assert w.events[0].title == "Trail shoe" and w.events[0].category == "Sports"
    assert w.summary == {"Sports": 1}
    assert w.last_request_id == "r1"


def test_events_older_than_horizon_and_beyond_cap_are_dropped() -> None:
    limits = WindowLimits(days=90, max_events=3)
    w = apply_events(UserWindow(user_id="u1"), [click(1, 0), click(2, 95), click(3, 96)], limits)
    assert [e.event_id for e in w.events] == ["c2", "c3"]  # c1 is 96 days older than the newest event
    w = apply_events(w, [click(4, 97), click(5, 98)], limits)
    assert [e.event_id for e in w.events] == ["c3", "c4", "c5"]


def test_out_of_order_events_are_placed_by_event_time() -> None:
    w = apply_events(UserWindow(user_id="u1"), [click(2, 2), click(1, 1)], WindowLimits())
    w = apply_events(w, [click(0, 0.5)], WindowLimits())
    assert [e.event_id for e in w.events] == ["c0", "c1", "c2"]


def test_repeated_event_id_is_counted_once() -> None:
    w = apply_events(UserWindow(user_id="u1"), [complete(1, 0), complete(1, 0)], WindowLimits())
    w = apply_events(w, [complete(1, 0)], WindowLimits())
    assert len(w.events) == 1 and w.summary == {"Books": 1}


def test_any_order_and_any_replay_gives_the_same_window() -> None:
    rng = random.Random(7)
    events = [complete(i, rng.uniform(0, 200), rng.choice(["A", "B", "C"])) for i in range(80)]
    limits = WindowLimits(days=90, max_events=20)
    reference = apply_events(UserWindow(user_id="u1"), sorted(events, key=lambda e: e.event_time), limits)
    for trial in range(5):
        shuffled = events + rng.sample(events, 30)  # duplicates, as after a crash replay
        rng.shuffle(shuffled)
        w = UserWindow(user_id="u1")
        for start in range(0, len(shuffled), 7 + trial):
            w = apply_events(UserWindow.from_bytes(w.to_bytes()), shuffled[start : start + 7 + trial], limits)
        assert w == reference
    assert sum(reference.summary.values()) == len(reference.events) == 20


def test_newest_profile_by_event_time_wins_and_changes_fingerprint() -> None:
    new = ProfileUpdate(event_id="p2", event_time=T0 + timedelta(days=2), user_id="u1", age=40, arpu=9.0)
    old = ProfileUpdate(event_id="p1", event_time=T0 + timedelta(days=1), user_id="u1", age=30, arpu=1.0)
    base = apply_events(UserWindow(user_id="u1"), [click(1, 0)], WindowLimits())
    w = apply_events(base, [new, old], WindowLimits())
    assert w.profile.age == 40 and w.profile.arpu == 9.0
    assert w.fingerprint != base.fingerprint
    assert apply_events(w, [old], WindowLimits()).fingerprint == w.fingerprint


def test_event_of_another_user_is_rejected() -> None:
    with pytest.raises(ValueError, match="u2"):
        apply_events(UserWindow(user_id="u1"), [click(1, 0, user="u2")], WindowLimits())


def test_window_converts_to_the_catalogue_history_shape() -> None:
    w = apply_events(UserWindow(user_id="u1"), [complete(1, 0), click(2, 1)], WindowLimits())
    history = w.to_history()
    assert history.user_id == "u1" and [e.kind for e in history.events] == ["content_complete", "ad_click"]
    assert history.ad_sequence() == ["ad1"]
