"""Leak-free train / validation / test split of labelled queries.

Queries are grouped so that two queries with the same normalised text, or the same intent label (where
the log has intents, as the synthetic world does), always land in the same split. A held-out query then
never has a training twin: the CI model cannot have memorised its text or its intent, and every setting
chosen on validation is judged on intents nothing was fitted to. Groups are ordered by a seeded hash and
cut by cumulative query count, so the shares are close to the asked ones and the split is stable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydantic import BaseModel, Field

from adgen.search.query_log import LoggedQuery

SPLIT_NAMES = ("train", "valid", "test")


class SplitConfig(BaseModel):
    """Shares of labelled queries held out; the rest trains."""

    valid_share: float = Field(0.2, gt=0, lt=1)
    test_share: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class QuerySplit(BaseModel):
    train: list[LoggedQuery]
    valid: list[LoggedQuery]
    test: list[LoggedQuery]

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}


def _keys(query: LoggedQuery) -> list[str]:
    keys = [f"text:{query.normalised}"]
    if query.intent:
        keys.append(f"intent:{query.intent}")
    return keys


def query_groups(queries: Sequence[LoggedQuery]) -> list[list[int]]:
    """Indices of queries connected by a shared normalised text or intent (union-find), in input order."""
    parent = list(range(len(queries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, q in enumerate(queries):
        for key in _keys(q):
            j = owner.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(queries)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def split_queries(queries: Sequence[LoggedQuery], config: SplitConfig | None = None) -> QuerySplit:
    """Split labelled queries into train / valid / test with no shared normalised text or intent."""
    config = config or SplitConfig()
    if config.valid_share + config.test_share >= 1:
        raise ValueError("valid_share + test_share must leave queries to train on")
    groups = query_groups(queries)

    def order(group: list[int]) -> str:
        key = min(k for i in group for k in _keys(queries[i]))
        return hashlib.sha256(f"{config.seed}:{key}".encode()).hexdigest()

    n = len(queries)
    test_cut, valid_cut = config.test_share * n, (config.test_share + config.valid_share) * n
    out: dict[str, list[LoggedQuery]] = {name: [] for name in SPLIT_NAMES}
    placed = 0
    for group in sorted(groups, key=order):
        name = "test" if placed < test_cut else "valid" if placed < valid_cut else "train"
        out[name].extend(queries[i] for i in group)
        placed += len(group)
    for name in SPLIT_NAMES:
        out[name].sort(key=lambda q: q.query_id)
    return QuerySplit(**out)


def split_leaks(split: QuerySplit) -> list[str]:
    """Every held-out query that shares its normalised text or intent with a training query (or with the
    other held-out split); empty means the split is leak-free."""
    problems = []
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for q in getattr(split, name):
            for key in _keys(q):
                first = seen.setdefault(key, name)
                if first != name:
                    problems.append(f"{name} query {q.query_id!r} shares {key!r} with the {first} split")
    return problems
