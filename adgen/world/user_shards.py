"""Simulate users in shards (contiguous id ranges), in this process or in worker processes.

A shard writes its users.jsonl and interests.jsonl slices and sorted run files of its events into a
scratch directory; the generator concatenates the slices in shard order and merges the runs. Every user
depends only on (seed, user index) and the shared world parts, which each process rebuilds from the
config (deterministically), so the output is identical for any number of workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from adgen.world.ads import Ad, AdLifecycleConfig, AdSampler, make_ads
from adgen.world.config import WorldConfig
from adgen.world.content import ContentSampler, make_content
from adgen.world.queries import LabelledQuery, make_queries
from adgen.world.sorted_writer import RunWriter
from adgen.world.users import UserSimulator, WorldClock

SHARD_USERS = 2000


def dumps(obj: Any) -> str:
    """Compact UTF-8 JSON (pydantic-core's serializer: same text as json.dumps, several times faster)."""
    return to_json(obj).decode()


@dataclass(frozen=True, slots=True)
class WorldParts:
    """Everything users are simulated against: built once per process from the config."""

    clock: WorldClock
    ads: list[Ad]
    content: list[Any]
    queries: list[LabelledQuery]
    simulator: UserSimulator


@lru_cache(maxsize=2)
def build_parts(config: WorldConfig) -> WorldParts:
    start = int(config.start.timestamp())
    clock = WorldClock(start=start, end=start + config.days * 86_400)
    lifecycle = AdLifecycleConfig(config.added_share, config.deleted_share, config.ecpm_change_share)
    ads = make_ads(config.seed, config.ads, clock.start, clock.end, lifecycle)
    content = make_content(config.seed, config.content_count)
    queries = make_queries(config.seed, ads[: config.ads], config.queries)
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
    return WorldParts(clock, ads, content, queries, simulator)


@dataclass(frozen=True, slots=True)
class ShardResult:
    shard: int
    users: int
    users_file: Path
    truth_file: Path
    behavior_runs: list[Path]
    search_runs: list[Path]
    behavior_events: int
    search_events: int
    kinds: dict[str, int]


def simulate_shard(config: WorldConfig, shard: int, first: int, stop: int, scratch: Path) -> ShardResult:
    """Simulate users [first, stop) and write their rows and sorted event runs under `scratch`."""
    simulator = build_parts(config).simulator
    scratch.mkdir(parents=True, exist_ok=True)
    behavior = RunWriter(scratch, f"behavior-{shard:06d}")
    searches = RunWriter(scratch, f"search-{shard:06d}")
    kinds: Counter[str] = Counter()
    users_file = scratch / f"users-{shard:06d}.jsonl"
    truth_file = scratch / f"truth-{shard:06d}.jsonl"
    with users_file.open("w", encoding="utf-8") as users_out, truth_file.open("w", encoding="utf-8") as truth_out:
        for index in range(first, stop):
            user = simulator.simulate(index)
            users_out.write(dumps(user.user) + "\n")
            truth_out.write(dumps(user.truth) + "\n")
            for ts, event in user.behavior:
                kinds[str(event["type"])] += 1
                behavior.add(ts, dumps(event))
            for ts, event in user.searches:
                searches.add(ts, dumps(event))
    return ShardResult(
        shard=shard,
        users=stop - first,
        users_file=users_file,
        truth_file=truth_file,
        behavior_runs=behavior.finish(),
        search_runs=searches.finish(),
        behavior_events=behavior.count,
        search_events=searches.count,
        kinds=dict(kinds),
    )
