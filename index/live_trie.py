"""A fixed-depth trie kept as append-only CSR arrays, changed by path copying, published as immutable views.

Why: rebuilding the CSR trie of a million S-IDs costs seconds, and the worker used to do it for every ad
batch. Here a batch copies only the nodes on the paths it changes: each copy gets a new node id with its
child block appended after the last used edge (so `indptr[n]..indptr[n+1]` stays the block of node n, the
decoder's contract), and the batch ends with a new root. Nothing that a published version can reach is
ever written again, so a version is just the used prefix of the arrays plus its root: publishing is O(1),
and a decode that holds version N reads version N to the end, however many batches follow.

The copies that later batches replace are garbage. When they outweigh the live trie, a compaction
relabels the live nodes of the current version breadth-first into fresh arrays (a few vectorised gathers
per level; the layout `build_fixed_depth_trie` produces). It reads only that immutable version, so it
runs in a background thread while batches go on; the next batch after it finishes adopts the fresh
arrays and replays the batches applied meanwhile. Published versions keep the old arrays.

Exactness: children stay sorted by token and `max_children` is kept exact (a histogram of the live nodes'
child counts), so the decoder's candidate layout, and so every score and every tie-break, is that of a
trie rebuilt from the same sequences and values; only node ids differ (tests/test_live_index.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from adgen.index.sid_trie import build_fixed_depth_trie
from adgen.index.trie_arrays import TrieArrays, TrieError

Path = tuple[int, ...]
"""One sequence's tokens, root to leaf (length = the trie's depth)."""

_EMPTY = np.zeros(0, dtype=np.int64)
_TOKEN_LIMIT = 1 << 32  # a batch keys (node, token) pairs as node << 32 | token
_TOKEN_MASK = _TOKEN_LIMIT - 1


@dataclass
class _Arrays:
    """A compact trie (root 0, every node live) in arrays with spare capacity, plus its counters."""

    indptr: np.ndarray
    token: np.ndarray
    child: np.ndarray
    leaf: np.ndarray
    nodes: int
    edges: int
    count_hist: np.ndarray  # [c] = internal nodes with c children; [0] unused
    values: int
    old_values: np.ndarray | None = None  # set when leaf values were renumbered


class LiveTrie:
    """The writer's side: `apply` a batch of path changes, `view` the current version.

    One writer at a time (the caller serialises batches); any number of readers hold views.
    """

    def __init__(
        self,
        trie: TrieArrays,
        headroom: float = 1.1,
        min_garbage_edges: int = 4096,
        background: bool = True,
    ) -> None:
        """Adopt a freshly built trie (root 0, every node live); an empty trie is a childless root.

        `headroom`: spare capacity after a build or compaction, as a share of the live trie; compaction
        starts once garbage exceeds the live edges, so above 1 the arrays do not regrow in between.
        `background`: compact in a thread (False: inside the batch that triggers it, e.g. for tests).
        """
        if trie.root != 0 or trie.values is not None:
            raise TrieError("LiveTrie starts from a freshly built trie (root 0, no other versions' nodes)")
        self.depth = trie.max_depth
        self.headroom = headroom
        self.min_garbage_edges = min_garbage_edges
        self.background = background
        self.compactions = 0
        self._pending: Future[_Arrays] | None = None
        self._replay: list[tuple[np.ndarray, np.ndarray]] = []
        arrays = (trie.indptr.numpy(), trie.child_token.numpy(), trie.child_node.numpy(), trie.leaf_value.numpy())
        self._adopt(_with_capacity(*arrays, headroom=headroom))

    @classmethod
    def build(cls, tokens: np.ndarray, values: np.ndarray, depth: int, **options: float) -> LiveTrie:
        """From sequences [N, depth] (N may be 0) and their leaf values."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1, depth)
        if len(tokens) == 0:
            return cls(_empty_trie(depth), **options)
        return cls(build_fixed_depth_trie(tokens, np.asarray(values, dtype=np.int64)), **options)

    # -- state ----------------------------------------------------------------------------------------
    def _adopt(self, arrays: _Arrays) -> None:
        self._indptr, self._token, self._child, self._leaf = arrays.indptr, arrays.token, arrays.child, arrays.leaf
        self._nodes, self._edges, self._root = arrays.nodes, arrays.edges, 0
        self._count_hist = arrays.count_hist
        self._live_edges = arrays.edges
        self._values = arrays.values

    @property
    def values(self) -> int:
        """Leaves reachable from the current root."""
        return self._values

    @property
    def max_children(self) -> int:
        """The widest live node's number of children (what a rebuild reports)."""
        wide = np.flatnonzero(self._count_hist[1:])
        return int(wide[-1]) + 1 if len(wide) else 0

    @property
    def garbage_edges(self) -> int:
        """Edges of node copies no later version can reach (freed by the next compaction)."""
        return self._edges - self._live_edges

    @property
    def compacting(self) -> bool:
        return self._pending is not None

    def nbytes(self) -> dict[str, int]:
        """Bytes of the arrays: allocated, used (every version's nodes) and live (the current version's).

        Live nodes = live edges + 1: every node but the root is the target of exactly one live edge.
        """
        allocated = sum(a.nbytes for a in (self._indptr, self._token, self._child, self._leaf))
        return {
            "allocated": allocated,
            "used": 16 * (self._nodes + self._edges) + 8,
            "live": 16 * (self._live_edges + 1 + self._live_edges) + 8,
        }

    def view(self) -> TrieArrays:
        """The current version: the used prefix of the arrays and its root (no copy)."""
        n, e = self._nodes, self._edges
        return TrieArrays(
            torch.from_numpy(self._indptr[: n + 1]),
            torch.from_numpy(self._token[:e]),
            torch.from_numpy(self._child[:e]),
            torch.from_numpy(self._leaf[:n]),
            self.depth,
            self.max_children,
            root=self._root,
            values=self._values,
        )

    # -- batches --------------------------------------------------------------------------------------
    def apply(self, paths: np.ndarray, values: np.ndarray, renumber: bool = False) -> np.ndarray | None:
        """Set the leaf value of each path [C, depth] (unique rows) to `values` [C], or remove it (-1).

        Removing an absent path is a no-op. Cost: the child blocks of the nodes on the changed paths, each
        copied once per batch, in a few vectorised steps per level. With `renumber`, the trie is compacted
        now with leaf values 0..n-1 in path order, and the old values are returned in their new order
        (new value i held old value returned[i]); otherwise None.
        """
        paths = np.asarray(paths, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        if paths.ndim != 2 or paths.shape[1] != self.depth or len(paths) != len(values):
            raise TrieError(
                f"expected paths [C, {self.depth}] and values [C], got {list(paths.shape)} and {list(values.shape)}"
            )
        if len(paths) and ((paths < 0).any() or (paths >= _TOKEN_LIMIT).any()):
            raise TrieError(f"token ids must be in [0, {_TOKEN_LIMIT}), got {paths.min()}..{paths.max()}")
        if (values < -1).any():
            raise TrieError("leaf values must be >= 0 (or -1 to remove a path)")
        if self._pending is not None and (renumber or self._pending.done()):
            self.wait()
        if len(paths):
            self._apply_paths(paths, values)
            if self._pending is not None:
                self._replay.append((paths, values))
        if renumber:
            return self.compact(renumber=True)
        if self._pending is None and self.garbage_edges > max(self._live_edges, self.min_garbage_edges):
            if self.background:
                self._start_background_compaction()
            else:
                self.compact()
        return None

    def _apply_paths(self, paths: np.ndarray, values: np.ndarray) -> None:
        """Batched path copying, level by level: find the nodes on the paths, then copy them bottom-up."""
        order = np.lexsort(paths.T[::-1])
        paths, values = paths[order], values[order]
        rows, depth = paths.shape
        # a group at depth d = the rows sharing their first d tokens (one node); starts[:, d-1] opens one
        starts = np.ones((rows, depth), dtype=bool)
        starts[1:] = np.logical_or.accumulate(paths[1:] != paths[:-1], axis=1)
        if not starts[:, -1].all():
            raise TrieError(f"path {paths[np.argmin(starts[:, -1])].tolist()} appears twice in one batch")
        group = [np.zeros(rows, dtype=np.int64)] + [np.cumsum(starts[:, d]) - 1 for d in range(depth)]
        first = [np.zeros(1, dtype=np.int64)] + [np.flatnonzero(starts[:, d]) for d in range(depth)]
        old = [np.array([self._root], dtype=np.int64)]  # top-down: the node each group has now (-1: none)
        for d in range(1, depth + 1):
            old.append(self._find_children(old[d - 1][group[d - 1][first[d]]], paths[first[d], d - 1]))
        adding = values >= 0
        self._values += int(adding.sum()) - int((old[depth] >= 0).sum())
        new = np.full(rows, -1, dtype=np.int64)
        new[adding] = self._append_nodes(_EMPTY, _EMPTY, np.zeros(int(adding.sum()), dtype=np.int64), values[adding])
        for d in range(depth - 1, -1, -1):  # bottom-up: each touched node is copied once
            below = first[d + 1]
            new = self._copy_nodes(old[d], group[d][below], paths[below, d], new)
        if new[0] >= 0:
            self._root = int(new[0])
        else:  # every path removed: an empty root
            self._root = int(self._append_nodes(_EMPTY, _EMPTY, np.zeros(1, dtype=np.int64), np.full(1, -1))[0])

    def _find_children(self, parents: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The child of each parent by token, -1 where there is none (or no parent): one padded gather."""
        found = np.full(len(parents), -1, dtype=np.int64)
        has = parents >= 0
        if not has.any():
            return found
        nodes = parents[has]
        start = self._indptr[nodes]
        count = self._indptr[nodes + 1] - start
        slot = np.arange(max(int(count.max()), 1))
        edges = np.minimum(start[:, None] + slot, max(self._edges - 1, 0))
        hit = (slot < count[:, None]) & (self._token[edges] == tokens[has][:, None])
        child = self._child[edges[np.arange(len(nodes)), hit.argmax(axis=1)]]
        found[has] = np.where(hit.any(axis=1), child, -1)
        return found

    def _copy_nodes(self, old: np.ndarray, owner: np.ndarray, tokens: np.ndarray, new_child: np.ndarray) -> np.ndarray:
        """Copy nodes `old` [G] (-1: a new node) with child `tokens` [J] of group `owner` [J] set to
        `new_child` [J] (-1: removed). Returns the copies' ids, -1 for a node left without children."""
        groups = len(old)
        has = old >= 0
        node = np.where(has, old, 0)
        start = np.where(has, self._indptr[node], 0)
        count = np.where(has, self._indptr[node + 1] - start, 0)
        edge = np.arange(int(count.sum()), dtype=np.int64) + np.repeat(start - (np.cumsum(count) - count), count)
        # (group, token) keys order edges exactly like the blocks: by group, then by token
        old_keys = (np.repeat(np.arange(groups, dtype=np.int64), count) << 32) | self._token[edge]
        change_keys = (owner << 32) | tokens  # sorted: the rows are in path order
        pos = np.minimum(np.searchsorted(change_keys, old_keys), len(change_keys) - 1)
        keep = change_keys[pos] != old_keys
        added = new_child >= 0
        kept_keys, add_keys = old_keys[keep], change_keys[added]
        at = np.searchsorted(kept_keys, add_keys)  # merge two sorted runs (no full sort)
        keys = np.insert(kept_keys, at, add_keys)
        kids = np.insert(self._child[edge[keep]], at, new_child[added])
        new_count = np.bincount(keys >> 32, minlength=groups)
        self._live_edges -= len(edge)
        self._hist_add(count[has], -1)
        ids = np.full(groups, -1, dtype=np.int64)
        nonempty = new_count > 0
        ids[nonempty] = self._append_nodes(keys & _TOKEN_MASK, kids, new_count[nonempty], None)
        return ids

    def _append_nodes(
        self, tokens: np.ndarray, children: np.ndarray, counts: np.ndarray, values: np.ndarray | None
    ) -> np.ndarray:
        """New nodes with consecutive child blocks (`counts` edges each; leaves: 0 and a value >= 0)."""
        nodes, edges = len(counts), len(tokens)
        self._reserve(nodes, edges)
        node, start = self._nodes, self._edges
        self._token[start : start + edges] = tokens
        self._child[start : start + edges] = children
        self._indptr[node + 1 : node + 1 + nodes] = start + np.cumsum(counts)
        self._leaf[node : node + nodes] = -1 if values is None else values
        self._nodes, self._edges = node + nodes, start + edges
        self._live_edges += edges
        self._hist_add(counts, 1)
        return np.arange(node, node + nodes, dtype=np.int64)

    def _hist_add(self, counts: np.ndarray, sign: int) -> None:
        """Count (sign 1) or uncount (-1) internal nodes by their number of children; 0 (leaves) is ignored."""
        by_count = np.bincount(counts)
        if len(by_count) > len(self._count_hist):
            self._count_hist = np.concatenate([self._count_hist, np.zeros(len(by_count), dtype=np.int64)])
        self._count_hist[: len(by_count)] += sign * by_count

    def _reserve(self, nodes: int, edges: int) -> None:
        """Grow by copying into larger arrays: published views keep the old ones, which nobody writes again."""
        if self._nodes + nodes > len(self._leaf):
            cap = max(2 * len(self._leaf), self._nodes + nodes)
            self._indptr = _grown(self._indptr, cap + 1, 0, self._nodes + 1)
            self._leaf = _grown(self._leaf, cap, -1, self._nodes)
        if self._edges + edges > len(self._token):
            cap = max(2 * len(self._token), self._edges + edges)
            self._token = _grown(self._token, cap, 0, self._edges)
            self._child = _grown(self._child, cap, 0, self._edges)

    # -- compaction -----------------------------------------------------------------------------------
    def compact(self, renumber: bool = False) -> np.ndarray | None:
        """Compact now (after any background compaction finished); see `compacted`."""
        self.wait()
        arrays = compacted(self.view(), self.headroom, renumber)
        self._adopt(arrays)
        self.compactions += 1
        return arrays.old_values

    def _start_background_compaction(self) -> None:
        future: Future[_Arrays] = Future()
        snapshot = self.view()  # immutable: the thread reads only cells no batch writes again

        def run() -> None:
            try:
                future.set_result(compacted(snapshot, self.headroom, renumber=False))
            except BaseException as exc:  # surfaced by the next batch, in the writer
                future.set_exception(exc)

        self._pending, self._replay = future, []
        threading.Thread(target=run, name="live-trie-compaction", daemon=True).start()

    def wait(self) -> None:
        """Adopt a running background compaction (blocking until it is done) and replay the batches since."""
        if self._pending is None:
            return
        pending, replay = self._pending, self._replay
        self._pending, self._replay = None, []
        self._adopt(pending.result())
        self.compactions += 1
        for paths, values in replay:
            self._apply_paths(paths, values)


def compacted(trie: TrieArrays, headroom: float, renumber: bool) -> _Arrays:
    """The nodes reachable from the trie's root relabelled breadth-first, children in token order.

    Vectorised: one pass per level gathers the frontier's child blocks. With `renumber`, leaf values
    become 0..n-1 in path order and `old_values` holds the previous ones in that order.
    """
    indptr, token, child, leaf = (t.numpy() for t in (trie.indptr, trie.child_token, trie.child_node, trie.leaf_value))
    frontier = np.array([trie.root], dtype=np.int64)
    counts_per_level: list[np.ndarray] = []
    tokens_per_level: list[np.ndarray] = []
    for _ in range(trie.max_depth):
        starts = indptr[frontier]
        counts = indptr[frontier + 1] - starts
        first = np.cumsum(counts) - counts  # where each node's block lands in this level's edges
        edge = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - first, counts)
        counts_per_level.append(counts)
        tokens_per_level.append(token[edge])
        frontier = child[edge]
        if len(edge) == 0:  # an empty root
            break
    leaves = frontier
    counts = np.concatenate([*counts_per_level, np.zeros(len(leaves), dtype=np.int64)])
    nodes = len(counts)
    new_indptr = np.zeros(nodes + 1, dtype=np.int64)
    np.cumsum(counts, out=new_indptr[1:])
    new_leaf = np.full(nodes, -1, dtype=np.int64)
    old_values = leaf[leaves]
    new_leaf[nodes - len(leaves) :] = np.arange(len(leaves)) if renumber else old_values
    arrays = _with_capacity(
        new_indptr, np.concatenate(tokens_per_level), np.arange(1, nodes, dtype=np.int64), new_leaf, headroom
    )
    arrays.old_values = old_values if renumber else None
    return arrays


def _with_capacity(
    indptr: np.ndarray, token: np.ndarray, child: np.ndarray, leaf: np.ndarray, headroom: float
) -> _Arrays:
    nodes, edges = len(leaf), len(token)
    cap_nodes = max(int(nodes * (1 + headroom)), nodes + 64)
    cap_edges = max(int(edges * (1 + headroom)), edges + 64)
    return _Arrays(
        indptr=_grown(indptr, cap_nodes + 1, 0, nodes + 1),
        token=_grown(token, cap_edges, 0, edges),
        child=_grown(child, cap_edges, 0, edges),
        leaf=_grown(leaf, cap_nodes, -1, nodes),
        nodes=nodes,
        edges=edges,
        count_hist=np.bincount(np.diff(indptr)),
        values=int((leaf >= 0).sum()),
    )


def _grown(array: np.ndarray, size: int, fill: int, used: int) -> np.ndarray:
    out = np.empty(size, dtype=array.dtype)
    out[:used] = array[:used]
    out[used:] = fill
    return out


def _empty_trie(depth: int) -> TrieArrays:
    """A childless root: what a trie of zero sequences is while it waits for its first insert."""
    return TrieArrays(
        torch.zeros(2, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.full((1,), -1, dtype=torch.int64),
        depth,
        0,
    )


def trie_paths(trie: TrieArrays) -> list[tuple[Path, int]]:
    """(path, leaf value) for every leaf reachable from the trie's root, depth first in token order."""
    indptr, token, child, leaf = (t.numpy() for t in (trie.indptr, trie.child_token, trie.child_node, trie.leaf_value))
    out: list[tuple[Path, int]] = []
    stack: list[tuple[int, Path]] = [(trie.root, ())]
    while stack:
        node, prefix = stack.pop()
        start, end = int(indptr[node]), int(indptr[node + 1])
        if start == end:
            if prefix:
                out.append((prefix, int(leaf[node])))
            continue
        for e in range(end - 1, start - 1, -1):
            stack.append((int(child[e]), (*prefix, int(token[e]))))
    return out
