"""Frequency-aware loss weights: each target ad's labelled tokens weigh (count + 1) ** -power.

Why: on Amazon the S-ID model beats SASRec on targets seen 30+ times in training and loses on those seen 1-9
times, which are about half of the test users (docs/results.md, "Where LEADRE loses"). Its cross-entropy spends
most of its gradient on popular targets, because they are most of the targets. Weighting a target by a power of
its training count moves that gradient to the tail; `power` 0 is the unweighted loss. The weights are scaled so
their mean over all training targets is 1, so the learning rate keeps its meaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from adgen.model.distill import TriePaths, target_ads
from adgen.model.lm_training import SequenceExample
from adgen.model.trie_loss import TrieSoftmax


def with_target_weights(
    examples: Sequence[SequenceExample], softmax: TrieSoftmax, paths: TriePaths, power: float
) -> list[SequenceExample]:
    """The examples with `weights` set: every labelled token of a target ad gets that ad's weight. Counts are the
    ads' occurrences as targets in `examples` (the training sequences only)."""
    if power < 0:
        raise ValueError(f"target weight power must be >= 0, got {power}")
    targets = [target_ads(e.labels, softmax, paths) for e in examples]
    counts = Counter(ad for ads, _ in targets for ad in ads)
    total = sum(counts.values())
    if total == 0:
        return list(examples)
    mean = sum(n * (n + 1.0) ** -power for n in counts.values()) / total
    out = []
    for example, (ads, parents) in zip(examples, targets, strict=True):
        if len(parents) != paths.depth * len(ads):  # a target outside the trie: leave the example unweighted
            out.append(example)
            continue
        per_ad = [(counts[ad] + 1.0) ** -power / mean for ad in ads]
        out.append(replace(example, weights=np.repeat(np.asarray(per_ad, dtype=np.float32), paths.depth)))
    return out
