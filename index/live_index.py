"""The decoder's side of a live S-ID map: one immutable version per ad batch, at a cost that follows the batch.

`LiveSidIndex` follows a `SemanticIdMap` through its change journal. `publish()` turns the adds and
removes since the last call into path changes of a `LiveTrie` (path copying, `live_trie.py`) and into an
update of a persistent ad -> leaf map (`immutables.Map`, a hash array mapped trie: an update copies
O(log n) small nodes and every earlier version stays valid). The result, `SidIndexVersion`, is immutable:
the worker swaps it in with one reference assignment, and a decode that started on a version finishes on
it. From the version that applies a delete on, the deleted ad is unreachable in the trie and absent from
`leaf_items`.

Leaf values are stable per (ad, insert): an insert takes the next free value and a remove leaves a hole,
so versions can share the value -> ad list, which only grows. When the holes outnumber the live ads, a
publish renumbers the values in S-ID order during a trie compaction (the layout of a rebuild, values
included) and starts a new list; older versions keep the old one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any

import immutables
import numpy as np

from adgen.index.live_trie import LiveTrie
from adgen.index.semantic_ids import SemanticIdMap, level_offsets
from adgen.index.trie_arrays import TrieArrays


class LiveAds(Set[str]):
    """The ads one version can return: a read-only set over that version's ad -> leaf map."""

    __slots__ = ("_leaf_of",)

    def __init__(self, leaf_of: immutables.Map[str, int]) -> None:
        self._leaf_of = leaf_of

    def __contains__(self, ad_id: object) -> bool:
        return ad_id in self._leaf_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._leaf_of)

    def __len__(self) -> int:
        return len(self._leaf_of)

    @classmethod
    def _from_iterable(cls, iterable: Iterable[str]) -> frozenset[str]:
        """Set operations (`&`, `|`, `-`) return plain frozensets."""
        return frozenset(iterable)


class LeafItems:
    """Leaf value -> ad id for one version. `len`, `in` and iteration cover that version's live ads only."""

    __slots__ = ("_ads", "_leaf_of")

    def __init__(self, ads: list[str], leaf_of: immutables.Map[str, int]) -> None:
        self._ads = ads  # shared with later versions, which only append to it
        self._leaf_of = leaf_of

    def __getitem__(self, leaf: int) -> str:
        ad_id = self._ads[leaf] if 0 <= leaf < len(self._ads) else None
        if ad_id is None or self._leaf_of.get(ad_id) != leaf:
            raise KeyError(f"leaf value {leaf} is no live ad in this index version")
        return ad_id

    def __len__(self) -> int:
        return len(self._leaf_of)

    def __contains__(self, ad_id: object) -> bool:
        return ad_id in self._leaf_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._leaf_of)

    def leaf_of(self, ad_id: str) -> int:
        return self._leaf_of[ad_id]

    @property
    def leaf_values(self) -> Mapping[str, int]:
        """Live ad id -> its leaf value (read-only; what per-prompt pool priors look ads up in)."""
        return self._leaf_of

    @property
    def live(self) -> LiveAds:
        return LiveAds(self._leaf_of)


@dataclass(frozen=True)
class SidIndexVersion:
    """One published version: the trie the decoder reads (None when no ad is live) and its leaves' ads."""

    map_version: int
    trie: TrieArrays | None
    leaf_items: LeafItems


class LiveSidIndex:
    """Keeps a trie and leaf -> ad lookups in step with a `SemanticIdMap`, batch by batch.

    One writer: the owner mutates the map, then calls `publish()` (both under its own lock); readers only
    take `current` (or the value `publish` returned), which never changes afterwards.
    """

    def __init__(self, sid_map: SemanticIdMap, token_offset: int = 0, min_renumber: int = 4096, **options: Any) -> None:
        self.sid_map = sid_map
        self.token_offset = token_offset
        self.min_renumber = min_renumber
        self._offsets = level_offsets(sid_map.codebook_sizes) + token_offset  # S-ID codes -> token ids
        sids, ads = sid_map.to_arrays()
        self._ads: list[str] = list(ads)
        self._leaf_of: immutables.Map[str, int] = immutables.Map(zip(ads, range(len(ads)), strict=True))
        self.trie = LiveTrie.build(sids.astype(np.int64) + self._offsets, np.arange(len(ads)), sid_map.depth, **options)
        sid_map.start_journal()
        self.current = self._version()

    def publish(self) -> SidIndexVersion:
        """Apply the map's changes since the last publish and return the new version (O(changes))."""
        changes = self.sid_map.take_journal()
        if not changes:
            return self.current
        latest: dict[tuple[int, ...], int] = {}  # S-ID -> leaf value, -1 = removed; the last change wins
        with self._leaf_of.mutate() as leaf_of:
            for ad_id, sid, added in changes:
                if added:
                    latest[sid] = leaf_of[ad_id] = len(self._ads)
                    self._ads.append(ad_id)
                else:
                    del leaf_of[ad_id]
                    latest[sid] = -1
            self._leaf_of = leaf_of.finish()
        paths = np.array(list(latest), dtype=np.int64).reshape(len(latest), -1) + self._offsets
        values = np.fromiter(latest.values(), dtype=np.int64, count=len(latest))
        holes = len(self._ads) - len(self._leaf_of)
        old_values = self.trie.apply(paths, values, renumber=holes > max(len(self._leaf_of), self.min_renumber))
        if old_values is not None:  # values are now ranks in S-ID order: new list, new map
            self._ads = [self._ads[v] for v in old_values.tolist()]
            self._leaf_of = immutables.Map(zip(self._ads, range(len(self._ads)), strict=True))
        self.current = self._version()
        return self.current

    def _version(self) -> SidIndexVersion:
        trie = self.trie.view() if self.trie.values else None
        return SidIndexVersion(self.sid_map.version, trie, LeafItems(self._ads, self._leaf_of))

    def nbytes(self) -> dict[str, int]:
        """The trie's array bytes (allocated / used / live) and the value -> ad list's pointer bytes."""
        return {**{f"trie_{k}": v for k, v in self.trie.nbytes().items()}, "leaf_list": 8 * len(self._ads)}
