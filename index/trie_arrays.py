"""A trie over token-id sequences as flat CSR arrays, so decoding constraints are a few tensor ops.

This is the one contract between the index (which builds and mutates tries) and the decoder (which reads
them). Node 0 is the root. A node's children are `child_token[indptr[n]:indptr[n+1]]` (sorted ascending)
leading to `child_node[...]`. A node with no children is a leaf and `leaf_value[n]` holds its value (an
item ordinal); internal nodes hold -1. Every internal node has at least one child, so a beam that follows
the trie can always finish.

A trie maintained by path copying (`index/live_trie.py`) shares its arrays between versions: each version
starts at its own `root` and only the nodes reachable from it belong to it; `values` then counts its leaves.
A freshly built trie has root 0 and every leaf in the arrays is its own (`values` None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class TrieError(ValueError):
    """An invalid trie or an invalid use of one (empty trie, token outside the vocabulary)."""


@dataclass(frozen=True)
class TrieArrays:
    indptr: torch.Tensor  # int64 [num_nodes + 1]
    child_token: torch.Tensor  # int64 [num_edges]
    child_node: torch.Tensor  # int64 [num_edges]
    leaf_value: torch.Tensor  # int64 [num_nodes], -1 for internal nodes
    max_depth: int
    max_children: int
    root: int = 0  # the node every search starts from
    values: int | None = None  # leaves reachable from `root` when the arrays hold other versions' nodes too

    @property
    def num_nodes(self) -> int:
        """Nodes in the arrays (for a shared-array version: its own and older versions' copies)."""
        return int(self.leaf_value.numel())

    @property
    def num_values(self) -> int:
        """Items this trie can return."""
        return int((self.leaf_value >= 0).sum()) if self.values is None else self.values

    def to(self, device: torch.device | str) -> TrieArrays:
        return TrieArrays(
            self.indptr.to(device),
            self.child_token.to(device),
            self.child_node.to(device),
            self.leaf_value.to(device),
            self.max_depth,
            self.max_children,
            self.root,
            self.values,
        )

    def _children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded edge indices [M, max_children] for `nodes` and the validity mask."""
        start = self.indptr[nodes]
        count = self.indptr[nodes + 1] - start
        offsets = torch.arange(max(self.max_children, 1), device=nodes.device)
        valid = offsets.unsqueeze(0) < count.unsqueeze(1)
        edges = (start.unsqueeze(1) + offsets.unsqueeze(0)).clamp(max=max(self.child_token.numel() - 1, 0))
        return edges, valid

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Boolean [M, vocab_size]: True where the token continues a valid sequence from that node."""
        edges, valid = self._children(nodes)
        tokens = torch.where(valid, self.child_token[edges], torch.zeros_like(edges))
        mask = torch.zeros(nodes.numel(), vocab_size, dtype=torch.bool, device=nodes.device)
        mask.scatter_(1, tokens, valid)
        return mask

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child node reached from each node by each token, or -1 where the token is not allowed."""
        edges, valid = self._children(nodes)
        hit = valid & (self.child_token[edges] == tokens.unsqueeze(1))
        found = hit.any(dim=1)
        idx = hit.to(torch.int8).argmax(dim=1)
        child = self.child_node[edges.gather(1, idx.unsqueeze(1)).squeeze(1)]
        return torch.where(found, child, torch.full_like(child, -1))

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], values: Sequence[int]) -> TrieArrays:
        """Build from token sequences (one per value). No sequence may be a proper prefix of another."""
        if len(sequences) != len(values):
            raise TrieError(f"{len(sequences)} sequences but {len(values)} values")
        if not sequences:
            raise TrieError("cannot build a trie from zero sequences: the catalogue is empty")
        children: list[dict[int, int]] = [{}]
        leaf: list[int] = [-1]
        depth = 0
        for seq, value in zip(sequences, values, strict=True):
            if not seq:
                raise TrieError(f"empty token sequence for value {value}")
            node = 0
            for tok in seq:
                if tok < 0:
                    raise TrieError(f"negative token id {tok} in sequence for value {value}")
                if leaf[node] >= 0:
                    raise TrieError(f"sequence for value {value} extends the sequence of value {leaf[node]}")
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf.append(-1)
                node = nxt
            if children[node]:
                raise TrieError(f"sequence for value {value} is a prefix of another sequence")
            if leaf[node] >= 0:
                raise TrieError(f"duplicate sequence {list(seq)} for values {leaf[node]} and {value}")
            leaf[node] = int(value)
            depth = max(depth, len(seq))
        counts = np.fromiter((len(c) for c in children), dtype=np.int64, count=len(children))
        indptr = np.zeros(len(children) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        tok_arr = np.empty(int(indptr[-1]), dtype=np.int64)
        node_arr = np.empty(int(indptr[-1]), dtype=np.int64)
        for n, c in enumerate(children):
            if c:
                items = sorted(c.items())
                tok_arr[indptr[n] : indptr[n + 1]] = [t for t, _ in items]
                node_arr[indptr[n] : indptr[n + 1]] = [v for _, v in items]
        return cls(
            torch.from_numpy(indptr),
            torch.from_numpy(tok_arr),
            torch.from_numpy(node_arr),
            torch.tensor(leaf, dtype=torch.int64),
            depth,
            int(counts.max()) if counts.size else 0,
        )
