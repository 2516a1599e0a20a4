"""Vectorised CSR construction for fixed-depth token sequences (every S-ID has the same length).

`TrieArrays.from_sequences` walks Python dicts, which costs tens of seconds per million ads. S-IDs all
have depth D, so after one lexicographic sort a row starts a new node at depth d exactly where its first
d+1 tokens differ from the previous row's; node ids, parents and CSR offsets then follow from cumsums.
Nodes are numbered breadth-first, so the k-th edge always leads to node k+1.
"""

from __future__ import annotations

import numpy as np
import torch

from adgen.index.trie_arrays import TrieArrays, TrieError


def build_fixed_depth_trie(tokens: np.ndarray, values: np.ndarray) -> TrieArrays:
    """A trie over the rows of `tokens` [N, D] (non-negative ids), the leaf of row i holding `values[i]`."""
    tokens = np.asarray(tokens, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise TrieError(f"expected a token matrix [N, D] with D >= 1, got shape {tokens.shape}")
    if len(tokens) == 0:
        raise TrieError("cannot build a trie from zero sequences: the catalogue is empty")
    if len(values) != len(tokens):
        raise TrieError(f"{len(tokens)} sequences but {len(values)} values")
    if (tokens < 0).any():
        row = int(np.argwhere(tokens < 0)[0, 0])
        raise TrieError(f"negative token id in sequence for value {int(values[row])}")
    n, depth = tokens.shape
    if _is_sorted(tokens):  # callers that keep S-ID order (SemanticIdMap) skip the sort
        t, v = tokens, values
    else:
        order = np.lexsort(tokens.T[::-1])
        t, v = tokens[order], values[order]
    starts = np.ones((n, depth), dtype=bool)
    starts[1:] = np.logical_or.accumulate(t[1:] != t[:-1], axis=1)
    if not starts[:, -1].all():
        row = int(np.argmin(starts[:, -1]))
        raise TrieError(f"duplicate sequence {t[row].tolist()} for values {int(v[row - 1])} and {int(v[row])}")
    per_depth = starts.sum(axis=0)
    first_id = 1 + np.concatenate([[0], np.cumsum(per_depth)[:-1]])
    node_at = first_id + np.cumsum(starts, axis=0) - 1  # [N, D]: node of row i at depth d+1
    parent_at = np.concatenate([np.zeros((n, 1), dtype=np.int64), node_at[:, :-1]], axis=1)
    sel = starts.T  # edges depth-major, then in sorted row order: parents ascend, tokens ascend per parent
    parents = parent_at.T[sel]
    child_token = t.T[sel]
    num_nodes = 1 + int(per_depth.sum())
    child_count = np.bincount(parents, minlength=num_nodes)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(child_count, out=indptr[1:])
    leaf_value = np.full(num_nodes, -1, dtype=np.int64)
    leaf_value[node_at[:, -1]] = v
    return TrieArrays(
        torch.from_numpy(indptr),
        torch.from_numpy(np.ascontiguousarray(child_token)),
        torch.arange(1, num_nodes, dtype=torch.int64),
        torch.from_numpy(leaf_value),
        depth,
        int(child_count.max()),
    )


def _is_sorted(tokens: np.ndarray) -> bool:
    """Rows in non-decreasing lexicographic order (equal rows are left for the duplicate check)."""
    if len(tokens) < 2:
        return True
    diff = tokens[1:] - tokens[:-1]
    first = (diff != 0).argmax(axis=1)
    return bool((diff[np.arange(len(diff)), first] >= 0).all())


def trie_nbytes(trie: TrieArrays) -> int:
    """Bytes held by the trie's tensors (what a decoder keeps resident per index version)."""
    tensors = (trie.indptr, trie.child_token, trie.child_node, trie.leaf_value)
    return sum(t.numel() * t.element_size() for t in tensors)
