"""Write a whole synthetic ad world to a directory (format: docs/data-formats.md).

Ads, content and labelled queries are built first (memory grows with the number of ads, ~1 KB each);
users are then simulated in shards of `SHARD_USERS` and streamed out through sorted run files, so memory
does not grow with the number of users, and `workers > 1` spreads the shards over processes with
byte-identical output. The manifest is written last: a directory with a manifest is a complete world.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from adgen.world.ads import Ad
from adgen.world.config import WorldConfig
from adgen.world.queries import AdLookup, LabelledQuery
from adgen.world.sorted_writer import merge_runs
from adgen.world.taxonomy import SUB_CATEGORIES, TOP_CATEGORIES
from adgen.world.user_shards import SHARD_USERS, ShardResult, build_parts, dumps, simulate_shard
from adgen.world.users import WorldClock

GENERATOR_VERSION = "1.1.0"


def generate_world(
    config: WorldConfig,
    out: Path,
    overwrite: bool = False,
    on_user: Callable[[int], None] | None = None,
    workers: int = 1,
    shard_users: int = SHARD_USERS,
) -> dict[str, Any]:
    """Generate the world into `out`; returns the manifest. `on_user(n)` reports progress (n users done).

    `workers` and `shard_users` change speed and peak memory, never the files.
    """
    if workers < 1 or shard_users < 1:
        raise ValueError(f"workers and shard_users must be at least 1, got {workers} and {shard_users}")
    out = Path(out)
    if (out / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a world (manifest.json); pass overwrite=True / --overwrite")
    for sub in ("catalogue", "truth", "events", "queries", ".spill"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)

    parts = build_parts(config)
    clock, ads, content, queries = parts.clock, parts.ads, parts.content, parts.queries
    _write_catalogue(out, ads[: config.ads], content)
    update_counts = _write_ad_updates(out, ads, clock)
    _write_labels(out, queries, AdLookup(ads))

    scratch = out / ".spill"
    results: dict[int, ShardResult] = {}
    done = 0
    for result in _run_shards(config, scratch, workers, shard_users):
        results[result.shard] = result
        done += result.users
        if on_user is not None:
            on_user(done)
    ordered = [results[i] for i in range(len(results))]
    _concatenate([r.users_file for r in ordered], out / "users.jsonl")
    _concatenate([r.truth_file for r in ordered], out / "truth" / "interests.jsonl")
    merge_runs([run for r in ordered for run in r.behavior_runs], out / "events" / "user-behavior.jsonl", scratch)
    merge_runs([run for r in ordered for run in r.search_runs], out / "events" / "search-queries.jsonl", scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    build_parts.cache_clear()  # the ads and samplers are only needed while users are simulated
    n_behavior = sum(r.behavior_events for r in ordered)
    n_searches = sum(r.search_events for r in ordered)
    kinds: Counter[str] = Counter()
    for r in ordered:
        kinds.update(r.kinds)

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
            handle.write(dumps(event) + "\n")
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
            handle.write(dumps(row) + "\n")


def _run_shards(config: WorldConfig, scratch: Path, workers: int, shard_users: int) -> Iterator[ShardResult]:
    """Shard results as they complete: in this process for one worker, else in spawned processes."""
    bounds = [
        (i, first, min(first + shard_users, config.users))
        for i, first in enumerate(range(0, config.users, shard_users))
    ]
    if workers == 1 or len(bounds) == 1:
        for shard, first, stop in bounds:
            yield simulate_shard(config, shard, first, stop, scratch)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(simulate_shard, config, shard, first, stop, scratch) for shard, first, stop in bounds]
        for future in as_completed(futures):
            yield future.result()


def _concatenate(parts: list[Path], target: Path) -> None:
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out)
            part.unlink()
