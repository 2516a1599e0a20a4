"""Frequency-aware loss weights (model/target_weights.py): rare target ads weigh more, mean weight 1."""

import numpy as np
import pytest
import torch
from sid_sequences import labelled

from adgen.index.semantic_ids import SemanticIdMap
from adgen.model.distill import TriePaths
from adgen.model.lm_training import IGNORE, SequenceExample, collate
from adgen.model.target_weights import with_target_weights
from adgen.model.trie_loss import TrieSoftmax

OFFSET = 10
ADS = ["a", "b", "c", "d"]
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])


@pytest.fixture(scope="module")
def setup():
    sid_map = SemanticIdMap.build(ADS, CODES, (2, 2, 4))
    trie, leaf_items = sid_map.trie_arrays(OFFSET)
    softmax = TrieSoftmax(trie)
    return sid_map, softmax, TriePaths(trie, leaf_items, softmax, leaf_items)


def sequence(sid_map: SemanticIdMap, ads: list[str]) -> SequenceExample:
    return SequenceExample(*labelled(sid_map, ads, OFFSET))


def test_each_targets_tokens_weigh_its_count_to_the_minus_power_with_mean_one(setup) -> None:
    sid_map, softmax, paths = setup
    examples = [sequence(sid_map, ["a", "a", "b"]), sequence(sid_map, ["a", "c"])]  # a: 3 times, b and c: once
    weighted = with_target_weights(examples, softmax, paths, power=1.0)
    raw = {"a": 1 / 4, "b": 1 / 2, "c": 1 / 2}
    mean = (3 * raw["a"] + raw["b"] + raw["c"]) / 5
    depth = paths.depth
    assert np.allclose(weighted[0].weights, np.repeat([raw["a"] / mean, raw["a"] / mean, raw["b"] / mean], depth))
    assert np.allclose(weighted[1].weights, np.repeat([raw["a"] / mean, raw["c"] / mean], depth))
    all_targets = np.concatenate([w.weights[::depth] for w in weighted])
    assert np.isclose(all_targets.mean(), 1.0)
    unweighted = with_target_weights(examples, softmax, paths, power=0.0)
    assert all(np.allclose(w.weights, 1.0) for w in unweighted)


def test_weights_reach_the_loss_as_a_weighted_mean(setup) -> None:
    sid_map, softmax, paths = setup
    example = with_target_weights([sequence(sid_map, ["a", "a", "c"])], softmax, paths, power=1.0)[0]
    batch = collate([example], pad_id=0, max_len=64, trie=softmax)
    assert batch.token_weight is not None and torch.allclose(batch.token_weight, torch.from_numpy(example.weights))
    torch.manual_seed(0)
    targets = batch.labels[:, 1:][batch.labels[:, 1:] != IGNORE]
    parents = batch.parents[:, 1:][batch.labels[:, 1:] != IGNORE]
    hidden, out = torch.randn(len(targets), 4), torch.randn(32, 4)
    per_token = torch.stack(
        [softmax.loss(hidden[i : i + 1], out, targets[i : i + 1], parents[i : i + 1]) for i in range(len(targets))]
    )
    w = batch.token_weight
    weighted = softmax.loss(hidden, out, targets, parents, token_weight=w)
    assert torch.allclose(weighted, (per_token * w).sum() / w.sum(), atol=1e-6)
    assert not torch.allclose(weighted, per_token.mean())


def test_a_negative_power_is_refused(setup) -> None:
    sid_map, softmax, paths = setup
    with pytest.raises(ValueError, match="power"):
        with_target_weights([sequence(sid_map, ["a"])], softmax, paths, power=-0.5)
