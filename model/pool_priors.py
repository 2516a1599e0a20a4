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


def combine(priors: Sequence[PoolPrior | None]) -> PoolPrior | None:
    """None, the one prior given, or their sum."""
    present = [p for p in priors if p is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else SumPrior(present)


def ad_counts(sequences: Iterable[Sequence[str]]) -> dict[str, int]:
    """Occurrences of each ad id in training sequences (what `PopularityPrior` reads)."""
    return dict(Counter(chain.from_iterable(sequences)))
