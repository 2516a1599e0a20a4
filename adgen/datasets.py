"""Loaders that turn every supported data source into one `adgen.core.catalogue.Dataset`.

Three sources, one shape: the synthetic ad world (`load_world`), the real Amazon Scientific data
(`load_amazon`) and a documented generic JSONL format (`load_jsonl`) for anyone's own catalogue and logs.
Formats are written down in docs/data-formats.md. Bad rows fail loudly with the file, line and field,
because a silently skipped row turns into a wrong metric much later.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adgen.core.catalogue import (
    AD_KINDS,
    BehaviorKind,
    ContentItem,
    Dataset,
    HistoryEvent,
    Item,
    UserHistory,
    UserProfile,
)
from adgen.streams.events import (
    AD_UPDATE_ADAPTER,
    USER_BEHAVIOR_ADAPTER,
    AdClick,
    AdConversion,
    AdDelete,
    AdUpsert,
    ContentComplete,
    ContentPlay,
    ContentSearch,
)

AMAZON_DAY_SECONDS = 86_400.0
AMAZON_EPOCH = 1_514_764_800.0  # 2018-01-01T00:00:00Z: the review year; timestamps are synthetic, one day apart

M = TypeVar("M", bound=BaseModel)

_TAG_RE = re.compile(r"<[^>]+>")
_SPACE_RE = re.compile(r"\s+")
# Levels are joined by a bare comma; names may hold ", " ("Tapes, Adhesives & Sealants").
_CATEGORY_SEP_RE = re.compile(r",(?!\s)")


class DatasetFormatError(ValueError):
    """A data file that does not follow its documented format; the message names file, line and field."""


class JsonlEvent(BaseModel):
    """One row of the generic JSONL events file (see docs/data-formats.md)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(min_length=1)
    ts: float
    kind: BehaviorKind
    ref: str = Field(min_length=1)
    title: str | None = None
    category: str | None = None


class UserRow(BaseModel):
    """One row of a users file (a world's users.jsonl, or the generic format's optional profiles)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    profile: UserProfile


class QueryLabel(BaseModel):
    """A labelled search query: graded relevance (2 exact intent, 1 same category) per ad id."""

    model_config = ConfigDict(extra="forbid")

    query_id: str
    text: str
    intent: str = ""
    relevance: dict[str, int]


def clean_text(text: str) -> str:
    """Unescape HTML entities, drop tags and collapse whitespace (real catalogues carry markup)."""
    return _SPACE_RE.sub(" ", _TAG_RE.sub(" ", html.unescape(text or ""))).strip()


# ---------------------------------------------------------------------------------------------- JSONL


def _iter_lines(path: Path, error: type[ValueError] = DatasetFormatError) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line."""
    if not path.is_file():
        raise error(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.strip():
                yield line_no, line


def iter_jsonl(path: Path, error: type[ValueError] = DatasetFormatError) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, JSON object) for every non-blank line; a bad line raises `error` with its number
    (other loaders of JSONL, such as the query log, pass their own error type)."""
    for line_no, line in _iter_lines(path, error):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{line_no}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise error(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def describe_validation_error(exc: ValidationError) -> str:
    """One line per error: `field 'a.b': message (got value)`, for messages that name file and line."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<row>"
        parts.append(f"field '{field}': {err['msg']} (got {err.get('input')!r:.80})")
    return "; ".join(parts)


def _validate(model: type[M], row: dict[str, Any], path: Path, line_no: int) -> M:
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        raise DatasetFormatError(f"{path}:{line_no}: {describe_validation_error(exc)}") from exc


def load_items_jsonl(path: str | Path) -> dict[str, Item]:
    """Items file: one `adgen.core.catalogue.Item` JSON object per line; duplicate ids are an error."""
    path = Path(path)
    items: dict[str, Item] = {}
    for line_no, row in iter_jsonl(path):
        item = _validate(Item, row, path, line_no)
        if item.item_id in items:
            raise DatasetFormatError(f"{path}:{line_no}: field 'item_id': duplicate id {item.item_id!r}")
        items[item.item_id] = item
    return items


def load_jsonl(
    items_path: str | Path,
    events_path: str | Path | None = None,
    name: str | None = None,
    users_path: str | Path | None = None,
) -> Dataset:
    """Generic format: an items file (Item fields) and an events file ({user_id, ts, kind, ref, title?, category?}).

    An optional users file ({user_id, profile: UserProfile fields}) adds profiles; users without events
    are kept with empty histories.

    Ad events must reference a known item; missing titles and categories are filled from the item, so a
    minimal log of (user, time, kind, id) is enough. Each user's events are sorted by `ts` (stable).
    """
    items_path = Path(items_path)
    items = load_items_jsonl(items_path)
    users: dict[str, list[HistoryEvent]] = {}
    if events_path is not None:
        events_path = Path(events_path)
        for line_no, row in iter_jsonl(events_path):
            event = _validate(JsonlEvent, row, events_path, line_no)
            title, category = event.title, event.category
            if event.kind in AD_KINDS:
                item = items.get(event.ref)
                if item is None:
                    raise DatasetFormatError(
                        f"{events_path}:{line_no}: field 'ref': ad id {event.ref!r} is not in {items_path.name}"
                    )
                title = item.title if title is None else title
                category = item.top_category if category is None else category
            users.setdefault(event.user_id, []).append(
                HistoryEvent(ts=event.ts, kind=event.kind, ref=event.ref, title=title or "", category=category or "")
            )
    profiles: dict[str, UserProfile] = {}
    if users_path is not None:
        users_path = Path(users_path)
        for line_no, row in iter_jsonl(users_path):
            user = _validate(UserRow, row, users_path, line_no)
            if user.user_id in profiles:
                raise DatasetFormatError(f"{users_path}:{line_no}: field 'user_id': duplicate id {user.user_id!r}")
            profiles[user.user_id] = user.profile
    histories = {
        user_id: UserHistory(
            user_id=user_id,
            profile=profiles.get(user_id, UserProfile()),
            events=sorted(users.get(user_id, []), key=lambda e: e.ts),
        )
        for user_id in [*users, *(u for u in profiles if u not in users)]
    }
    return Dataset(name=name or items_path.stem, items=items, users=histories)


# --------------------------------------------------------------------------------------------- Amazon


def load_amazon(directory: str | Path, name: str = "amazon-scientific") -> Dataset:
    """Amazon (LC-Rec format): `*.item.json` {id: {title, description, brand, categories "a,b,c"}} and
    `*.inter.json` {user_id: [item ids in time order]}.

    The data has no timestamps, so each user's interactions get synthetic times one day apart (order is
    what the protocol needs); every interaction is an `ad_click` (products stand in for ads). Item ids
    stay as the file's keys; text is stripped of HTML and extra whitespace. Item categories keep the full
    path; an event's `category` skips a first level shared by every item (Amazon's "Industrial &
    Scientific"), which would make every interest summary the same.
    """
    directory = Path(directory)
    item_file = _single(directory, "*.item.json")
    inter_file = _single(directory, "*.inter.json")
    raw_items = _read_json_object(item_file)
    items: dict[str, Item] = {}
    for item_id, raw in raw_items.items():
        if not isinstance(raw, dict) or "title" not in raw:
            raise DatasetFormatError(f"{item_file}: item {item_id!r}: expected an object with a 'title'")
        parts = _CATEGORY_SEP_RE.split(str(raw.get("categories", "")))
        categories = tuple(c for c in (clean_text(part) for part in parts) if c)
        items[item_id] = Item(
            item_id=item_id,
            title=clean_text(raw["title"]),
            description=clean_text(raw.get("description", "")),
            brand=clean_text(raw.get("brand", "")),
            categories=categories,
        )
    shared_root = _shared_root(items)
    event_category = {item_id: _informative_category(item, shared_root) for item_id, item in items.items()}
    users: dict[str, UserHistory] = {}
    for user_id, sequence in _read_json_object(inter_file).items():
        if not isinstance(sequence, list):
            raise DatasetFormatError(f"{inter_file}: user {user_id!r}: expected a list of item ids")
        events = []
        for step, raw_id in enumerate(sequence):
            item = items.get(str(raw_id))
            if item is None:
                raise DatasetFormatError(f"{inter_file}: user {user_id!r}: item {raw_id!r} not in {item_file.name}")
            events.append(
                HistoryEvent(
                    ts=AMAZON_EPOCH + step * AMAZON_DAY_SECONDS,
                    kind="ad_click",
                    ref=item.item_id,
                    title=item.title,
                    category=event_category[item.item_id],
                )
            )
        users[str(user_id)] = UserHistory(user_id=str(user_id), events=events)
    return Dataset(name=name, items=items, users=users)


def _shared_root(items: dict[str, Item]) -> str | None:
    """The first-level category if every categorised item has the same one, else None."""
    roots = {item.categories[0] for item in items.values() if item.categories}
    return roots.pop() if len(roots) == 1 else None


def _informative_category(item: Item, shared_root: str | None) -> str:
    categories = item.categories[1:] if shared_root and item.top_category == shared_root else item.categories
    return categories[0] if categories else item.top_category


def _single(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if len(matches) != 1:
        raise DatasetFormatError(f"{directory}: expected exactly one {pattern} file, found {len(matches)}")
    return matches[0]


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object at the top level")
    return data


# ---------------------------------------------------------------------------------------------- World


def item_from_upsert(event: AdUpsert) -> Item:
    """The catalogue view of an ad-upsert event (the event is the full, latest state of the ad)."""
    return Item(
        item_id=event.ad_id,
        title=event.name,
        description=event.description,
        brand=event.brand,
        categories=tuple(event.category_path),
        product_type=event.product_type,
        attributes=tuple(event.attributes),
        ecpm=event.ecpm,
    )


def load_world(directory: str | Path, name: str | None = None) -> Dataset:
    """A synthetic world directory (written by `adgen world generate`) as a Dataset.

    Items are the initial ads plus every ad added later, each in its latest state (eCPM changes
    applied); deleted ads stay in `items` and are listed in `Dataset.deleted_at`. Histories come from
    the behaviour events (ad requests and profile updates carry no history and are skipped); profiles
    from users.jsonl.
    """
    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise DatasetFormatError(f"{directory}: not a world directory (no manifest.json); run `adgen world generate`")
    items = load_items_jsonl(directory / "catalogue" / "items.jsonl")
    deleted_at: dict[str, float] = {}
    updates_path = directory / "events" / "ad-updates.jsonl"
    for line_no, line in _iter_lines(updates_path):
        update = _validate_event(AD_UPDATE_ADAPTER, line, updates_path, line_no)
        if isinstance(update, AdUpsert):
            items[update.ad_id] = item_from_upsert(update)
            deleted_at.pop(update.ad_id, None)
        elif isinstance(update, AdDelete):
            deleted_at[update.ad_id] = update.event_time.timestamp()

    content_path = directory / "catalogue" / "content.jsonl"
    content = {
        c.content_id: c for c in (_validate(ContentItem, r, content_path, n) for n, r in iter_jsonl(content_path))
    }
    users_path = directory / "users.jsonl"
    histories = {
        u.user_id: UserHistory(user_id=u.user_id, profile=u.profile)
        for u in (_validate(UserRow, r, users_path, n) for n, r in iter_jsonl(users_path))
    }

    behavior_path = directory / "events" / "user-behavior.jsonl"
    for line_no, line in _iter_lines(behavior_path):
        event = _validate_event(USER_BEHAVIOR_ADAPTER, line, behavior_path, line_no)
        if isinstance(event, AdClick | AdConversion) and event.ad_id not in items:
            raise DatasetFormatError(f"{behavior_path}:{line_no}: field 'ad_id': {event.ad_id!r} is not a known ad")
        history = _history_event(event, items, content)
        if history is None:
            continue
        user = histories.get(event.user_id)
        if user is None:
            raise DatasetFormatError(
                f"{behavior_path}:{line_no}: field 'user_id': {event.user_id!r} not in users.jsonl"
            )
        user.events.append(history)
    for user in histories.values():
        user.events.sort(key=lambda e: e.ts)
    return Dataset(name=name or directory.name, items=items, users=histories, content=content, deleted_at=deleted_at)


def load_query_labels(directory: str | Path) -> list[QueryLabel]:
    """The world's labelled search queries (queries/labels.jsonl), for RARE evaluation."""
    path = Path(directory) / "queries" / "labels.jsonl"
    return [_validate(QueryLabel, row, path, line_no) for line_no, row in iter_jsonl(path)]


def _validate_event(adapter: Any, line: str, path: Path, line_no: int) -> Any:
    """Parse and validate one event line in one step (pydantic-core's JSON parser: fast on big files)."""
    try:
        return adapter.validate_json(line)
    except ValidationError as exc:
        raise DatasetFormatError(f"{path}:{line_no}: {describe_validation_error(exc)}") from exc


def _history_event(event: Any, items: dict[str, Item], content: dict[str, ContentItem]) -> HistoryEvent | None:
    """The history view of a validated behaviour event (model_construct: its fields passed the contract)."""
    ts = event.event_time.timestamp()
    if isinstance(event, AdClick | AdConversion):
        item = items[event.ad_id]
        return HistoryEvent.model_construct(
            ts=ts, kind=event.type, ref=event.ad_id, title=item.title, category=item.top_category
        )
    if isinstance(event, ContentPlay | ContentComplete):
        known = content.get(event.content_id)
        category = event.category or (known.categories[0] if known and known.categories else "")
        return HistoryEvent.model_construct(
            ts=ts, kind=event.type, ref=event.content_id, title=event.title, category=category
        )
    if isinstance(event, ContentSearch):
        return HistoryEvent.model_construct(ts=ts, kind="content_search", ref=event.query, title=event.query)
    return None
