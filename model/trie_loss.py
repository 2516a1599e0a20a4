"""Trie-constrained softmax for training: each S-ID token is scored only against its valid siblings.

Why: at serving time the decoder may only follow the trie, so what matters is P(code | prefix, code is a valid
child), not the probability mass the model spreads over the ~4k text tokens and the codes no ad uses. Training
that conditional directly (MSCGRec's "constrained sequence learning") spends no capacity on impossible tokens, makes
the scores of a list a proper distribution over the live ads, and is ~17x cheaper than the full-vocabulary head
(a target is scored against <= 64 children instead of every token). The decoder scores the same way with
`ConstrainedBeamSearch.generate(..., renormalize=True)`; the checkpoint's recipe (model/recipe.py) records which of
the two scorings a model was trained for, so serving can never mix them up.

Targets are found from the labels alone: a run of consecutive labelled tokens is one or more S-IDs back to back
(the trie has a fixed depth D), so the parent of a labelled token is found by walking the trie from the root,
restarting every D tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from adgen.index.trie_arrays import TrieArrays

IGNORE = -100


class TrieTargetError(ValueError):
    """A labelled token sequence that is not a path of the trie (an ad missing from the S-ID index)."""


class TrieSoftmax:
    """Children table of a fixed-depth token trie and the loss over it."""

    def __init__(self, trie: TrieArrays) -> None:
        indptr = trie.indptr.cpu().numpy()
        tokens = trie.child_token.cpu().numpy()
        nodes = trie.child_node.cpu().numpy()
        self.depth = int(trie.max_depth)
        counts = indptr[1:] - indptr[:-1]
        width = max(int(counts.max()), 1)
        table = np.full((len(counts), width), -1, dtype=np.int64)
        self._child: dict[tuple[int, int], int] = {}
        for node in np.nonzero(counts)[0].tolist():
            a, b = int(indptr[node]), int(indptr[node + 1])
            table[node, : b - a] = tokens[a:b]
            self._child.update(zip(((node, int(t)) for t in tokens[a:b]), nodes[a:b].tolist(), strict=True))
        used = table[table >= 0]
        self.first_token = int(used.min()) if used.size else 0
        self.last_token = int(used.max()) if used.size else 0
        # children as offsets into the block of S-ID tokens [first_token, last_token] (contiguous by construction)
        self.children = torch.from_numpy(np.where(table >= 0, table - self.first_token, -1))

    def parents(self, labels: Sequence[int]) -> list[int]:
        """Parent trie node of every labelled position (-1 where the label is IGNORE)."""
        out = [-1] * len(labels)
        node, level = 0, 0
        previous_labelled = False
        for i, token in enumerate(labels):
            if token == IGNORE:
                previous_labelled = False
                continue
            if not previous_labelled or level == self.depth:
                node, level = 0, 0
            out[i] = node
            child = self._child.get((node, int(token)))
            if child is None:
                raise TrieTargetError(
                    f"label token {token} at position {i} is not a child of trie node {node}: the target is not an "
                    "S-ID of the index (an ad missing from it, or S-IDs from another index)"
                )
            node, level = child, level + 1
            previous_labelled = True
        return out

    def child(self, node: int, token: int) -> int:
        """The node `token` leads to from `node` (KeyError if it is not one of its children)."""
        return self._child[(node, token)]

    def _children_logprobs(
        self, hidden: torch.Tensor, output_weight: torch.Tensor, targets: torch.Tensor, parents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs over each parent's children [T, width], valid mask, index of the target among them)."""
        cand = self.children.to(parents.device)[parents]  # [T, width] offsets into the S-ID block
        valid = cand >= 0
        block = hidden @ output_weight[self.first_token : self.last_token + 1].T  # [T, block]: one small matmul
        logits = block.float().gather(1, cand.clamp(min=0)).masked_fill(~valid, float("-inf"))
        pick = (cand == (targets - self.first_token)[:, None]).float().argmax(dim=1)
        return torch.log_softmax(logits, dim=-1), valid, pick

    def token_logprobs(
        self, hidden: torch.Tensor, output_weight: torch.Tensor, targets: torch.Tensor, parents: torch.Tensor
    ) -> torch.Tensor:
        """log P(target | its parent, among the parent's valid children) per target token [T]."""
        logp, _, pick = self._children_logprobs(hidden, output_weight, targets, parents)
        return logp.gather(1, pick[:, None]).squeeze(1)

    def loss(
        self,
        hidden: torch.Tensor,
        output_weight: torch.Tensor,
        targets: torch.Tensor,
        parents: torch.Tensor,
        label_smoothing: float = 0.0,
        soft: torch.Tensor | None = None,
        soft_weight: float = 0.0,
        token_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of `targets` [T] among the children of `parents` [T], from hidden states [T, d].

        `soft` [T, width] (rows over the same child slots, summing to 1; all-zero rows = none) mixes in a teacher's
        distribution (model/distill.py): (1 - soft_weight) * hard + soft_weight * cross-entropy to the teacher.
        `token_weight` [T] makes it a weighted mean (model/target_weights.py)."""
        logp, valid, pick = self._children_logprobs(hidden, output_weight, targets, parents)
        nll = -logp.gather(1, pick[:, None]).squeeze(1)
        if label_smoothing > 0:  # smoothing spread over the valid children only
            uniform = -(logp.masked_fill(~valid, 0.0).sum(1) / valid.sum(1))
            nll = (1 - label_smoothing) * nll + label_smoothing * uniform
        if soft is not None and soft_weight > 0:
            soft = soft[:, : logp.shape[1]].to(logp.dtype)
            taught = -(soft * logp.masked_fill(~valid, 0.0)).sum(1)
            nll = torch.where(soft.sum(1) > 0, (1 - soft_weight) * nll + soft_weight * taught, nll)
        if token_weight is not None:
            token_weight = token_weight.to(nll.dtype)
            return (nll * token_weight).sum() / token_weight.sum().clamp(min=1e-12)
        return nll.mean()
