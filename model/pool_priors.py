"""Priors that re-rank the beam's finished ads before the top k are cut: the interface, popularity, and a sum.

Why: trie-constrained decoding scores an ad by the log-probability of its S-ID codes alone. Some evidence is
about the ad itself rather than its codes, and it is cheapest to add where the beam's pool of finished ads is
already scored: `score + prior(ad)`. The trie still decides what is generated (no ad outside the pool can
enter); the search keeps `max(k, beams)` finished ads when a prior is given, and the prior orders them.

`PopularityPrior` adds `weight * log(1 + n_ad)`, with `n_ad` the ad's occurrences in the training sequences.
On the full Amazon data (docs/results.md, decode levers) the trained recipe under-ranked often-seen ads: a small
positive weight, chosen on validation users of two seeds, raised validation NDCG@10 on both. An ad added after
training has n = 0 (no boost, no penalty). The counts and the weight are saved in the checkpoint's recipe
(`ServingRecipe.popularity`), so the worker ranks the way the evaluation did.

`TransitionPrior` adds `weight * log(1 + t)`, with `t` how often the pooled ad followed the user's most recent ads
in the training sequences (`TransitionCounts`: within `window` steps, each pair weighted 1/gap). It depends on the
prompt's own history, so one is built per decoded chunk of prompts (`TransitionCounts.prior`). Why: the ad-by-ad
succession that an item-ID model such as SASRec memorises is what an S-ID decoder spreads over code siblings.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Protocol

import torch

NEG_INF = float("-inf")


class PoolPrior(Protocol):
    """Re-scores a pool of finished ads: scores [N, P] of leaf `values` [N, P] -> new scores [N, P]."""

    def rescore(self, logprobs: torch.Tensor, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """`logprobs` [N, V] are each prompt's next-token log-probs after its prompt (the prefill's output)."""
        ...


@dataclass(frozen=True)
class PopularityPrior:
    """weight * log(1 + training count) for each trie leaf value; -inf slots stay -inf."""

    log_count_of_value: torch.Tensor  # [num_values] float
    weight: float

    @classmethod
    def build(cls, leaves: Iterable[tuple[int, str]], counts: Mapping[str, int], weight: float) -> PopularityPrior:
        """From (leaf value, ad id) pairs and ad -> count; ads without a count get 0."""
        pairs = list(leaves)
        table = torch.zeros(max((v for v, _ in pairs), default=-1) + 1)
        for value, ad_id in pairs:
            table[value] = math.log1p(counts.get(ad_id, 0))
        return cls(table, weight)

    def rescore(self, logprobs: torch.Tensor, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        table = self.log_count_of_value.to(values.device)
        if table.numel() == 0:  # no leaf has a count: nothing to add
            table = torch.zeros(1, device=values.device)
        inside = (values >= 0) & (values < table.numel())
        prior = torch.where(inside, table[values.clamp(min=0, max=table.numel() - 1)], 0.0)
        return torch.where(torch.isfinite(scores) & (values >= 0), scores + self.weight * prior, NEG_INF)


@dataclass(frozen=True)
class SumPrior:
    """Several priors applied one after the other (their terms add up)."""

    priors: Sequence[PoolPrior]

    def rescore(self, logprobs: torch.Tensor, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        for prior in self.priors:
            scores = prior.rescore(logprobs, scores, values)
        return scores


def for_rows(prior: PoolPrior | None, start: int, stop: int) -> PoolPrior | None:
    """The prior of prompts `start`..`stop`-1 of one decode call: per-prompt priors are sliced, global ones shared.
    Decoders that split a call into chunks of prompts call this per chunk."""
    if isinstance(prior, TransitionPrior):
        return TransitionPrior(prior.bonus_of_value[start:stop], prior.weight)
    if isinstance(prior, SumPrior):
        return SumPrior([p for p in (for_rows(q, start, stop) for q in prior.priors) if p is not None])
    return prior


def combine(priors: Sequence[PoolPrior | None]) -> PoolPrior | None:
    """None, the one prior given, or their sum."""
    present = [p for p in priors if p is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else SumPrior(present)


@dataclass(frozen=True)
class TransitionCounts:
    """Earlier ad -> later ad -> count of the later ad within `window` steps after it (1/gap each), from training."""

    window: int
    following: Mapping[str, Mapping[str, float]]

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]], window: int) -> TransitionCounts:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        following: dict[str, Counter[str]] = {}
        for seq in sequences:
            for i, earlier in enumerate(seq):
                row = following.setdefault(earlier, Counter())
                for gap, later in enumerate(seq[i + 1 : i + 1 + window], start=1):
                    row[later] += 1.0 / gap
        return cls(window, {ad: dict(row) for ad, row in following.items() if row})

    def bonus(self, recent: Sequence[str]) -> dict[str, float]:
        """Ad -> sum over the last `window` ads of `recent` (the j-th most recent weighted 1/j) of the pair count."""
        out: Counter[str] = Counter()
        for j, earlier in enumerate(reversed(recent[-self.window :]), start=1):
            for later, count in self.following.get(earlier, {}).items():
                out[later] += count / j
        return dict(out)

    def prior(self, leaf_value: Mapping[str, int], recents: Sequence[Sequence[str]], weight: float) -> TransitionPrior:
        """The prior of one chunk of prompts, row i from `recents[i]` (that prompt's ads, oldest first)."""
        rows = []
        for recent in recents:
            rows.append({leaf_value[ad]: b for ad, b in self.bonus(recent).items() if ad in leaf_value})
        return TransitionPrior(rows, weight)


@dataclass(frozen=True)
class TransitionPrior:
    """weight * log(1 + bonus) for each row's pooled leaf values; rows align with the chunk's prompts."""

    bonus_of_value: Sequence[Mapping[int, float]]
    weight: float

    def rescore(self, logprobs: torch.Tensor, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if values.shape[0] != len(self.bonus_of_value):
            raise ValueError(f"prior built for {len(self.bonus_of_value)} prompts, pool has {values.shape[0]} rows")
        bonus = [
            [row.get(v, 0.0) for v in pool] for row, pool in zip(self.bonus_of_value, values.tolist(), strict=True)
        ]
        prior = torch.log1p(torch.tensor(bonus, dtype=scores.dtype, device=scores.device))
        return torch.where(torch.isfinite(scores) & (values >= 0), scores + self.weight * prior, NEG_INF)


def ad_counts(sequences: Iterable[Sequence[str]]) -> dict[str, int]:
    """Occurrences of each ad id in training sequences (what `PopularityPrior` reads)."""
    return dict(Counter(chain.from_iterable(sequences)))
