"""The next-ad head: the LM's own output layer, read over its ad-ID token block, as a prior that re-ranks beams.

Why: trie-constrained decoding scores an ad by the probability of its S-ID codes. Ads that share codes share most
of that evidence, and on real data the model's top 10 held the right ads (HR@10 near SASRec's) while its order
within it lagged (HR@1 and NDCG below). SASRec's strength is a full softmax over *items*. The checkpoint already has
one row of the output layer per known ad (the ad-ID tokens of model/ad_tokens.py, which are otherwise input-only),
so training adds a second loss at the token before each target S-ID: a softmax over that block must name the ad
(`LMTrainConfig.ad_head_weight`). Decoding reads the same block from the prompt's last-token log-probs, which the
prefill computes anyway (no extra forward pass), and re-ranks the beam's finished ads by

    score = log P(S-ID) + weight * log P(ad | ad block)

The trie still decides what is generated (no ad outside the beam's pool can enter), and an ad without a token (added
after training) gets the prompt's median ad log-prob: neither favoured nor buried. The weight is chosen on validation
users and saved in the checkpoint's recipe (`ServingRecipe.ad_prior_weight`).

Measured on the full Amazon data (docs/results.md, section 0): at hidden 128 the head's loss took the shared state
from the S-IDs and validation NDCG@10 fell (0.0730 at the best weight vs 0.0761 without), so recipes leave it off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from adgen.model.ad_tokens import AdTokens

NEG_INF = float("-inf")


@dataclass(frozen=True)
class AdPrior:
    """For each trie leaf value, the index of its ad in the ad block (-1 for an ad without a token)."""

    block: tuple[int, int]  # [first, end) token ids of the known ads
    index_of_value: torch.Tensor  # [num_values] long
    weight: float

    @classmethod
    def build(cls, leaves: Iterable[tuple[int, str]], ad_tokens: AdTokens, weight: float) -> AdPrior:
        """From (leaf value, ad id) pairs: `enumerate(leaf_items)` for a static trie, the live index's leaves."""
        first, end = ad_tokens.block
        pairs = list(leaves)
        index = torch.full((max((v for v, _ in pairs), default=-1) + 1,), -1, dtype=torch.long)
        for value, ad_id in pairs:
            token = ad_tokens.id_of(ad_id)
            index[value] = token - first if token < end else -1
        return cls((first, end), index, weight)

    def rescore(self, logprobs: torch.Tensor, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Scores [N, P] of pooled leaf `values` [N, P] plus weight * log P(ad) from each prompt's next-token
        log-probs [N, V]; -inf slots stay -inf."""
        first, end = self.block
        ad_lp = torch.log_softmax(logprobs[:, first:end].float(), dim=-1)  # [N, A]
        neutral = ad_lp.median(dim=1, keepdim=True).values  # [N, 1]: for ads without a token
        index = self.index_of_value.to(values.device)[values.clamp(min=0)]  # [N, P]
        prior = torch.where(index >= 0, ad_lp.gather(1, index.clamp(min=0)), neutral)
        return torch.where(torch.isfinite(scores) & (values >= 0), scores + self.weight * prior, NEG_INF)
