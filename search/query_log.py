"""A labelled query log: the searches people made and the ads judged or clicked for them, with a grade.

Besides the catalogue, this is the search path's only input (format: docs/data-formats.md, section 4).
One JSONL row is one logged search; rows of the same `query_id` are one query whose grades are merged
(highest grade wins). The log serves two jobs:

- its labelled queries are split into train / validation / test (`search/query_split.py`) to train and
  evaluate the CI path;
- its row counts per normalised text are the query frequencies the head cache is built from.

A bad row fails the load with `file:line: field 'x': reason`, like the catalogue loaders, because a row
skipped in silence becomes a wrong metric much later.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adgen.datasets import iter_jsonl
from adgen.search.ci_index import normalise_text

MAX_QUERY_CHARS = 512
"""The same limit as a search-queries event's text (streams/events.py)."""

MAX_GRADE = 3
"""Grades are 0 (judged, not relevant) to 3; the synthetic world uses 2 = exact intent, 1 = related."""

Grade = Annotated[int, Field(ge=0, le=MAX_GRADE, strict=True)]


class QueryLogError(ValueError):
    """A query log that does not follow docs/data-formats.md; the message names file, line and field."""


class QueryLogRow(BaseModel):
    """One line of a query-log JSONL file: one search, and the ads judged or clicked for it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    query_id: str = Field(min_length=1, max_length=128, strict=True)
    text: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, strict=True)
    ts: float = Field(description="Seconds since the epoch (any consistent clock).")
    ads: dict[str, Grade] = Field(default_factory=dict, description="Ad id -> relevance grade.")
    intent: str = Field("", max_length=MAX_QUERY_CHARS, strict=True, description="Optional intent label.")

    @field_validator("text")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not normalise_text(value):
            raise ValueError("query text is empty after normalisation (no letters or digits)")
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _number(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError("must be a finite number of seconds since the epoch")
        return value


class LoggedQuery(BaseModel):
    """One query of the log: its text, optional intent, merged grades and how often it was searched."""

    query_id: str
    text: str
    intent: str = ""
    relevance: dict[str, int] = {}
    count: int = Field(1, ge=1, description="Rows of the log with this query id (its search frequency).")
    first_ts: float

    @property
    def normalised(self) -> str:
        return normalise_text(self.text)

    def relevant(self, min_grade: int) -> set[str]:
        return {ad for ad, grade in self.relevance.items() if grade >= min_grade}


class QueryLog(BaseModel):
    """Every query of a log, in order of first appearance."""

    queries: list[LoggedQuery]
    source: str = ""

    @property
    def rows(self) -> int:
        return sum(q.count for q in self.queries)

    def frequencies(self) -> Counter[str]:
        """Normalised query text -> number of searches (what the head cache ranks)."""
        counts: Counter[str] = Counter()
        for q in self.queries:
            counts[q.normalised] += q.count
        return counts

    def labelled(self) -> list[LoggedQuery]:
        """Queries with at least one ad graded above 0 (the ones an evaluation can score)."""
        return [q for q in self.queries if any(g > 0 for g in q.relevance.values())]


def merge_rows(rows: Iterable[tuple[str, QueryLogRow]], catalogue: Collection[str], source: str = "") -> QueryLog:
    """Fold validated rows (each with where it came from, e.g. `file:line`) into one QueryLog.

    Rows of one query id must agree on the normalised text and the intent; every graded ad must be in
    `catalogue`. Grades of one query merge by maximum.
    """
    merged: dict[str, LoggedQuery] = {}
    for where, row in rows:
        for ad in row.ads:
            if ad not in catalogue:
                raise QueryLogError(f"{where}: field 'ads.{ad}': ad id {ad!r} is not in the catalogue")
        known = merged.get(row.query_id)
        if known is None:
            merged[row.query_id] = LoggedQuery(
                query_id=row.query_id, text=row.text, intent=row.intent, relevance=dict(row.ads), first_ts=row.ts
            )
            continue
        if normalise_text(row.text) != known.normalised:
            raise QueryLogError(
                f"{where}: field 'text': query id {row.query_id!r} was {known.text!r} earlier; "
                "one query id must always have the same text"
            )
        if row.intent and known.intent and row.intent != known.intent:
            raise QueryLogError(
                f"{where}: field 'intent': query id {row.query_id!r} had intent {known.intent!r} earlier"
            )
        known.intent = known.intent or row.intent
        known.count += 1
        known.first_ts = min(known.first_ts, row.ts)
        for ad, grade in row.ads.items():
            known.relevance[ad] = max(grade, known.relevance.get(ad, 0))
    return QueryLog(queries=list(merged.values()), source=source)


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, JSON object) for every non-blank line; a bad line raises naming its number."""
    for line_no, row in iter_jsonl(path, QueryLogError):
        yield f"{path}:{line_no}", row


def _validated(where: str, row: dict[str, Any]) -> QueryLogRow:
    try:
        return QueryLogRow.model_validate(row)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<row>"
            errors.append(f"field '{field}': {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r:.80})")
        raise QueryLogError(f"{where}: " + "; ".join(errors)) from exc


def load_query_log(path: str | Path, catalogue: Collection[str]) -> QueryLog:
    """Read a query-log JSONL file (docs/data-formats.md, section 4) against the catalogue's ad ids."""
    path = Path(path)
    rows = ((where, _validated(where, row)) for where, row in _rows(path))
    log = merge_rows(rows, catalogue, source=str(path))
    if not log.queries:
        raise QueryLogError(f"{path}: no queries in the file")
    return log


def write_query_log(log: QueryLog, path: str | Path) -> Path:
    """One row per query (grades on it), in the documented format; `load_query_log` reads it back.

    A query searched n times is written as n rows (grades on the first), so frequencies survive.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for q in log.queries:
            for i in range(q.count):
                row: dict[str, Any] = {"query_id": q.query_id, "text": q.text, "ts": q.first_ts}
                if i == 0 and q.relevance:
                    row["ads"] = q.relevance
                if q.intent:
                    row["intent"] = q.intent
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def world_query_log(directory: str | Path, catalogue: Collection[str]) -> QueryLog:
    """A synthetic world's searches (events/search-queries.jsonl) and labels (queries/labels.jsonl) as a log.

    Labels attach to a query's first search; a labelled query nobody searched in the window appears once,
    at the window start. Grades of ads outside `catalogue` (the world's deleted ads) are dropped, since
    the index is built after the deletions.
    """
    directory = Path(directory)
    searches: dict[str, list[tuple[str, QueryLogRow]]] = {}
    events = directory / "events" / "search-queries.jsonl"
    if events.is_file():
        for where, event in _rows(events):
            ts = _event_seconds(where, event.get("event_time"))
            row = _validated(where, {"query_id": event.get("query_id"), "text": event.get("text"), "ts": ts})
            searches.setdefault(row.query_id, []).append((where, row))
    start = _window_start(directory)
    rows: list[tuple[str, QueryLogRow]] = []
    for where, label in _rows(directory / "queries" / "labels.jsonl"):
        grades = label.get("relevance")
        if isinstance(grades, dict):
            label = {**label, "relevance": {ad: g for ad, g in grades.items() if ad in catalogue}}
        logged = searches.pop(str(label.get("query_id")), [])
        ts = logged[0][1].ts if logged else start
        fields = {"query_id": label.get("query_id"), "text": label.get("text"), "ts": ts}
        fields.update({"ads": label.get("relevance", {}), "intent": label.get("intent", "")})
        rows.append((where, _validated(where, fields)))
        rows.extend(logged[1:] if logged else [])
    for logged in searches.values():  # searches without labels still count for the head cache
        rows.extend(logged)
    return merge_rows(rows, catalogue, source=str(directory))


def _event_seconds(where: str, value: object) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise QueryLogError(f"{where}: field 'event_time': not an ISO time (got {value!r:.40})") from exc


def _window_start(directory: Path) -> float:
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise QueryLogError(f"{directory}: not a world directory (no manifest.json); run `adgen world generate`")
    start = json.loads(manifest.read_text()).get("time_range", {}).get("start")
    return _event_seconds(str(manifest), start)
