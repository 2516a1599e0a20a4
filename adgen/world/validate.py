"""Check a world directory against its contract: every event line validates with the `streams.events`
TypeAdapters, each event file is sorted by event_time, ad-updates opens with one upsert per initial ad,
and the line counts match the manifest. Used by the tests and by `adgen world validate` (for worlds
that were copied around or produced by another tool).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from adgen.core.catalogue import ContentItem, Item
from adgen.datasets import describe_validation_error
from adgen.streams.events import AD_UPDATE_ADAPTER, SEARCH_QUERY_ADAPTER, USER_BEHAVIOR_ADAPTER, AdUpsert


class WorldValidationError(ValueError):
    """The world directory breaks its contract; the message names the file and line."""


class WorldReport(BaseModel):
    """Lines checked per file, and the event counts by type for the user-behaviour stream."""

    lines: dict[str, int]
    user_behavior_by_type: dict[str, int]


_EVENT_FILES: dict[str, TypeAdapter[Any]] = {
    "user-behavior": USER_BEHAVIOR_ADAPTER,
    "ad-updates": AD_UPDATE_ADAPTER,
    "search-queries": SEARCH_QUERY_ADAPTER,
}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise WorldValidationError(f"{path}: missing")
    with path.open(encoding="utf-8") as handle:
        yield from enumerate(handle, start=1)


def validate_world(directory: str | Path) -> WorldReport:
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise WorldValidationError(f"{directory}: no manifest.json (generation incomplete or not a world)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    counts = manifest["counts"]
    lines: dict[str, int] = {}
    by_type: dict[str, int] = {}

    initial_ids: list[str] = []
    for rel, model in (("catalogue/items.jsonl", Item), ("catalogue/content.jsonl", ContentItem)):
        n = 0
        for line_no, line in _lines(directory / rel):
            try:
                row = model.model_validate_json(line)
            except ValidationError as exc:
                raise WorldValidationError(f"{directory / rel}:{line_no}: {describe_validation_error(exc)}") from exc
            if model is Item:
                initial_ids.append(row.item_id)  # type: ignore[attr-defined]
            n += 1
        lines[rel] = n

    for name, adapter in _EVENT_FILES.items():
        path = directory / "events" / f"{name}.jsonl"
        previous = None
        seen_ids: set[str] = set()
        n = 0
        for line_no, line in _lines(path):
            try:
                event = adapter.validate_json(line)
            except ValidationError as exc:
                raise WorldValidationError(f"{path}:{line_no}: {describe_validation_error(exc)}") from exc
            if previous is not None and event.event_time < previous:
                raise WorldValidationError(f"{path}:{line_no}: event_time {event.event_time} before {previous}")
            if event.event_id in seen_ids:
                raise WorldValidationError(f"{path}:{line_no}: duplicate event_id {event.event_id!r}")
            opening = name == "ad-updates" and n < len(initial_ids)
            if opening and (not isinstance(event, AdUpsert) or event.ad_id != initial_ids[n]):
                raise WorldValidationError(f"{path}:{line_no}: expected the upsert of initial ad {initial_ids[n]}")
            if name == "user-behavior":
                by_type[event.type] = by_type.get(event.type, 0) + 1
            seen_ids.add(event.event_id)
            previous = event.event_time
            n += 1
        lines[f"events/{name}.jsonl"] = n
        if n != counts["events"][name]:
            raise WorldValidationError(f"{path}: {n} events, manifest says {counts['events'][name]}")

    for rel in ("users.jsonl", "truth/interests.jsonl", "queries/labels.jsonl"):
        lines[rel] = sum(1 for _ in _lines(directory / rel))
    expected = {
        "catalogue/items.jsonl": counts["ads_initial"],
        "catalogue/content.jsonl": counts["content"],
        "users.jsonl": counts["users"],
        "truth/interests.jsonl": counts["users"],
        "queries/labels.jsonl": counts["queries"],
    }
    for rel, want in expected.items():
        if lines[rel] != want:
            raise WorldValidationError(f"{directory / rel}: {lines[rel]} lines, manifest says {want}")
    if by_type != counts["user_behavior_by_type"]:
        raise WorldValidationError(f"user-behavior types {by_type} differ from the manifest")
    return WorldReport(lines=lines, user_behavior_by_type=by_type)
