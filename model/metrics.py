"""Ranking metrics for leave-one-out evaluation (one relevant item per user) and top-K list qualities.

- HR@K: share of users whose target is in their top K.
- NDCG@K: 1 / log2(rank + 2) for a target at 0-based rank < K, else 0 (one relevant item, so IDCG = 1).
- Diversity (LEADRE §5.2.3), per user over the top K then averaged: concentration = share of the most
  frequent category (lower = more diverse); abundance = number of distinct categories (higher = more).
- Mean eCPM of the top K (the value the ads would bring if shown).
- Dice stability (LEADRE §5.2.5): 2|A ∩ B| / (|A| + |B|) between the top K generated from the full history
  and from a truncated one; 1 = the list did not move.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np


def target_rank(ranked: Sequence[str], target: str) -> int | None:
    """0-based position of `target` in `ranked`, or None."""
    for i, item in enumerate(ranked):
        if item == target:
            return i
    return None


def hit_rate(rankings: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    _check(rankings, targets)
    return float(np.mean([target in list(r)[:k] for r, target in zip(rankings, targets, strict=True)]))


def ndcg(rankings: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    _check(rankings, targets)
    gains = []
    for ranked, target in zip(rankings, targets, strict=True):
        rank = target_rank(list(ranked)[:k], target)
        gains.append(0.0 if rank is None else 1.0 / math.log2(rank + 2))
    return float(np.mean(gains))


def concentration(categories: Sequence[str]) -> float:
    """Share of the most frequent category in one list (1.0 = all the same)."""
    if not categories:
        return 0.0
    return Counter(categories).most_common(1)[0][1] / len(categories)


def abundance(categories: Sequence[str]) -> int:
    """Number of distinct categories in one list."""
    return len(set(categories))


def dice(a: Sequence[str], b: Sequence[str]) -> float:
    """Dice coefficient of two lists as sets (1.0 for two empty lists)."""
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return 2 * len(sa & sb) / (len(sa) + len(sb))


def list_qualities(
    rankings: Sequence[Sequence[str]],
    k: int,
    category_of: Callable[[str], str],
    ecpm_of: Mapping[str, float],
) -> dict[str, float]:
    """Mean concentration, abundance and eCPM over every user's top k."""
    tops = [list(r)[:k] for r in rankings]
    nonempty = [t for t in tops if t]
    if not nonempty:
        return {f"concentration@{k}": 0.0, f"abundance@{k}": 0.0, f"mean_ecpm@{k}": 0.0}
    return {
        f"concentration@{k}": float(np.mean([concentration([category_of(i) for i in t]) for t in nonempty])),
        f"abundance@{k}": float(np.mean([abundance([category_of(i) for i in t]) for t in nonempty])),
        f"mean_ecpm@{k}": float(np.mean([np.mean([ecpm_of.get(i, 0.0) for i in t]) for t in nonempty])),
    }


def ranking_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """HR@K and NDCG@K for every K."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(rankings, targets, k)
        out[f"ndcg@{k}"] = ndcg(rankings, targets, k)
    return out


def mean_dice(full: Sequence[Sequence[str]], truncated: Sequence[Sequence[str]], k: int) -> float:
    if len(full) != len(truncated):
        raise ValueError(f"{len(full)} full-history lists but {len(truncated)} truncated-history lists")
    return float(np.mean([dice(list(a)[:k], list(b)[:k]) for a, b in zip(full, truncated, strict=True)]))


def _check(rankings: Sequence[Sequence[str]], targets: Sequence[str]) -> None:
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings but {len(targets)} targets")
    if not targets:
        raise ValueError("no users to evaluate: the split is empty")


def channel_value(
    base: Sequence[Sequence[str]], added: Sequence[Sequence[str]], targets: Sequence[str], k: int = 10
) -> dict[str, float]:
    """What a second retrieval channel adds: HR of `base`'s top k merged with `added`'s top k (deduplicated, at
    most 2k ads) against `base`'s own top 2k, the list a single channel would fill the same slots with."""
    _check(base, targets)
    _check(added, targets)
    merged = [list(dict.fromkeys([*list(b)[:k], *list(a)[:k]])) for b, a in zip(base, added, strict=True)]
    return {
        f"hr@{2 * k}_merged": hit_rate(merged, targets, 2 * k),
        f"hr@{2 * k}_base": hit_rate(base, targets, 2 * k),
        f"hr@{k}_base": hit_rate(base, targets, k),
        f"hr@{k}_added": hit_rate(added, targets, k),
        "mean_merged_size": float(np.mean([len(m) for m in merged])),
    }
