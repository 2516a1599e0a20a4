"""What a trained checkpoint needs to be served the way it was trained: prompt layout and options, and scoring.

Why a file: a model trained on the `sequence` layout fed a `per_target` prompt, or trained with the trie-constrained
softmax and decoded with vocabulary log-probabilities, still returns valid ads, just worse ones, and nothing would
say so. `save_recipe` writes `recipe.json` next to the weights at training time; the evaluator and the nearline
generator build prompts and decode from it. A checkpoint without one (a foreign HF model, or one trained before
recipes existed) gets the defaults, which are what such checkpoints were trained with.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adgen.model.lm_training import Scoring
from adgen.model.pool_priors import TransitionCounts
from adgen.model.prompts import PromptOptions

RECIPE_FILE = "recipe.json"


class PopularitySettings(BaseModel):
    """The popularity prior a checkpoint is served with: `weight * log(1 + counts[ad])` is added to each pooled ad."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(..., gt=0, description="Chosen on validation users (bench/decode_levers.py).")
    counts: dict[str, int] = Field(..., description="Ad id -> occurrences in the training sequences.")


class TransitionSettings(BaseModel):
    """The transition prior a checkpoint is served with: `weight * log(1 + t)`, t = how often the pooled ad followed
    the user's last `window` ads in the training sequences (model/pool_priors.py `TransitionCounts`)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(..., gt=0, description="Chosen on validation users (bench/transition_levers.py).")
    window: int = Field(..., ge=1, description="How many of the user's most recent ads it reads.")
    following: dict[str, dict[str, float]] = Field(
        ..., description="Earlier ad id -> later ad id -> count within `window` steps (1/gap each)."
    )

    def counts(self) -> TransitionCounts:
        return TransitionCounts(self.window, self.following)


class ServingRecipe(BaseModel):
    """How to build prompts for, and score the outputs of, one checkpoint."""

    model_config = ConfigDict(extra="forbid")

    prompts: PromptOptions = PromptOptions()
    scoring: Scoring = Field("vocab", description="'trie' = renormalise over valid trie children when decoding.")
    ad_vocabulary: list[str] = Field(
        default_factory=list,
        description="With prompts.ad_id_tokens: the ad ids whose tokens <ad_0>, <ad_1>, ... the checkpoint knows.",
    )
    ad_prior_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the next-ad head's log-prob when re-ranking the beam's ads (model/ad_head.py); "
        "0 = S-ID scores only. Needs the ad vocabulary.",
    )

    popularity: PopularitySettings | None = Field(
        None,
        description="The popularity prior (model/pool_priors.py): weight and the training counts it reads; None = off.",
    )

    transitions: TransitionSettings | None = Field(
        None,
        description="The transition prior (model/pool_priors.py): weight, window and the training counts; None = off.",
    )

    beams: int | None = Field(
        None,
        ge=1,
        description="The beam width the checkpoint was evaluated with (eval.beams). With pool priors the beam's "
        "finished ads are the pool they re-rank, so a narrower serving beam serves other lists; the worker warns.",
    )

    @model_validator(mode="after")
    def _prior_needs_ads(self) -> ServingRecipe:
        if self.ad_prior_weight > 0 and not self.ad_vocabulary:
            raise ValueError("ad_prior_weight > 0 needs ad-ID tokens (prompts.ad_id_tokens and an ad_vocabulary)")
        return self

    @property
    def renormalize(self) -> bool:
        return self.scoring == "trie"


def save_recipe(recipe: ServingRecipe, directory: Path) -> Path:
    path = Path(directory) / RECIPE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe.model_dump_json(indent=1))
    return path


def load_recipe(directory: Path) -> ServingRecipe:
    """The checkpoint's recipe, or the defaults when it has none."""
    path = Path(directory) / RECIPE_FILE
    if not path.is_file():
        return ServingRecipe()
    return ServingRecipe.model_validate_json(path.read_text())
