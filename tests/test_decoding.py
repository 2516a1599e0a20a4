"""Constrained beam search: exact against brute-force scoring of every valid item, padding-safe, clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import PreTrainedModel

from adgen.index.trie_arrays import TrieArrays, TrieError
from adgen.model.decoding import ConstrainedBeamSearch, DecodingError
from adgen.model.lm import LMConfig, build_lm

VOCAB = 48
EOS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_lm() -> PreTrainedModel:
    # grouped-query attention (4 query heads over 2 K/V heads) exercises the head grouping path
    return build_lm(LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, init_std=0.2))


def brute_force(model: PreTrainedModel, prompt: list[int], sequences: list[list[int]]) -> torch.Tensor:
    """Log-probability of every sequence after the prompt, from plain full forward passes (no cache).

    Sequences of one length share a forward batch; there is no padding anywhere.
    """
    out = torch.empty(len(sequences))
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(i)
    with torch.no_grad():
        for length, rows in by_length.items():
            ids = torch.tensor([prompt + sequences[i] for i in rows])
            lp = model(ids).logits.float().log_softmax(-1)
            cols = torch.arange(len(prompt) - 1, len(prompt) - 1 + length)
            out[rows] = lp[:, cols].gather(2, ids[:, len(prompt) :, None]).squeeze(2).sum(1)
    return out


def fixed_depth_items() -> list[list[int]]:
    return [list(s) for s in itertools.product(range(10, 14), range(20, 23), range(30, 33))]  # 36 items, depth 3


def variable_length_items() -> list[list[int]]:
    # CI-style token sequences of different lengths, each ending in EOS
    return [[10, EOS], [10, 11, EOS], [10, 11, 12, EOS], [12, 15, EOS], [13, EOS], [14, 16, 17, 18, EOS], [16, 11, EOS]]


PROMPTS = [[5, 6, 7, 8, 9], [4, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 41, 42, 43]]


@pytest.mark.parametrize("items_fn", [fixed_depth_items, variable_length_items])
def test_top_k_equals_brute_force_when_beams_cover_all_items(tiny_lm, items_fn):
    items = items_fn()
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    k = 5
    results = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS, trie, k=k, beams=len(items))
    for prompt, got in zip(PROMPTS, results, strict=True):
        expected = brute_force(tiny_lm, prompt, items).topk(k)
        assert [v for v, _ in got] == expected.indices.tolist()
        assert torch.allclose(torch.tensor([s for _, s in got]), expected.values, atol=1e-4)


def test_per_level_log_probs_sum_to_the_item_score_and_match_brute_force(tiny_lm):
    items = fixed_depth_items()
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    search = ConstrainedBeamSearch(tiny_lm)
    values, levels = search.generate_levels(PROMPTS, trie, k=5, beams=len(items))
    scored = search.generate(PROMPTS, trie, k=5, beams=len(items))
    assert levels.shape == (len(PROMPTS), 5, 3)
    for prompt, row_values, row_levels, got in zip(PROMPTS, values, levels, scored, strict=True):
        assert row_values.tolist() == [v for v, _ in got]
        assert torch.allclose(row_levels.sum(-1), torch.tensor([s for _, s in got]), atol=1e-5)
        for value, per_level in zip(row_values.tolist(), row_levels, strict=True):
            seq = items[value]
            prefixes = [brute_force(tiny_lm, prompt, [seq[: d + 1]])[0] for d in range(3)]
            expected = torch.tensor([prefixes[0], prefixes[1] - prefixes[0], prefixes[2] - prefixes[1]])
            assert torch.allclose(per_level, expected, atol=1e-4)


# lengths within 25% of each other: one right-padded prefill batch (PROMPTS above are prefilled in groups)
CLOSE_PROMPTS = [list(range(5, 21)), [4, 9, *range(22, 33)], [*range(1, 10), *range(40, 45)]]  # 16, 13, 14 tokens


@pytest.mark.parametrize("prompts", [CLOSE_PROMPTS, PROMPTS], ids=["one-padded-batch", "length-groups"])
def test_prompt_alone_gives_the_same_result_as_inside_a_padded_batch(tiny_lm, prompts):
    items = fixed_depth_items()
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    search = ConstrainedBeamSearch(tiny_lm)
    batched = search.generate(prompts, trie, k=6, beams=8)
    for prompt, in_batch in zip(prompts, batched, strict=True):
        alone = search.generate([prompt], trie, k=6, beams=8)[0]
        assert [v for v, _ in alone] == [v for v, _ in in_batch]
        assert torch.allclose(torch.tensor([s for _, s in alone]), torch.tensor([s for _, s in in_batch]), atol=1e-5)


def test_k_larger_than_the_number_of_items_returns_each_item_once(tiny_lm):
    items = variable_length_items()
    trie = TrieArrays.from_sequences(items, [100 + i for i in range(len(items))])
    got = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS[:2], trie, k=20, beams=25)
    for row in got:
        values = [v for v, _ in row]
        assert sorted(values) == [100 + i for i in range(len(items))]
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
        assert all(s < 0 and s != float("-inf") for s in scores)


def test_narrow_beams_still_return_valid_distinct_items_with_true_scores(tiny_lm):
    items = fixed_depth_items()
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    got = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS, trie, k=3, beams=3)
    for prompt, row in zip(PROMPTS, got, strict=True):
        assert len({v for v, _ in row}) == 3
        exact = brute_force(tiny_lm, prompt, items)
        for v, s in row:
            assert abs(exact[v].item() - s) < 1e-4


def test_score_floor_drops_items_with_a_token_below_the_floor(tiny_lm):
    items = fixed_depth_items()
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    prompt = PROMPTS[0]
    with torch.no_grad():
        token_lps = []
        for seq in items:
            lp = tiny_lm(torch.tensor([prompt + seq])).logits[0].log_softmax(-1)
            token_lps.append([float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(seq)])
    # halfway between two distinct per-item minima near the median: no item sits on the boundary
    minima = torch.tensor([min(lps) for lps in token_lps]).unique()
    mid = len(minima) // 2
    floor = float(minima[mid - 1] + minima[mid]) / 2
    survivors = {i for i, lps in enumerate(token_lps) if min(lps) >= floor}
    assert 0 < len(survivors) < len(items)
    got = ConstrainedBeamSearch(tiny_lm).generate([prompt], trie, k=len(items), beams=len(items), score_floor=floor)
    assert {v for v, _ in got[0]} == survivors


def test_full_trie_constrained_search_matches_unconstrained_search(tiny_lm):
    # a trie containing every 2-token sequence makes the constraint a no-op
    items = [list(s) for s in itertools.product(range(VOCAB), repeat=2)]
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    search = ConstrainedBeamSearch(tiny_lm)
    constrained = search.generate(PROMPTS, trie, k=10, beams=10)
    free = search.generate_unconstrained(PROMPTS, steps=2, beams=10)
    for c_row, f_row in zip(constrained, free, strict=True):
        assert [tuple(items[v]) for v, _ in c_row] == [seq for seq, _ in f_row]
        assert torch.allclose(torch.tensor([s for _, s in c_row]), torch.tensor([s for _, s in f_row]), atol=1e-5)


def test_empty_trie_is_a_clear_error(tiny_lm):
    empty = TrieArrays(
        torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
        torch.full((1,), -1, dtype=torch.long), 0, 0,
    )  # fmt: skip
    with pytest.raises(TrieError, match="empty"):
        ConstrainedBeamSearch(tiny_lm).generate([[1, 2]], empty, k=1)


def test_trie_token_outside_the_vocabulary_is_a_clear_error(tiny_lm):
    trie = TrieArrays.from_sequences([[10, VOCAB + 5]], [0])
    with pytest.raises(TrieError, match=f"token id {VOCAB + 5}"):
        ConstrainedBeamSearch(tiny_lm).generate([[1, 2]], trie, k=1)


@pytest.mark.parametrize("prompt", [[1, VOCAB], [-1, 4], []])
def test_bad_prompt_is_a_clear_error(tiny_lm, prompt):
    trie = TrieArrays.from_sequences(fixed_depth_items(), list(range(36)))
    with pytest.raises(DecodingError, match="prompt 1"):
        ConstrainedBeamSearch(tiny_lm).generate([[1, 2], prompt], trie, k=2)


def test_beams_fewer_than_k_is_rejected(tiny_lm):
    trie = TrieArrays.from_sequences(fixed_depth_items(), list(range(36)))
    with pytest.raises(DecodingError, match="beams >= k"):
        ConstrainedBeamSearch(tiny_lm).generate([[1, 2]], trie, k=5, beams=4)


def test_chunked_batches_give_the_same_results(tiny_lm):
    trie = TrieArrays.from_sequences(fixed_depth_items(), list(range(36)))
    whole = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS, trie, k=4)
    chunked = ConstrainedBeamSearch(tiny_lm, max_batch_prompts=2).generate(PROMPTS, trie, k=4)
    assert [[v for v, _ in r] for r in whole] == [[v for v, _ in r] for r in chunked]
