"""Write a whole synthetic ad world to a directory (format: docs/data-formats.md).

Ads, content and labelled queries are built first (memory grows with the number of ads, ~1 KB each);
users are then simulated one at a time and streamed out, so memory does not grow with the number of
users. The manifest is written last: a directory with a manifest is a complete world.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from adgen.world.ads import Ad, AdLifecycleConfig, AdSampler, make_ads
from adgen.world.content import ContentSampler, make_content
from adgen.world.queries import AdLookup, LabelledQuery, make_queries
from adgen.world.sorted_writer import SortedJsonlWriter
from adgen.world.taxonomy import SUB_CATEGORIES, TOP_CATEGORIES
from adgen.world.users import UserSimulator, WorldClock

GENERATOR_VERSION = "1.0.0"


class WorldConfig(BaseModel):
    """Everything that determines a world: the same config gives byte-identical files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(1000, ge=1, le=100_000_000)
    ads: int = Field(500, ge=1, le=20_000_000)
    seed: int = 0
    days: int = Field(60, ge=2, le=3650)
    start: datetime = Field(datetime(2026, 9, 1, tzinfo=UTC), description="Aware start of the event window.")
    content: int | None = Field(None, ge=1, description="Content items; default max(200, ads // 2).")
    queries: int = Field(1000, ge=0, description="Labelled search queries (fewer if distinct texts run out).")
    min_events: int = Field(20, ge=1)
    max_events: int = Field(80, ge=1)
    added_share: float = Field(0.05, ge=0, le=1)
    deleted_share: float = Field(0.03, ge=0, le=1)
    ecpm_change_share: float = Field(0.10, ge=0, le=10)

    @property
    def content_count(self) -> int:
        return self.content if self.content is not None else max(200, self.ads // 2)


def _dumps(obj: Any) -> str:
    """Compact UTF-8 JSON (pydantic-core's serializer: same text as json.dumps, several times faster)."""
    return to_json(obj).decode()


def generate_world(
    config: WorldConfig,
    out: Path,
    overwrite: bool = False,
    on_user: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generate the world into `out`; returns the manifest. `on_user(n)` reports progress (n users done)."""
    if config.min_events > config.max_events:
        raise ValueError(f"min_events ({config.min_events}) must not exceed max_events ({config.max_events})")
    if config.start.tzinfo is None:
        raise ValueError("start must carry a timezone, e.g. 2026-09-01T00:00:00Z")
    out = Path(out)
    if (out / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a world (manifest.json); pass overwrite=True / --overwrite")
    for sub in ("catalogue", "truth", "events", "queries"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)

    start = int(config.start.timestamp())
    clock = WorldClock(start=start, end=start + config.days * 86_400)
    lifecycle = AdLifecycleConfig(config.added_share, config.deleted_share, config.ecpm_change_share)
    ads = make_ads(config.seed, config.ads, clock.start, clock.end, lifecycle)
    content = make_content(config.seed, config.content_count)
    queries = make_queries(config.seed, ads[: config.ads], config.queries)

    _write_catalogue(out, ads[: config.ads], content)
    update_counts = _write_ad_updates(out, ads, clock)
    _write_labels(out, queries, AdLookup(ads))

    queries_by_sub: dict[int, list[LabelledQuery]] = {}
    for query in queries:
        queries_by_sub.setdefault(query.intent.sub, []).append(query)
    simulator = UserSimulator(
        seed=config.seed,
        clock=clock,
        ads=AdSampler(ads),
        content=ContentSampler(content),
        queries_by_sub=queries_by_sub,
        min_events=config.min_events,
        max_events=config.max_events,
    )
    spill = out / ".spill"
    behavior = SortedJsonlWriter(out / "events" / "user-behavior.jsonl", spill)
    searches = SortedJsonlWriter(out / "events" / "search-queries.jsonl", spill)
    kinds: Counter[str] = Counter()
    with (
        (out / "users.jsonl").open("w", encoding="utf-8") as users_file,
        (out / "truth" / "interests.jsonl").open("w", encoding="utf-8") as truth_file,
    ):
        for index in range(config.users):
            user = simulator.simulate(index)
            users_file.write(_dumps(user.user) + "\n")
            truth_file.write(_dumps(user.truth) + "\n")
            for ts, event in user.behavior:
                kinds[str(event["type"])] += 1
                behavior.add(ts, _dumps(event))
            for ts, event in user.searches:
                searches.add(ts, _dumps(event))
            if on_user is not None:
                on_user(index + 1)
    n_behavior = behavior.close()
    n_searches = searches.close()
    shutil.rmtree(spill, ignore_errors=True)

    manifest = {
        "generator": "adgen.world",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "config": json.loads(config.model_dump_json()),
        "time_range": {"start": clock.iso(clock.start), "end": clock.iso(clock.end), "days": config.days},
        "counts": {
            "users": config.users,
            "ads_initial": config.ads,
            "ads_added": len(ads) - config.ads,
            "ads_total": len(ads),
            "ads_deleted": update_counts["ad_delete"],
            "ad_ecpm_changes": update_counts["ecpm_change"],
            "content": len(content),
            "queries": len(queries),
            "categories_first_level": len(TOP_CATEGORIES),
            "categories_second_level": len(SUB_CATEGORIES),
            "events": {
                "user-behavior": n_behavior,
                "ad-updates": update_counts["total"],
                "search-queries": n_searches,
            },
            "user_behavior_by_type": dict(sorted(kinds.items())),
        },
        "files": {
            "items": "catalogue/items.jsonl",
            "content": "catalogue/content.jsonl",
            "users": "users.jsonl",
            "interests": "truth/interests.jsonl",
            "user_behavior": "events/user-behavior.jsonl",
            "ad_updates": "events/ad-updates.jsonl",
            "search_queries": "events/search-queries.jsonl",
            "query_labels": "queries/labels.jsonl",
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _write_catalogue(out: Path, initial_ads: list[Ad], content: list[Any]) -> None:
    with (out / "catalogue" / "items.jsonl").open("w", encoding="utf-8") as handle:
        for ad in initial_ads:
            handle.write(ad.to_item().model_dump_json() + "\n")
    with (out / "catalogue" / "content.jsonl").open("w", encoding="utf-8") as handle:
        for item in content:
            handle.write(item.model_dump_json() + "\n")


def _write_ad_updates(out: Path, ads: list[Ad], clock: WorldClock) -> dict[str, int]:
    """Upsert per initial ad at the start, then additions, eCPM changes (full upserts) and deletions.

    Only (time, ad, suffix, eCPM) is kept per update; the event text is built while writing.
    """
    rows: list[tuple[int, int, str, float | None]] = []  # suffix: "new", "1", "2", ... (eCPM change), "d"
    counts = Counter[str]()
    for ad in ads:
        rows.append((ad.created, ad.index, "new", ad.ecpm))
        for n, (ts, ecpm) in enumerate(ad.ecpm_changes, start=1):
            rows.append((ts, ad.index, str(n), ecpm))
            counts["ecpm_change"] += 1
        if ad.deleted is not None:
            rows.append((ad.deleted, ad.index, "d", None))
            counts["ad_delete"] += 1
    rows.sort(key=lambda row: (row[0], row[1], "0" if row[2] == "new" else row[2]))
    with (out / "events" / "ad-updates.jsonl").open("w", encoding="utf-8") as handle:
        for ts, index, suffix, ecpm in rows:
            ad = ads[index]
            envelope = {"schema_version": 1, "event_id": f"{ad.ad_id}-{suffix}", "event_time": clock.iso(ts)}
            if ecpm is None:
                event = {**envelope, "type": "ad_delete", "ad_id": ad.ad_id}
            else:
                event = {**envelope, "type": "ad_upsert", **ad.upsert_fields(ecpm)}
            handle.write(_dumps(event) + "\n")
    counts["total"] = len(rows)
    return dict(counts)


def _write_labels(out: Path, queries: list[LabelledQuery], lookup: AdLookup) -> None:
    with (out / "queries" / "labels.jsonl").open("w", encoding="utf-8") as handle:
        for query in queries:
            row = {
                "query_id": query.query_id,
                "text": query.text,
                "intent": query.intent.label,
                "relevance": lookup.relevance(query.intent),
            }
            handle.write(_dumps(row) + "\n")
