"""Soft S-ID targets from a fitted SASRec: what the classic retriever would predict, in the trie's terms.

Why: on Amazon the generative model beats SASRec on popular targets and loses on ads seen 1-9 times in
training (docs/results.md, "Where LEADRE loses"). SASRec learns those rare transitions through a tied item
embedding; an S-ID model learns them only from the few times the rare ad is a target. Distillation hands the
S-ID model SASRec's full next-ad distribution at every target, so every training position also says something
about the ads that were *not* clicked there. Serving is unchanged: only the LM runs.

For each labelled S-ID token, the teacher's target is a distribution over that token's trie siblings: the
teacher's probability of every ad under each sibling, given the same earlier ads of the sequence, restricted
to the target's prefix and renormalised. The first ad of a sequence has no teacher (no earlier ads): its rows
are zero and only the hard target trains it. `train.distill_weight` mixes the two losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from adgen.core.catalogue import SplitExample
from adgen.index.trie_arrays import TrieArrays
from adgen.model.baselines import SASRecRecommender, top_items
from adgen.model.trie_loss import IGNORE, TrieSoftmax


class EnsembleTeacher:
    """Several fitted SASRecs over the same candidates as one teacher: the mean of their next-ad distributions.

    Why: a student distilled from an ensemble learns the ensemble's better-calibrated mass, not one fit's noise,
    while serving stays one LM. Every member must rank the same candidates in the same order."""

    def __init__(self, members: Sequence[SASRecRecommender]) -> None:
        if not members:
            raise ValueError("an ensemble teacher needs at least one SASRec")
        self.items = members[0].items
        if any(m.items != self.items for m in members):
            raise ValueError("ensemble teachers must share their candidate list, in the same order")
        self.members = list(members)

    @torch.no_grad()
    def next_probs(self, sequence: Sequence[str]) -> torch.Tensor:
        """[L, candidates]: the members' `next_probs`, averaged (the same rows as one SASRec's)."""
        return torch.stack([m.next_probs(sequence) for m in self.members]).mean(0)

    @torch.no_grad()
    def last_probs(self, examples: Sequence[SplitExample]) -> torch.Tensor:
        """[len(examples), candidates]: the members' next-ad distributions after each whole history, averaged."""
        return torch.stack([m.last_probs(examples) for m in self.members]).mean(0)

    def recommend(self, examples: Sequence[SplitExample], k: int) -> list[list[str]]:
        """The ensemble as a recommender (reported next to the student, so what it learnt from is visible)."""
        return top_items(self.last_probs, self.items, examples, k)


class TriePaths:
    """For every teacher candidate: its trie node before each S-ID token and that token's slot among siblings."""

    def __init__(self, trie: TrieArrays, leaf_items: Sequence[str], softmax: TrieSoftmax, candidates: Sequence[str]):
        self.depth = softmax.depth
        self.width = int(softmax.children.shape[1])
        leaf_node = {int(v): n for n, v in enumerate(trie.leaf_value.tolist()) if v >= 0}
        # walk every leaf back to the root: parent of each node, and the slot of the edge into it
        indptr, child_node = trie.indptr.tolist(), trie.child_node.tolist()
        parent_of: dict[int, tuple[int, int]] = {}
        for node in range(len(indptr) - 1):
            for slot, e in enumerate(range(indptr[node], indptr[node + 1])):
                parent_of[child_node[e]] = (node, slot)
        row_of = {item: value for value, item in enumerate(leaf_items)}
        parents = np.full((len(candidates), self.depth), -2, dtype=np.int64)  # -2: never matches a node
        slots = np.zeros((len(candidates), self.depth), dtype=np.int64)
        for i, item in enumerate(candidates):
            value = row_of.get(item)
            if value is None:
                continue
            node, path = leaf_node[value], []
            while node in parent_of:
                node, slot = parent_of[node]
                path.append((node, slot))
            if len(path) != self.depth:
                continue
            for level, (node, slot) in enumerate(reversed(path)):
                parents[i, level], slots[i, level] = node, slot
        self.parents = torch.from_numpy(parents)  # [I, D]
        self.slots = torch.from_numpy(slots)  # [I, D]
        self.leaf_item = {leaf_node[v]: leaf_items[v] for v in leaf_node}


def target_ads(labels: Sequence[int], softmax: TrieSoftmax, paths: TriePaths) -> tuple[list[str], list[int]]:
    """The ads a labelled sequence targets, in order, and each labelled token's parent node."""
    parents = softmax.parents(labels)
    ads: list[str] = []
    for token, parent in zip(labels, parents, strict=True):
        if token == IGNORE:
            continue
        node = softmax.child(parent, int(token))
        if node in paths.leaf_item:
            ads.append(paths.leaf_item[node])
    return ads, [p for p, t in zip(parents, labels, strict=True) if t != IGNORE]


@torch.no_grad()
def soft_targets(
    teacher: SASRecRecommender | EnsembleTeacher, labels: Sequence[int], softmax: TrieSoftmax, paths: TriePaths
) -> np.ndarray:
    """[labelled tokens, width] float32: the teacher's mass over each labelled token's sibling slots (rows sum to
    1), zero rows where there is no teacher (the sequence's first ad, or no candidate under the prefix)."""
    ads, parents = target_ads(labels, softmax, paths)
    depth = paths.depth
    out = np.zeros((len(parents), paths.width), dtype=np.float32)
    if len(ads) < 2 or len(parents) != depth * len(ads):
        return out
    probs = teacher.next_probs(ads[:-1])  # [L, I]: row r predicts ad first + r
    first = len(ads) - probs.shape[0]  # targets before this have no teacher row (history over max_len)
    rows = torch.tensor([j - first for j in range(first, len(ads)) for _ in range(depth)])
    levels = torch.tensor([lv for _ in range(first, len(ads)) for lv in range(depth)])
    parent = torch.tensor(parents[first * depth :])
    mask = parent[:, None] == paths.parents[:, levels].T  # [M, I]: candidates under this token's prefix
    mass = probs[rows] * mask
    soft = torch.zeros(len(parent), paths.width).scatter_add_(1, paths.slots[:, levels].T, mass)
    total = soft.sum(1, keepdim=True)
    soft = torch.where(total > 0, soft / total.clamp(min=1e-12), 0.0)
    out[first * depth :] = soft.numpy()
    return out
