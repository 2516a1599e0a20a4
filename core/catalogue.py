"""The internal catalogue and user histories that every loader produces and every model consumes.

One shape for the synthetic ad world, the Amazon Scientific data and the generic JSONL format, so that
indexing, training and evaluation never care where the data came from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BehaviorKind = Literal["ad_click", "ad_conversion", "content_play", "content_complete", "content_search"]
AD_KINDS: frozenset[str] = frozenset({"ad_click", "ad_conversion"})
POSITIVE_KINDS: frozenset[str] = frozenset({"ad_click", "ad_conversion", "content_complete", "content_search"})


class Item(BaseModel):
    """An ad (or, for real data, a product treated as an ad)."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    title: str
    description: str = ""
    brand: str = ""
    categories: tuple[str, ...] = ()
    product_type: str = ""
    attributes: tuple[str, ...] = ()
    ecpm: float = Field(0.0, ge=0)

    @property
    def top_category(self) -> str:
        return self.categories[0] if self.categories else ""


class ContentItem(BaseModel):
    """A content-domain item (video, article) with its categories."""

    model_config = ConfigDict(frozen=True)

    content_id: str
    title: str
    categories: tuple[str, ...] = ()


class UserProfile(BaseModel):
    """Demographic profile and value signal used by prompts and the priority scheduler."""

    model_config = ConfigDict(frozen=True)

    age: int | None = None
    sex: str | None = None
    residence: str | None = None
    education: str | None = None
    occupation: str | None = None
    consumption_level: str | None = None
    arpu: float = Field(0.0, ge=0)


class HistoryEvent(BaseModel):
    """One positive or neutral behaviour in time order. `ref` is an ad id, content id or query text."""

    model_config = ConfigDict(frozen=True)

    ts: float = Field(description="Event time, seconds since the epoch (synthetic clocks allowed).")
    kind: BehaviorKind
    ref: str
    title: str = ""
    category: str = ""


class UserHistory(BaseModel):
    """A user's profile and full time-ordered behaviour (ad and content domains merged)."""

    user_id: str
    profile: UserProfile = UserProfile()
    events: list[HistoryEvent] = []

    def ad_sequence(self) -> list[str]:
        """Ad ids of positive ad interactions (clicks, conversions), in time order."""
        return [e.ref for e in self.events if e.kind in AD_KINDS]


class Dataset(BaseModel):
    """A catalogue plus user histories. Content items and queries are empty for data that lacks them."""

    name: str
    items: dict[str, Item]
    users: dict[str, UserHistory]
    content: dict[str, ContentItem] = {}
    deleted_at: dict[str, float] = Field(
        default_factory=dict,
        description="Ad id -> time of its deletion. Deleted ads stay in `items` so histories still resolve; "
        "retrieval and indexing should skip them.",
    )

    def active_items(self) -> dict[str, Item]:
        """Items that were never deleted (what an index built at the end of the data should hold)."""
        return {item_id: item for item_id, item in self.items.items() if item_id not in self.deleted_at}


class SplitExample(BaseModel):
    """Leave-one-out example: the history strictly before the target ad, and the target ad id."""

    user_id: str
    history: list[HistoryEvent]
    target: str


class Split(BaseModel):
    """Leave-one-out split over ad interactions: last = test, second last = valid, the rest = train."""

    train: list[SplitExample]
    valid: list[SplitExample]
    test: list[SplitExample]


def leave_one_out(dataset: Dataset, min_ads: int = 3) -> Split:
    """Split every user with at least `min_ads` ad interactions by the standard protocol.

    Train holds one example per earlier ad interaction (positive-interaction reuse: each positive ad
    yields a sample from its prefix); valid and test hold one example each per user. A conversion on
    the ad of the interaction just before it (click, then convert) deepens that interaction and is not
    a new target: otherwise the "next ad" would be the ad already at the end of the history.
    """
    train: list[SplitExample] = []
    valid: list[SplitExample] = []
    test: list[SplitExample] = []
    for user in dataset.users.values():
        ad_positions = _target_positions(user.events)
        if len(ad_positions) < min_ads:
            continue
        for rank, pos in enumerate(ad_positions):
            example = SplitExample(user_id=user.user_id, history=user.events[:pos], target=user.events[pos].ref)
            if rank == len(ad_positions) - 1:
                test.append(example)
            elif rank == len(ad_positions) - 2:
                valid.append(example)
            elif rank > 0:
                train.append(example)
    return Split(train=train, valid=valid, test=test)


def _target_positions(events: list[HistoryEvent]) -> list[int]:
    """Indices of ad interactions that are split targets (see `leave_one_out`)."""
    positions: list[int] = []
    previous_ad = None
    for i, event in enumerate(events):
        if event.kind not in AD_KINDS:
            continue
        if not (event.kind == "ad_conversion" and event.ref == previous_ad):
            positions.append(i)
        previous_ad = event.ref
    return positions
