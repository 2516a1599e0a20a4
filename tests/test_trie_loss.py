"""Trie-constrained scoring: training loss over trie siblings, and the decoder's renormalised scores, both exact."""

from __future__ import annotations

import itertools

import pytest
import torch

from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm
from adgen.model.lm_training import IGNORE, SequenceExample, collate, response_logprobs, response_loss
from adgen.model.trie_loss import TrieSoftmax, TrieTargetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 48
# a ragged fixed-depth trie: not every prefix has every child, so renormalising matters
ITEMS = [s for s in itertools.product(range(10, 14), range(20, 23), range(30, 33)) if (s[0] + s[1] + s[2]) % 3]


@pytest.fixture(scope="module")
def tiny_lm():
    return build_lm(LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, init_std=0.2))


def trie() -> TrieArrays:
    return TrieArrays.from_sequences([list(s) for s in ITEMS], list(range(len(ITEMS))))


def children_logprob(model, prompt: list[int], item: tuple[int, ...], table: dict) -> float:
    """log P(item) as a product over levels of softmax restricted to the valid children (plain forward pass)."""
    ids = torch.tensor([prompt + list(item)])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    total, prefix = 0.0, ()
    for level, token in enumerate(item):
        allowed = sorted(table[prefix])
        row = logits[len(prompt) - 1 + level]
        total += float(row[token] - torch.logsumexp(row[allowed], 0))
        prefix = (*prefix, token)
    return total


def children_table() -> dict:
    table: dict[tuple[int, ...], set[int]] = {}
    for item in ITEMS:
        for level in range(len(item)):
            table.setdefault(item[:level], set()).add(item[level])
    return table


def test_parents_walk_back_to_back_sids_and_restart_after_unlabelled_tokens():
    soft = TrieSoftmax(trie())
    a, b = ITEMS[0], ITEMS[5]
    labels = [IGNORE, *a, *b, IGNORE, *a]
    parents = soft.parents(labels)
    assert parents[0] == -1 and parents[7] == -1
    assert parents[1] == parents[4] == parents[8] == 0  # every S-ID starts at the root
    assert parents[1:4] == parents[8:11]  # the same ad walks the same nodes wherever it sits
    assert len(set(parents[1:4])) == 3


def test_a_label_that_is_no_path_of_the_trie_is_a_clear_error():
    with pytest.raises(TrieTargetError, match="not an S-ID of the index"):
        TrieSoftmax(trie()).parents([10, 20, 40])


def test_training_loss_is_the_cross_entropy_among_valid_children(tiny_lm):
    soft, table = TrieSoftmax(trie()), children_table()
    prompt = [5, 6, 7]
    example = SequenceExample([*prompt, *ITEMS[3], *ITEMS[9]], [IGNORE] * 3 + [*ITEMS[3], *ITEMS[9]])
    batch = collate([example], pad_id=0, max_len=64, trie=soft)
    with torch.no_grad():
        loss = float(response_loss(tiny_lm, batch, soft))
    # the same numbers from plain forward passes: the second ad is scored after the first one's tokens
    first = children_logprob(tiny_lm, prompt, ITEMS[3], table)
    second = children_logprob(tiny_lm, [*prompt, *ITEMS[3]], ITEMS[9], table)
    assert loss == pytest.approx(-(first + second) / 6, rel=1e-4)
    with torch.no_grad():  # DPO's per-row sum scores the same way
        assert float(response_logprobs(tiny_lm, batch, soft)[0]) == pytest.approx(first + second, rel=1e-4)


def test_renormalised_beam_search_equals_brute_force_over_valid_children(tiny_lm):
    table = children_table()
    prompts = [[5, 6, 7, 8, 9], [4, 9]]
    results = ConstrainedBeamSearch(tiny_lm).generate(prompts, trie(), k=5, beams=len(ITEMS), renormalize=True)
    for prompt, got in zip(prompts, results, strict=True):
        exact = torch.tensor([children_logprob(tiny_lm, prompt, item, table) for item in ITEMS])
        top = exact.topk(5)
        assert [v for v, _ in got] == top.indices.tolist()
        assert torch.allclose(torch.tensor([s for _, s in got]), top.values, atol=1e-4)
    # a proper distribution over the valid ads: probabilities sum to one
    everything = ConstrainedBeamSearch(tiny_lm).generate(
        [[4, 9]], trie(), k=len(ITEMS), beams=len(ITEMS), renormalize=True
    )
    assert sum(torch.tensor([s for _, s in everything[0]]).exp().tolist()) == pytest.approx(1.0, abs=1e-4)


def test_truncating_a_sequence_drops_the_target_run_it_cuts_in_half():
    example = SequenceExample([1, 2, *ITEMS[0], 3, *ITEMS[1]], [IGNORE, IGNORE, *ITEMS[0], IGNORE, *ITEMS[1]])
    batch = collate([example], pad_id=0, max_len=6, trie=TrieSoftmax(trie()))  # keeps ITEMS[0][2:] + 3 + ITEMS[1]
    labels = batch.labels[0].tolist()
    assert labels[:2] == [IGNORE, IGNORE]  # the half S-ID is not a target any more
    assert labels[2:] == [IGNORE, *ITEMS[1]]
