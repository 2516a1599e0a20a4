"""Labelled S-ID sequences for the trie-loss tests (distillation, target weights): shared so both read ads alike."""

from __future__ import annotations

import numpy as np

from adgen.index.semantic_ids import SemanticIdMap
from adgen.model.lm_training import IGNORE


def labelled(sid_map: SemanticIdMap, ads: list[str], offset: int) -> tuple[list[int], list[int]]:
    """A sequence: a text token, then per ad its S-ID tokens (labelled; the first S-ID token is `offset`) and one
    unlabelled text token."""
    sizes = np.cumsum([0, *sid_map.codebook_sizes[:-1]])
    ids, labels = [1], [IGNORE]
    for ad in ads:
        tokens = [offset + int(sizes[level]) + code for level, code in enumerate(sid_map.sid_of(ad))]
        ids += [*tokens, 2]
        labels += [*tokens, IGNORE]
    return ids, labels
