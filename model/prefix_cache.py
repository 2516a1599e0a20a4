"""LRU cache of prompt K/V keyed by token-prefix hashes, so a repeated prompt prefix is prefilled only once.

In the nearline path a user's new prompt is mostly the previous one (same instruction and profile, one
more behaviour at the end). Each cached entry holds the K/V of one whole prompt. It is indexed under the
chained hash of every full `block_size`-token prefix of that prompt (hash_j = H(hash_{j-1} || block_j)),
like vLLM's block hashes. A lookup walks the new prompt's block hashes to the longest indexed prefix,
checks the tokens really match (no trust in hashes), extends the match token by token inside the entry,
and returns that many positions of K/V. Memory is bounded by `max_bytes`; least-recently-used entries go.

One cache serves one model: K/V from another checkpoint or dtype would be silently wrong, so the decoder
owns its cache (`ConstrainedBeamSearch(model, prefix_cache=PrefixKVCache(...))`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from adgen.model.decoding import PromptKV


@dataclass(frozen=True)
class CachedPrefix:
    """K/V of the first `length` tokens of a prompt: per layer [kv_heads, >= length, head_dim]."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


@dataclass
class _Entry:
    tokens: np.ndarray
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hashes: list[bytes]
    nbytes: int


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    inserted: int = 0
    evicted: int = 0
    superseded: int = 0


class PrefixKVCache:
    """Bounded LRU of prompt K/V; `lookup` returns the longest cached prefix (always < the prompt length)."""

    def __init__(self, max_bytes: int = 256 * 2**20, block_size: int = 16, min_reuse: int = 16) -> None:
        if block_size < 1 or max_bytes < 1:
            raise ValueError(f"block_size and max_bytes must be >= 1, got {block_size}, {max_bytes}")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.min_reuse = max(min_reuse, 1)
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._by_hash: dict[bytes, int] = {}
        self._next_id = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _block_hashes(self, tokens: np.ndarray, limit: int) -> list[bytes]:
        out: list[bytes] = []
        digest = b""
        bs = self.block_size
        data = tokens.astype(np.int64, copy=False)
        for j in range(limit // bs):
            digest = hashlib.blake2b(digest + data[j * bs : (j + 1) * bs].tobytes(), digest_size=16).digest()
            out.append(digest)
        return out

    def lookup(self, tokens: np.ndarray) -> CachedPrefix | None:
        """Longest cached prefix of `tokens`, leaving at least the last token to run (it gives the logits)."""
        limit = len(tokens) - 1
        with self._lock:
            self.stats.lookups += 1
            entry_id = None
            for digest in self._block_hashes(tokens, limit):
                found = self._by_hash.get(digest)
                if found is None:
                    break
                entry_id = found
            if entry_id is None:
                return None
            entry = self._entries[entry_id]
            n = min(limit, len(entry.tokens))
            diff = np.flatnonzero(entry.tokens[:n] != tokens[:n])
            length = int(diff[0]) if diff.size else n
            if length < self.min_reuse:
                return None
            self._entries.move_to_end(entry_id)
            self.stats.hits += 1
            self.stats.reused_tokens += length
            return CachedPrefix(length, entry.keys, entry.values)

    def insert_batch(self, prompts: list[np.ndarray], prompt_kv: PromptKV) -> None:
        """Store each prompt's K/V (the valid positions of its row in the batch's padded tensors)."""
        valid = prompt_kv.key_valid.cpu()
        for row, tokens in enumerate(prompts):
            pos = torch.nonzero(valid[row]).squeeze(1).to(prompt_kv.keys[0].device)
            keys = [k[row].index_select(1, pos) for k in prompt_kv.keys]
            values = [v[row].index_select(1, pos) for v in prompt_kv.values]
            self.insert(tokens, keys, values)

    def insert(self, tokens: np.ndarray, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Cache one prompt's K/V (per layer [kv_heads, len(tokens), head_dim])."""
        if len(tokens) < self.min_reuse:
            return
        tokens = np.array(tokens, dtype=np.int64, copy=True)
        nbytes = sum(t.numel() * t.element_size() for t in (*keys, *values))
        if nbytes > self.max_bytes:
            return
        hashes = self._block_hashes(tokens, len(tokens))
        with self._lock:
            # an entry whose tokens are a prefix of this prompt is superseded: this one holds its K/V too
            for old_id in {self._by_hash.get(d) for d in hashes} - {None}:
                old = self._entries[old_id]
                if len(old.tokens) <= len(tokens) and np.array_equal(old.tokens, tokens[: len(old.tokens)]):
                    self._remove(old_id)
                    self.stats.superseded += 1
            entry_id = self._next_id
            self._next_id += 1
            self._entries[entry_id] = _Entry(tokens, keys, values, hashes, nbytes)
            for digest in hashes:
                self._by_hash[digest] = entry_id
            self._bytes += nbytes
            self.stats.inserted += 1
            while self._bytes > self.max_bytes:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        self._remove(next(iter(self._entries)))
        self.stats.evicted += 1

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        for digest in entry.hashes:
            if self._by_hash.get(digest) == entry_id:
                del self._by_hash[digest]
        self._bytes -= entry.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_hash.clear()
            self._bytes = 0
