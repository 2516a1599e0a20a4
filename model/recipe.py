"""What a trained checkpoint needs to be served the way it was trained: prompt layout and options, and scoring.

Why a file: a model trained on the `sequence` layout fed a `per_target` prompt, or trained with the trie-constrained
softmax and decoded with vocabulary log-probabilities, still returns valid ads, just worse ones, and nothing would
say so. `save_recipe` writes `recipe.json` next to the weights at training time; the evaluator and the nearline
generator build prompts and decode from it. A checkpoint without one (a foreign HF model, or one trained before
recipes existed) gets the defaults, which are what such checkpoints were trained with.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from adgen.model.lm_training import Scoring
from adgen.model.prompts import PromptOptions

RECIPE_FILE = "recipe.json"


class ServingRecipe(BaseModel):
    """How to build prompts for, and score the outputs of, one checkpoint."""

    model_config = ConfigDict(extra="forbid")

    prompts: PromptOptions = PromptOptions()
    scoring: Scoring = Field("vocab", description="'trie' = renormalise over valid trie children when decoding.")
    ad_vocabulary: list[str] = Field(
        default_factory=list,
        description="With prompts.ad_id_tokens: the ad ids whose tokens <ad_0>, <ad_1>, ... the checkpoint knows.",
    )

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
