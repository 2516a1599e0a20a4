"""Where a served checkpoint keeps its parts: weights, tokenizer and recipe, in one directory or in `lm/` +
`tokenizer/` (the layout of `write_untrained_checkpoint`). One resolver for the generator, retraining and
the registry, so they never disagree about which files make up a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adgen.model.recipe import RECIPE_FILE


@dataclass(frozen=True)
class CheckpointLayout:
    root: Path
    lm_dir: Path
    tokenizer_dir: Path
    recipe_dir: Path | None  # None: a checkpoint from before recipes (served with the defaults)

    @classmethod
    def of(cls, checkpoint: Path) -> CheckpointLayout:
        root = Path(checkpoint)
        lm_dir = root / "lm" if (root / "lm").is_dir() else root
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        recipe_dir = next((d for d in (lm_dir, root) if (d / RECIPE_FILE).is_file()), None)
        return cls(root, lm_dir, tok_dir, recipe_dir)
