import pytest
import torch

from adgen.index.trie_arrays import TrieArrays, TrieError


def _trie() -> TrieArrays:
    return TrieArrays.from_sequences([[5, 1, 9], [5, 2, 9], [7, 1, 8]], [10, 11, 12])


def test_allowed_mask_lists_exactly_the_children() -> None:
    trie = _trie()
    mask = trie.allowed_mask(torch.tensor([0]), vocab_size=12)
    assert mask[0].nonzero().flatten().tolist() == [5, 7]


def test_walking_a_sequence_reaches_its_leaf_value() -> None:
    trie = _trie()
    node = torch.tensor([0, 0])
    for toks in ([5, 7], [2, 1], [9, 8]):
        node = trie.step(node, torch.tensor(toks))
    assert trie.leaf_value[node].tolist() == [11, 12]
    assert trie.allowed_mask(node, 12).sum().item() == 0


def test_disallowed_token_steps_to_minus_one() -> None:
    trie = _trie()
    assert trie.step(torch.tensor([0]), torch.tensor([6])).tolist() == [-1]


def test_prefix_and_empty_inputs_are_refused() -> None:
    with pytest.raises(TrieError, match="prefix"):
        TrieArrays.from_sequences([[1, 2, 3], [1, 2]], [0, 1])
    with pytest.raises(TrieError, match="empty"):
        TrieArrays.from_sequences([], [])
