"""A small synthetic world with labelled queries, shared by the search-path tests (seeded, ~1 s)."""

from __future__ import annotations

from pathlib import Path

from adgen.world import WorldConfig, generate_world


def make_search_world(out: Path, seed: int = 5) -> Path:
    generate_world(WorldConfig(users=150, ads=200, queries=240, seed=seed), out)
    return out
