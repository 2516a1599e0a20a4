"""Daily retraining from what the system stored: warm-start the serving model, gate it on a recent hold-out.

Inputs are only what the running system kept: each user's behaviour window as the worker stored it (the
window changelog, read by processors/stored_windows.py) and the live ad index (its newest snapshot: S-IDs of
every live ad, new ones included, and their catalogue entries). Nothing is read from the world files.

    windows -> histories (ads without a live S-ID dropped, as serving drops them)
            -> hold-out: each user's latest ad interaction (leave-one-out's last target)
            -> training samples from everything *before* it: one labelled sequence per user for the
               `sequence`/`sid_only` layouts (PromptBuilder.sequence), one prompt per earlier target for
               `per_target`; plus explicit alignment (ad text -> S-ID) for the live ads, which is how ads
               added since the last training get a meaning
            -> parent (the serving checkpoint) and candidate (parent + a few epochs on the samples) are
               scored on the same hold-out; the candidate is published only if it is not worse

The candidate keeps the parent's tokenizer and recipe (prompt layout and scoring), so workers serve it
the way it was trained. Epochs and learning rate are fixed settings, never tuned on the hold-out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from adgen.core.catalogue import AD_KINDS, Dataset, Item, UserHistory, leave_one_out
from adgen.index.semantic_ids import SemanticIdMap, sid_vocabulary
from adgen.model.baselines import ad_ids
from adgen.model.checkpoint_layout import CheckpointLayout
from adgen.model.evaluate import EvalOptions, GenerativeRecommender, evaluate_recommender, sample_examples
from adgen.model.lm import load_lm, save_lm
from adgen.model.lm_training import LMTrainConfig, train_causal_lm
from adgen.model.pool_priors import TransitionCounts, ad_counts
from adgen.model.prompts import PromptBuilder
from adgen.model.recipe import ServingRecipe, load_recipe, save_recipe
from adgen.model.registry import GateResult
from adgen.model.tasks import SequenceBudgetError, TaskOptions, stage_examples
from adgen.model.tokenizer import load_tokenizer, save_tokenizer, token_offset


class RetrainError(ValueError):
    """Retraining cannot run on this data or checkpoint (the message says what to do)."""


class RetrainConfig(BaseModel):
    """Fixed knobs of one retraining run (chosen once, never on the hold-out it is gated on)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0, description="Lower than a first training: the model is warm-started.")
    align_ads: bool = Field(True, description="Explicit alignment (ad text -> S-ID) for every live ad with a text.")
    min_ads: int = Field(3, ge=2, description="Users need this many ad interactions to give a hold-out target.")
    eval_users: int | None = Field(500, ge=1, description="Hold-out users scored (seeded sample; None = all).")
    beams: int = Field(20, ge=1)
    metric: str = Field("ndcg@10", description="The gate's metric (ks 1, 5 and 10 of HR and NDCG are computed).")
    margin: float = Field(0.0, description="Publish only if candidate >= parent + margin (0: not worse).")
    torch_threads: int = Field(2, ge=1)
    seed: int = 0


class RetrainResult(BaseModel):
    candidate_dir: Path
    gate: GateResult
    scores: dict[str, dict[str, float]]
    data: dict[str, Any]
    recipe: dict[str, Any]
    seconds: dict[str, float]


def stored_dataset(
    histories: Mapping[str, UserHistory], sid_map: SemanticIdMap, catalogue: Mapping[str, Item]
) -> Dataset:
    """The stored windows as a Dataset over the live index: ad behaviour on ads without a live S-ID is dropped
    (no S-ID to show or predict), and ads missing from the catalogue get an Item from the window's own title
    and category (what the worker recorded when the click happened)."""
    items = {a: catalogue[a] for a in sid_map.items() if a in catalogue}
    users = {}
    for user_id, history in histories.items():
        events = [e for e in history.events if e.kind not in AD_KINDS or e.ref in sid_map]
        for e in events:
            if e.kind in AD_KINDS and e.ref not in items:
                items[e.ref] = Item(
                    item_id=e.ref, title=e.title or e.ref, categories=(e.category,) if e.category else ()
                )
        users[user_id] = history.model_copy(update={"events": events})
    return Dataset(name="stored-windows", items=items, users=users)


def _evaluate(
    model: Any,
    tokenizer: Any,
    builder: PromptBuilder,
    sid_map: SemanticIdMap,
    data: Dataset,
    holdout: list,
    config: RetrainConfig,
    recipe: ServingRecipe,
) -> dict[str, float]:
    model.eval()
    profiles = {u: h.profile for u, h in data.users.items()}
    recommender = GenerativeRecommender(
        model,
        tokenizer,
        builder,
        sid_map,
        profiles,
        beams=config.beams,
        renormalize=recipe.renormalize,
        popularity=recipe.popularity,
        transitions=recipe.transitions,
    )
    metrics = evaluate_recommender(recommender, holdout, data, EvalOptions(ks=(1, 5, 10), stability=False))
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def retrain(
    serving: Path,
    histories: Mapping[str, UserHistory],
    sid_map: SemanticIdMap,
    catalogue: Mapping[str, Item],
    work_dir: Path,
    config: RetrainConfig | None = None,
) -> RetrainResult:
    """Warm-start `serving` on the stored histories, score parent and candidate on the hold-out, gate.

    Writes the candidate checkpoint (weights, tokenizer, recipe in one directory) to `work_dir/candidate`
    whatever the gate says; publishing it is the caller's decision (model/registry.py).
    """
    config = config or RetrainConfig()
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    torch.manual_seed(config.seed)
    torch.set_num_threads(min(config.torch_threads, 2))
    layout = CheckpointLayout.of(serving)
    tokenizer = load_tokenizer(layout.tokenizer_dir)
    recipe = load_recipe(layout.recipe_dir) if layout.recipe_dir is not None else ServingRecipe()
    try:
        offset = token_offset(tokenizer, sid_vocabulary(sid_map.codebook_sizes))
    except ValueError as exc:
        raise RetrainError(
            f"the serving model's tokenizer does not hold this index's S-ID vocabulary ({exc}); the index was rebuilt "
            "with another RQ-VAE: train a new model from scratch (`adgen train`) instead of retraining"
        ) from exc

    data = stored_dataset(histories, sid_map, catalogue)
    split = leave_one_out(data, config.min_ads)
    if not split.test:
        raise RetrainError(
            f"none of the {len(data.users)} stored windows has {config.min_ads} ad interactions with live ads: "
            "nothing to hold out; let the system collect more behaviour first"
        )
    holdout = sample_examples(split.test, config.eval_users, config.seed)
    if recipe.popularity is not None:  # the prior's counts follow the data the candidate learns from
        counts = ad_counts(ad_ids(e.history) for e in split.test)  # each user's behaviour before the hold-out
        recipe = recipe.model_copy(update={"popularity": recipe.popularity.model_copy(update={"counts": counts})})
    if recipe.transitions is not None:  # so do the transition prior's successions
        following = TransitionCounts.from_sequences((ad_ids(e.history) for e in split.test), recipe.transitions.window)
        transitions = recipe.transitions.model_copy(update={"following": dict(following.following)})
        recipe = recipe.model_copy(update={"transitions": transitions})
    # the parent's ad-ID tokens (recipe.ad_vocabulary) stay as they are: ads added since are written as <ad_unk>
    builder = PromptBuilder(
        tokenizer, data.items, sid_map.sid_of, options=recipe.prompts, ad_vocabulary=recipe.ad_vocabulary
    )
    options = TaskOptions(seed=config.seed)
    try:
        user_samples = stage_examples(
            ["main"],
            builder,
            data,
            split.train + split.valid,  # per_target: every target before the hold-out
            [],
            options,
            histories=split.test,  # sequence layouts: each user's behaviour before the hold-out target
        )
    except SequenceBudgetError as exc:  # retraining would learn alignment alone
        raise RetrainError(f"{exc}; the serving model's recipe fixes that budget: train a new model instead") from exc
    aligned = [a for a in sid_map.items() if a in data.items] if config.align_ads else []
    alignment = stage_examples(["ex"], builder, data, [], aligned, options) if aligned else []
    examples = user_samples + alignment
    seconds["prepare_s"] = time.perf_counter() - started

    t = time.perf_counter()
    model = load_lm(layout.lm_dir)
    parent_scores = _evaluate(model, tokenizer, builder, sid_map, data, holdout, config, recipe)
    seconds["eval_parent_s"] = time.perf_counter() - t

    t = time.perf_counter()
    model.train()
    train_metrics = train_causal_lm(
        model,
        tokenizer,
        examples,
        LMTrainConfig(
            out_dir=Path(work_dir) / "train",
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            max_len=recipe.prompts.max_prompt_tokens + 16,
            torch_threads=config.torch_threads,
            scoring=recipe.scoring,
            resume=False,
            desc="retrain",
        ),
        trie=sid_map.trie_arrays(offset)[0] if recipe.scoring == "trie" else None,
    )
    seconds["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    candidate_scores = _evaluate(model, tokenizer, builder, sid_map, data, holdout, config, recipe)
    seconds["eval_candidate_s"] = time.perf_counter() - t

    candidate_dir = Path(work_dir) / "candidate"
    save_lm(model, candidate_dir)
    save_tokenizer(tokenizer, candidate_dir)
    save_recipe(recipe, candidate_dir)
    gate = judge(parent_scores, candidate_scores, config.metric, config.margin)
    seconds["total_s"] = time.perf_counter() - started
    return RetrainResult(
        candidate_dir=candidate_dir,
        gate=gate,
        scores={"parent": parent_scores, "candidate": candidate_scores},
        data={
            "windows": len(histories),
            "users_with_holdout": len(split.test),
            "holdout_users_scored": len(holdout),
            "user_samples": len(user_samples),
            "layout": recipe.prompts.layout,
            "alignment_examples": len(alignment),
            "live_ads": len(sid_map),
            "ads_in_histories": len({e.ref for h in data.users.values() for e in h.events if e.kind in AD_KINDS}),
            "train_loss_by_epoch": [e["train_loss"] for e in train_metrics.get("epochs", [])],
        },
        recipe=recipe.model_dump(mode="json"),
        seconds=seconds,
    )


def judge(parent: Mapping[str, float], candidate: Mapping[str, float], metric: str, margin: float) -> GateResult:
    """Publish iff candidate[metric] >= parent[metric] + margin."""
    if metric not in parent or metric not in candidate:
        raise RetrainError(f"gate metric {metric!r} was not computed; choose one of {sorted(candidate)}")
    new, old = candidate[metric], parent[metric]
    passed = new >= old + margin
    verdict = "not worse than" if passed else "worse than"
    return GateResult(
        passed=passed,
        metric=metric,
        candidate=new,
        parent=old,
        margin=margin,
        reason=f"candidate {metric} {new:.4f} is {verdict} parent {old:.4f} + margin {margin:g}",
    )
