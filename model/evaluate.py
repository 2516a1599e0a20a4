"""One evaluation harness for every recommender: leave-one-out, full ranking, the same metrics, JSON + PNG.

The generative model ranks through the trie-constrained beam search, so its top K are always K distinct
valid ads of the live catalogue (no post-filtering). Baselines rank the whole catalogue by score.
Stability: each user's list is generated again from a truncated history (the most recent
`truncate_keep` share of behaviours) and compared with Dice (LEADRE §5.2.5).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from adgen.core.ad_text import meaningful_categories
from adgen.core.catalogue import Dataset, Item, SplitExample, UserProfile
from adgen.index.semantic_ids import SemanticIdMap, sid_vocabulary
from adgen.model.ad_head import AdPrior
from adgen.model.baselines import ad_ids
from adgen.model.metrics import list_qualities, mean_dice, ranking_metrics
from adgen.model.pool_priors import PoolPrior, PopularityPrior, combine
from adgen.model.prompts import PromptBuilder
from adgen.model.recipe import PopularitySettings, TransitionSettings
from adgen.model.tokenizer import token_offset


class Recommender(Protocol):
    """Anything that ranks ads for leave-one-out examples."""

    name: str

    def recommend(self, examples: Sequence[SplitExample], k: int) -> list[list[str]]: ...


class EvalOptions(BaseModel):
    ks: tuple[int, ...] = (1, 4, 5, 8, 10)
    diversity_k: int = Field(10, ge=1)
    stability: bool = True
    truncate_keep: float = Field(0.5, gt=0, lt=1, description="Share of the most recent behaviours kept.")
    max_users: int | None = Field(None, ge=1, description="Evaluate a seeded sample of users (None = all).")
    seed: int = 0


class GenerativeRecommender:
    """The LEADRE model as a recommender: prompt -> constrained beam search over the S-ID trie -> ads."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        builder: PromptBuilder,
        sid_map: SemanticIdMap,
        profiles: Mapping[str, UserProfile],
        beams: int | None = None,
        batch_size: int = 32,
        name: str = "leadre",
        renormalize: bool = False,
        ad_prior_weight: float = 0.0,
        popularity: PopularitySettings | None = None,
        transitions: TransitionSettings | None = None,
    ) -> None:
        from adgen.model.decoding import ConstrainedBeamSearch

        self.name = name
        self.builder = builder
        self.profiles = profiles
        self.beams = beams
        self.renormalize = renormalize  # the checkpoint's recipe: True for models trained with trie scoring
        offset = token_offset(tokenizer, sid_vocabulary(sid_map.codebook_sizes))
        self.trie, self.leaf_items = sid_map.trie_arrays(offset)
        self.search = ConstrainedBeamSearch(model, max_batch_prompts=batch_size)
        self.ad_prior: PoolPrior | None = None
        if ad_prior_weight > 0:
            if builder.ad_tokens is None:
                raise ValueError("ad_prior_weight > 0 needs a PromptBuilder with ad-ID tokens")
            self.ad_prior = AdPrior.build(enumerate(self.leaf_items), builder.ad_tokens, ad_prior_weight)
        popularity_prior = None
        if popularity is not None:
            popularity_prior = PopularityPrior.build(enumerate(self.leaf_items), popularity.counts, popularity.weight)
        self.ad_prior = combine([self.ad_prior, popularity_prior])
        self.transitions = transitions
        self.transition_counts = transitions.counts() if transitions is not None else None
        self.value_of = {ad: v for v, ad in enumerate(self.leaf_items)}

    def prompts(self, examples: Sequence[SplitExample]) -> list[list[int]]:
        return [self.builder.user_prompt(e.history, self.profiles.get(e.user_id)).ids for e in examples]

    def recommend_scored(self, examples: Sequence[SplitExample], k: int) -> list[list[tuple[str, float]]]:
        if not examples:
            return []
        k_eff = min(k, self.trie.num_values)
        beams = max(self.beams or k_eff, k_eff)
        results = self.search.generate(
            self.prompts(examples),
            self.trie,
            k_eff,
            beams=beams,
            renormalize=self.renormalize,
            ad_prior=self.prior(examples),
        )
        return [[(self.leaf_items[v], s) for v, s in row] for row in results]

    def recommend(self, examples: Sequence[SplitExample], k: int) -> list[list[str]]:
        return [[item for item, _ in row] for row in self.recommend_scored(examples, k)]

    def prior(self, examples: Sequence[SplitExample]) -> PoolPrior | None:
        """The global priors plus, with a transition prior, one row per example built from its own history."""
        if self.transitions is None or self.transition_counts is None:
            return self.ad_prior
        recents = [ad_ids(e.history) for e in examples]
        rows = self.transition_counts.prior(self.value_of, recents, self.transitions.weight)
        return combine([self.ad_prior, rows])


def top_category(item: Item | None) -> str:
    if item is None:
        return ""
    cats = meaningful_categories(item)
    return cats[0] if cats else ""


def sample_examples(examples: Sequence[SplitExample], max_users: int | None, seed: int) -> list[SplitExample]:
    """A seeded sample (same users for every recommender in a run)."""
    if max_users is None or len(examples) <= max_users:
        return list(examples)
    rng = random.Random(seed)
    return sorted(rng.sample(list(examples), max_users), key=lambda e: e.user_id)


def truncate(example: SplitExample, keep: float) -> SplitExample:
    """The same example with only the most recent `keep` share of its history."""
    n = len(example.history)
    kept = example.history[n - max(1, round(n * keep)) :] if n else []
    return SplitExample(user_id=example.user_id, history=kept, target=example.target)


def evaluate_recommender(
    recommender: Recommender,
    examples: Sequence[SplitExample],
    dataset: Dataset,
    options: EvalOptions,
    with_rankings: bool = False,
) -> Any:
    """HR/NDCG@K, diversity, mean eCPM and (optionally) Dice stability for one recommender.

    With `with_rankings`, returns (metrics, the ranked lists) so callers can combine lists (e.g. channel value).
    """
    if not examples:
        raise ValueError("no evaluation examples: the split has no users with enough ad interactions")
    k = max(max(options.ks), options.diversity_k)
    started = time.perf_counter()
    rankings = recommender.recommend(examples, k)
    seconds = time.perf_counter() - started
    targets = [e.target for e in examples]
    metrics: dict[str, Any] = ranking_metrics(rankings, targets, options.ks)
    categories = {item_id: top_category(item) for item_id, item in dataset.items.items()}
    ecpm = {item_id: item.ecpm for item_id, item in dataset.items.items()}
    metrics.update(list_qualities(rankings, options.diversity_k, lambda i: categories.get(i, ""), ecpm))
    metrics["target_mean_ecpm"] = sum(ecpm.get(t, 0.0) for t in targets) / len(targets)
    if options.stability:
        truncated = recommender.recommend([truncate(e, options.truncate_keep) for e in examples], options.diversity_k)
        metrics[f"dice@{options.diversity_k}"] = mean_dice(rankings, truncated, options.diversity_k)
    metrics["users"] = len(examples)
    metrics["recommend_seconds"] = seconds
    return (metrics, rankings) if with_rankings else metrics


def write_report(results: Mapping[str, Mapping[str, Any]], out_dir: Path, title: str, ks: Sequence[int]) -> Path:
    """`eval.json` with every recommender's metrics and `eval.png` (HR@K and NDCG@K curves)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval.json"
    path.write_text(json.dumps({"title": title, "results": results}, indent=1))
    plot_report(results, out_dir / "eval.png", title, ks)
    return path


def plot_report(results: Mapping[str, Mapping[str, Any]], path: Path, title: str, ks: Sequence[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, metrics in results.items():
        for ax, metric in zip(axes, ("hr", "ndcg"), strict=True):
            ax.plot(list(ks), [metrics.get(f"{metric}@{k}", 0.0) for k in ks], marker="o", label=name)
    for ax, metric in zip(axes, ("HR@K", "NDCG@K"), strict=True):
        ax.set_xlabel("K")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
