"""The successions baseline: what followed the user's last ads in the training sequences, then popularity.

Why it is in the harness: on the full Amazon data these counts alone (no model) ranked the validation targets
better than the tuned SASRec (docs/results.md, transition levers), so they are a classic retriever a user could
pick instead, and the generative model is compared with it as well. The counts are the transition prior's own
(model/pool_priors.py `TransitionCounts`), so the baseline and the prior fused into decoding are the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from adgen.core.catalogue import HistoryEvent, SplitExample
from adgen.model.baselines import ad_ids
from adgen.model.pool_priors import TransitionCounts


class SuccessionRecommender:
    """Ads ranked by how often they followed the user's last `window` ads (ties and the rest by popularity)."""

    name = "successions"

    def __init__(self, candidates: Sequence[str], window: int) -> None:
        self.candidates = set(candidates)
        self.window = window
        self.counts = TransitionCounts(window, {})
        self.by_popularity: list[str] = sorted(self.candidates)
        self.popularity: Counter[str] = Counter()

    def fit(self, train_histories: Sequence[Sequence[HistoryEvent]]) -> SuccessionRecommender:
        sequences = [ad_ids(h) for h in train_histories]
        self.counts = TransitionCounts.from_sequences(sequences, self.window)
        self.popularity = Counter(ad for seq in sequences for ad in seq)
        self.by_popularity = sorted(self.candidates, key=lambda ad: (-self.popularity[ad], ad))
        return self

    def recommend(self, examples: Sequence[SplitExample], k: int) -> list[list[str]]:
        out = []
        for e in examples:
            bonus = {ad: b for ad, b in self.counts.bonus(ad_ids(e.history)).items() if ad in self.candidates}
            head = sorted(bonus, key=lambda ad: (-bonus[ad], -self.popularity[ad], ad))[:k]
            rest = (ad for ad in self.by_popularity if ad not in bonus)
            out.append(head + [ad for _, ad in zip(range(k - len(head)), rest, strict=False)])
        return out
