"""Semantic IDs: item id <-> (M semantic codes + 1 collision code), their tokens, and their trie.

The map is the live, mutable index: `add`/`remove` are O(1) dict and array updates (no rebuild), and
every mutation bumps `version`. The decoder never sees the mutable state: `trie_arrays()` materialises an
immutable `TrieArrays` per version with a vectorised build (`sid_trie.py`) and caches it until the next
mutation. Leaf values are ranks in S-ID order, so the arrays depend only on the current mapping, never on
the order of inserts and deletes: an incrementally maintained index equals a rebuild, bit for bit.
That rebuild costs O(catalogue); the worker instead follows the map's change journal (`start_journal`,
`take_journal`) with `LiveSidIndex` (`live_index.py`), which updates its trie per batch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from adgen.index.sid_trie import build_fixed_depth_trie
from adgen.index.trie_arrays import TrieArrays

LEVEL_NAMES = "abcdefgh"
"""Token prefix per level; the last level of a map is its collision code."""

_TOKEN = re.compile(r"<([a-h])_(\d+)>")


SidChange = tuple[str, tuple[int, ...], bool]
"""(item id, full S-ID, True = added / False = removed), in the order the map applied them."""


class SemanticIdError(ValueError):
    """A bad S-ID, an unknown item or S-ID, or a duplicate item."""


class CollisionOverflowError(SemanticIdError):
    """Every collision code under one semantic prefix is taken; the index needs a larger collision level."""


def sid_tokens(sid: Sequence[int]) -> list[str]:
    """(51, 10, 67, 93, 0) -> ["<a_51>", "<b_10>", "<c_67>", "<d_93>", "<e_0>"]."""
    if len(sid) > len(LEVEL_NAMES):
        raise SemanticIdError(f"S-ID {tuple(sid)} has {len(sid)} levels; at most {len(LEVEL_NAMES)} are supported")
    return [f"<{LEVEL_NAMES[level]}_{int(code)}>" for level, code in enumerate(sid)]


def sid_vocabulary(codebook_sizes: Sequence[int]) -> list[str]:
    """Every S-ID token, level-major then code order: position = global code id."""
    if len(codebook_sizes) > len(LEVEL_NAMES):
        raise SemanticIdError(f"{len(codebook_sizes)} levels; at most {len(LEVEL_NAMES)} are supported")
    return [f"<{LEVEL_NAMES[level]}_{code}>" for level, size in enumerate(codebook_sizes) for code in range(size)]


def parse_sid(text: str | Iterable[str]) -> tuple[int, ...]:
    """Inverse of `sid_tokens`: "<a_1><b_2><c_0>" (or its token list) -> (1, 2, 0)."""
    joined = text if isinstance(text, str) else "".join(text)
    found = _TOKEN.findall(joined)
    if not found or "".join(f"<{lv}_{c}>" for lv, c in found) != joined.replace(" ", ""):
        raise SemanticIdError(f"not an S-ID token string: {joined!r}")
    for level, (name, _) in enumerate(found):
        if name != LEVEL_NAMES[level]:
            raise SemanticIdError(f"S-ID {joined!r}: level {level} token must start with '<{LEVEL_NAMES[level]}_'")
    return tuple(int(c) for _, c in found)


def level_offsets(codebook_sizes: Sequence[int]) -> np.ndarray:
    """Global code id of (level l, code 0) = sum(codebook_sizes[:l])."""
    return np.concatenate([[0], np.cumsum(codebook_sizes)[:-1]]).astype(np.int64)


def global_leaf_map(sid_map: SemanticIdMap, headroom: float = 2.0) -> SemanticIdMap:
    """The same semantic codes, but each ad's last code is its own catalogue-wide number (item-id order).

    Why: with the usual collision code, the last token of an S-ID means different ads under different prefixes,
    so its output row is shared and an ad's identity is learnt only from its few occurrences as a target. A
    catalogue-wide leaf gives every ad a token of its own, seen in every history that holds the ad; with tied
    embeddings that one row is both how the model reads the ad and how it scores it (SASRec's item embedding),
    while the semantic prefix still groups similar ads. The leaf level gets `headroom` x the catalogue size.
    """
    sids, ids = sid_map.to_arrays()
    order = np.argsort(np.asarray(ids), kind="stable")
    leaves = np.empty(len(ids), dtype=sids.dtype)
    leaves[order] = np.arange(len(ids))
    size = max(16, 1 << max(int(headroom * len(ids)) - 1, 1).bit_length())
    sizes = (*sid_map.codebook_sizes[:-1], size)
    return SemanticIdMap.from_arrays(np.column_stack([sids[:, :-1], leaves]), ids, sizes, leaf_scope="global")


LeafScope = Literal["prefix", "global"]
"""Where a last code is unique: under its semantic prefix (a collision code) or in the whole map (an ad's own)."""


class SemanticIdMap:
    """item_id <-> S-ID, mutable and versioned; the last codebook size is the collision level's.

    With `leaf_scope="global"` (see `global_leaf_map`) a new item takes the lowest last code no item of the map
    holds, so a code never names two ads at once and a new ad never inherits a row another ad was trained on
    while that ad is live.
    """

    def __init__(self, codebook_sizes: Sequence[int], capacity: int = 1024, leaf_scope: LeafScope = "prefix") -> None:
        sizes = tuple(int(s) for s in codebook_sizes)
        if len(sizes) < 2 or len(sizes) > len(LEVEL_NAMES) or min(sizes) < 1:
            raise SemanticIdError(f"codebook_sizes must be 2..8 positive sizes (last = collision level), got {sizes}")
        self.codebook_sizes: tuple[int, ...] = sizes
        self.depth = len(sizes)
        self._bits = [max(1, (s - 1).bit_length()) for s in sizes]
        if sum(self._bits) > 63:
            raise SemanticIdError(f"codebook sizes {sizes} need {sum(self._bits)} bits per S-ID; at most 63 fit")
        self._shifts = [sum(self._bits[i + 1 :]) for i in range(self.depth)]
        self._codes = np.zeros((max(capacity, 1), self.depth), dtype=np.int32)
        self._item_at: list[str | None] = []  # row -> item id (None = free row)
        self._free_rows: list[int] = []
        self._row_of: dict[str, int] = {}
        self._row_of_sid: dict[int, int] = {}  # packed S-ID -> row
        self._used_collisions: dict[int, int] = {}  # packed semantic prefix -> bitmask of used collision codes
        self.leaf_scope: LeafScope = leaf_scope
        self._used_leaves = 0  # bitmask of every used last code (kept when leaf_scope is "global")
        self.version = 0
        self._materialised: dict[int, tuple[TrieArrays, list[str]]] = {}
        self._materialised_version = -1
        self._journal: list[SidChange] | None = None  # kept only while a follower drains it

    # -- keys ---------------------------------------------------------------------------------------
    def _pack(self, sid: Sequence[int]) -> int:
        key = 0
        for code, shift in zip(sid, self._shifts, strict=True):
            key |= int(code) << shift
        return key

    def _check_codes(self, codes: Sequence[int], levels: int, what: str) -> tuple[int, ...]:
        if len(codes) != levels:
            raise SemanticIdError(f"{what} {tuple(codes)} has {len(codes)} codes; this index expects {levels}")
        out = tuple(int(c) for c in codes)
        for level, code in enumerate(out):
            if not 0 <= code < self.codebook_sizes[level]:
                raise SemanticIdError(
                    f"{what} {out}: code {code} at level {level} is outside [0, {self.codebook_sizes[level]})"
                )
        return out

    # -- queries ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    def sid_of(self, item_id: str) -> tuple[int, ...]:
        row = self._row_of.get(item_id)
        if row is None:
            raise KeyError(f"item {item_id!r} is not in the semantic-ID index ({len(self)} items, v{self.version})")
        return tuple(int(c) for c in self._codes[row])

    def item_of(self, sid: Sequence[int]) -> str:
        sid = self._check_codes(sid, self.depth, "S-ID")
        row = self._row_of_sid.get(self._pack(sid))
        if row is None:
            raise KeyError(f"S-ID {sid} ({''.join(sid_tokens(sid))}) belongs to no item in index v{self.version}")
        return self._item_at[row]  # type: ignore[return-value]

    def items(self) -> list[str]:
        return sorted(self._row_of)

    # -- mutations ----------------------------------------------------------------------------------
    def add(self, item_id: str, codes: Sequence[int]) -> tuple[int, ...]:
        """Insert an item by its semantic codes (no collision code); returns its full S-ID."""
        if item_id in self._row_of:
            raise SemanticIdError(f"item {item_id!r} is already indexed as {self.sid_of(item_id)}; remove it first")
        semantic = self._check_codes(codes, self.depth - 1, "semantic codes")
        prefix = self._pack((*semantic, 0))
        used = self._used_collisions.get(prefix, 0)
        taken = self._used_leaves if self.leaf_scope == "global" else used
        collision = (~taken & (taken + 1)).bit_length() - 1  # lowest free code
        if collision >= self.codebook_sizes[-1]:
            where = (
                "last-level codes in the index"
                if self.leaf_scope == "global"
                else f"collision codes under semantic prefix {semantic}"
            )
            raise CollisionOverflowError(
                f"cannot index {item_id!r}: all {self.codebook_sizes[-1]} {where} are taken; "
                "rebuild with a larger collision level (or more/larger codebooks)"
            )
        self._used_collisions[prefix] = used | (1 << collision)
        if self.leaf_scope == "global":
            self._used_leaves |= 1 << collision
        sid = (*semantic, collision)
        row = self._free_rows.pop() if self._free_rows else self._new_row()
        self._codes[row] = sid
        self._item_at[row] = item_id
        self._row_of[item_id] = row
        self._row_of_sid[prefix | collision] = row
        self.version += 1
        if self._journal is not None:
            self._journal.append((item_id, sid, True))
        return sid

    def _new_row(self) -> int:
        row = len(self._item_at)
        if row == len(self._codes):
            grown = np.zeros((2 * len(self._codes), self.depth), dtype=np.int32)
            grown[:row] = self._codes
            self._codes = grown
        self._item_at.append(None)
        return row

    def remove(self, item_id: str) -> None:
        row = self._row_of.pop(item_id, None)
        if row is None:
            raise KeyError(f"cannot remove {item_id!r}: it is not in the semantic-ID index (v{self.version})")
        sid = self._codes[row]
        key = self._pack(sid)
        prefix = key - int(sid[-1])
        self._used_collisions[prefix] &= ~(1 << int(sid[-1]))
        if self.leaf_scope == "global":
            self._used_leaves &= ~(1 << int(sid[-1]))
        if not self._used_collisions[prefix]:
            del self._used_collisions[prefix]
        del self._row_of_sid[key]
        self._item_at[row] = None
        self._free_rows.append(row)
        self.version += 1
        if self._journal is not None:
            self._journal.append((item_id, tuple(int(c) for c in sid), False))

    # -- bulk ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, item_ids: Sequence[str], codes: np.ndarray, codebook_sizes: Sequence[int]) -> SemanticIdMap:
        """Index a whole catalogue. Collision codes go by item id order, so the result is reproducible.

        Vectorised, and equal to adding the items one by one in item-id order (the tests check it): the
        collision code of an ad is its rank, by item id, among the ads with the same semantic codes.
        """
        sid_map = cls(codebook_sizes, capacity=len(item_ids))
        n, semantic_levels = len(item_ids), sid_map.depth - 1
        if len(codes) != n:
            raise SemanticIdError(f"{n} item ids but {len(codes)} code rows")
        if n == 0:
            return sid_map
        codes = np.asarray(codes, dtype=np.int64).reshape(n, -1)
        if codes.shape[1] != semantic_levels:
            raise SemanticIdError(f"codes have {codes.shape[1]} levels; this index expects {semantic_levels}")
        for level in range(semantic_levels):
            bad = (codes[:, level] < 0) | (codes[:, level] >= sid_map.codebook_sizes[level])
            if bad.any():
                row = int(bad.argmax())
                raise SemanticIdError(
                    f"semantic codes {tuple(codes[row].tolist())} of {item_ids[row]!r}: code at level {level} is "
                    f"outside [0, {sid_map.codebook_sizes[level]})"
                )
        order = np.argsort(np.asarray(item_ids), kind="stable")
        ordered_ids = [item_ids[i] for i in order.tolist()]
        if len(set(ordered_ids)) != n:
            dup = next(a for a, b in itertools.pairwise(ordered_ids) if a == b)
            raise SemanticIdError(f"item {dup!r} appears more than once in the catalogue")
        semantic = codes[order]
        prefix = sid_map._pack_rows(semantic)
        by_prefix = np.argsort(prefix, kind="stable")  # stable: item-id order within a prefix
        sorted_prefix = prefix[by_prefix]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sorted_prefix[1:] != sorted_prefix[:-1]
        positions = np.arange(n)
        rank = np.empty(n, dtype=np.int64)
        rank[by_prefix] = positions - np.maximum.accumulate(np.where(starts, positions, 0))
        limit = sid_map.codebook_sizes[-1]
        if rank.max() >= limit:
            row = int((rank >= limit).argmax())
            raise CollisionOverflowError(
                f"cannot index {ordered_ids[row]!r}: all {limit} collision codes under semantic prefix "
                f"{tuple(semantic[row].tolist())} are taken; rebuild with a larger collision level (or more/larger "
                "codebooks)"
            )
        sid_map._codes[:n] = np.column_stack([semantic, rank])
        sid_map._item_at = list(ordered_ids)
        sid_map._row_of = dict(zip(ordered_ids, range(n), strict=True))
        sid_map._row_of_sid = dict(zip((prefix | rank).tolist(), range(n), strict=True))
        unique, counts = np.unique(prefix, return_counts=True)
        sid_map._used_collisions = {int(u): (1 << int(c)) - 1 for u, c in zip(unique, counts, strict=True)}
        sid_map.version = n
        return sid_map

    def _pack_rows(self, codes: np.ndarray) -> np.ndarray:
        """Vectorised `_pack` of rows holding the first codes.shape[1] levels (missing levels = 0)."""
        key = np.zeros(len(codes), dtype=np.int64)
        for level in range(codes.shape[1]):
            key |= codes[:, level].astype(np.int64) << self._shifts[level]
        return key

    def to_arrays(self) -> tuple[np.ndarray, list[str]]:
        """(S-IDs [N, depth] int32 in S-ID order, item ids in the same order): the canonical content."""
        rows = np.fromiter(self._row_of.values(), dtype=np.int64, count=len(self._row_of))
        codes = self._codes[rows]
        order = np.argsort(self._pack_rows(codes))  # packed keys sort like the code tuples
        return codes[order], [self._item_at[r] for r in rows[order]]  # type: ignore[misc]

    @classmethod
    def from_arrays(
        cls,
        sids: np.ndarray,
        item_ids: Sequence[str],
        codebook_sizes: Sequence[int],
        leaf_scope: LeafScope = "prefix",
    ) -> SemanticIdMap:
        """Restore a map saved by `to_arrays` keeping every S-ID (collision codes included) as it was."""
        sids = np.asarray(sids)
        if sids.ndim != 2 or len(sids) != len(item_ids):
            raise SemanticIdError(f"S-ID array of shape {sids.shape} does not match {len(item_ids)} item ids")
        sid_map = cls(codebook_sizes, capacity=len(item_ids), leaf_scope=leaf_scope)
        for item_id, sid in zip(item_ids, sids.tolist(), strict=True):
            sid_map._insert_exact(item_id, sid)
        return sid_map

    def _insert_exact(self, item_id: str, sid: Sequence[int]) -> None:
        sid = self._check_codes(sid, self.depth, "S-ID")
        key = self._pack(sid)
        if item_id in self._row_of or key in self._row_of_sid:
            raise SemanticIdError(f"duplicate item {item_id!r} or S-ID {sid} in saved index")
        if self.leaf_scope == "global":
            if self._used_leaves >> sid[-1] & 1:
                raise SemanticIdError(f"last code {sid[-1]} of {item_id!r} is held by another item (global leaves)")
            self._used_leaves |= 1 << sid[-1]
        prefix = key - sid[-1]
        self._used_collisions[prefix] = self._used_collisions.get(prefix, 0) | (1 << sid[-1])
        row = self._new_row()
        self._codes[row] = sid
        self._item_at[row] = item_id
        self._row_of[item_id] = row
        self._row_of_sid[key] = row
        self.version += 1
        if self._journal is not None:
            self._journal.append((item_id, sid, True))

    # -- change journal -----------------------------------------------------------------------------
    def start_journal(self) -> None:
        """Record every later add and remove until `take_journal` drains them (one follower at a time)."""
        self._journal = []

    def take_journal(self) -> list[SidChange]:
        """The changes since the last call (or since `start_journal`), oldest first."""
        if self._journal is None:
            raise SemanticIdError("no journal: call start_journal() before following this map's changes")
        changes, self._journal = self._journal, []
        return changes

    # -- decoder view -------------------------------------------------------------------------------
    def trie_arrays(self, token_offset: int = 0) -> tuple[TrieArrays, list[str]]:
        """Immutable trie over token ids (token_offset + global code id) and leaf value -> item id."""
        if self._materialised_version != self.version:
            self._materialised = {}
            self._materialised_version = self.version
        cached = self._materialised.get(token_offset)
        if cached is None:
            sids, item_ids = self.to_arrays()
            tokens = sids.astype(np.int64) + level_offsets(self.codebook_sizes) + token_offset
            trie = build_fixed_depth_trie(tokens, np.arange(len(item_ids)))
            cached = self._materialised[token_offset] = (trie, item_ids)
        return cached
