"""The prompt-prefix K/V cache: reuse never changes results, matches stop at the first differing token, LRU bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm
from adgen.model.prefix_cache import PrefixKVCache

VOCAB = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_lm() -> PreTrainedModel:
    return build_lm(LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, init_std=0.2))


@pytest.fixture(scope="module")
def trie() -> TrieArrays:
    items = [list(s) for s in itertools.product(range(10, 16), range(20, 25), range(30, 34))]
    return TrieArrays.from_sequences(items, list(range(len(items))))


def prompt(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(4, VOCAB, size=length).tolist()


def assert_same(a: list[list[tuple[int, float]]], b: list[list[tuple[int, float]]]) -> None:
    assert [[v for v, _ in r] for r in a] == [[v for v, _ in r] for r in b]
    flat_a = torch.tensor([s for r in a for _, s in r])
    flat_b = torch.tensor([s for r in b for _, s in r])
    assert torch.allclose(flat_a, flat_b, atol=1e-4)


def test_cached_prefixes_give_the_same_results_as_a_cold_prefill(tiny_lm, trie):
    first = [prompt(1, 40), prompt(2, 23), prompt(3, 70)]
    # the next requests: the same users with new behaviour appended, one unchanged, plus a new user
    second = [first[0] + prompt(4, 9), first[1], first[2] + prompt(5, 1), prompt(6, 35)]
    cold = ConstrainedBeamSearch(tiny_lm)
    cache = PrefixKVCache(block_size=8, min_reuse=8)
    warm = ConstrainedBeamSearch(tiny_lm, prefix_cache=cache)
    assert_same(warm.generate(first, trie, k=5, beams=6), cold.generate(first, trie, k=5, beams=6))
    assert cache.stats.hits == 0 and len(cache) == 3
    assert_same(warm.generate(second, trie, k=5, beams=6), cold.generate(second, trie, k=5, beams=6))
    assert cache.stats.hits == 3
    # whole earlier prompts are reused; an identical prompt re-runs only its last token
    assert warm.timings.cached_tokens == 40 + 22 + 70


def test_a_prompt_that_diverges_mid_block_reuses_exactly_the_common_prefix(tiny_lm):
    cache = PrefixKVCache(block_size=8, min_reuse=4)
    base = np.array(prompt(7, 32))
    kv = [torch.randn(2, 32, 4) for _ in range(2)]
    cache.insert(base, kv, kv)
    changed = base.copy()
    changed[13] = (changed[13] + 1) % VOCAB
    hit = cache.lookup(changed)
    assert hit is not None and hit.length == 13
    assert cache.lookup(np.array(prompt(8, 32))) is None  # different first block: no hit


def test_a_longer_prompt_supersedes_the_cached_prompt_it_extends():
    cache = PrefixKVCache(block_size=8, min_reuse=8)
    first = np.array(prompt(30, 32))
    longer = np.concatenate([first, prompt(31, 10)])
    other = np.array(prompt(32, 32))
    for p in (first, other):
        cache.insert(p, [torch.zeros(2, len(p), 4)], [torch.zeros(2, len(p), 4)])
    cache.insert(longer, [torch.ones(2, len(longer), 4)], [torch.ones(2, len(longer), 4)])
    assert len(cache) == 2 and cache.stats.superseded == 1
    hit = cache.lookup(np.concatenate([first, [5]]))
    assert hit is not None and hit.length == 32 and float(hit.keys[0].sum()) > 0  # served by the longer entry
    assert cache.lookup(np.concatenate([other, [5]])) is not None


def test_lru_stays_within_its_byte_budget_and_evicts_the_least_recently_used(tiny_lm):
    entry_bytes = 2 * 2 * (2 * 32 * 4) * 4  # (k + v) x layers x [heads, tokens, dim] x float32
    cache = PrefixKVCache(max_bytes=3 * entry_bytes, block_size=8, min_reuse=8)
    prompts = [np.array(prompt(20 + i, 32)) for i in range(4)]
    kv = [torch.zeros(2, 32, 4) for _ in range(2)]
    for p in prompts[:3]:
        cache.insert(p, kv, kv)
    assert cache.lookup(prompts[0]) is not None  # touch the oldest, so prompts[1] is now least recent
    cache.insert(prompts[3], kv, kv)
    assert cache.nbytes <= 3 * entry_bytes and len(cache) == 3
    assert cache.lookup(prompts[1]) is None
    assert all(cache.lookup(p) is not None for p in (prompts[0], prompts[2], prompts[3]))
    assert cache.stats.evicted == 1
