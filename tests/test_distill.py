"""Teacher targets for distillation (model/distill.py): SASRec's next-ad mass, spread over trie siblings."""

import numpy as np
import pytest
import sid_sequences
import torch

from adgen.core.catalogue import HistoryEvent, SplitExample
from adgen.index.semantic_ids import SemanticIdMap
from adgen.model.baselines import SASRecConfig, SASRecRecommender
from adgen.model.distill import EnsembleTeacher, TriePaths, soft_targets
from adgen.model.lm_training import IGNORE, SequenceExample, collate
from adgen.model.trie_loss import TrieSoftmax

OFFSET = 10  # token id of the first S-ID token
ADS = ["a", "b", "c", "d", "e"]
CODES = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 1]])  # d and e share their semantic codes


@pytest.fixture(scope="module")
def setup():
    sid_map = SemanticIdMap.build(ADS, CODES, (2, 2, 4))
    trie, leaf_items = sid_map.trie_arrays(OFFSET)
    softmax = TrieSoftmax(trie)
    teacher = SASRecRecommender([*ADS, "gone"], SASRecConfig(hidden=8, blocks=1, heads=1, max_len=4, seed=3))
    teacher.net.eval()
    return sid_map, softmax, teacher, TriePaths(trie, leaf_items, softmax, teacher.items)


def labelled(sid_map: SemanticIdMap, ads: list[str]) -> tuple[list[int], list[int]]:
    return sid_sequences.labelled(sid_map, ads, OFFSET)


def test_teacher_rows_are_the_teacher_mass_under_each_sibling_given_the_earlier_ads(setup) -> None:
    sid_map, softmax, teacher, paths = setup
    ads = ["a", "d", "c", "e"]
    _, labels = labelled(sid_map, ads)
    soft = soft_targets(teacher, labels, softmax, paths)
    assert soft.shape == (len(ads) * 3, softmax.children.shape[1])
    assert not soft[:3].any()  # the first ad has no earlier ads: no teacher
    assert np.allclose(soft[3:].sum(1), 1.0, atol=1e-5)
    with torch.no_grad():  # brute force: the teacher's distribution after "a" (the target is "d")
        p = torch.softmax(teacher.net.scores(teacher.net(torch.tensor([[teacher.index["a"]]]))[0, -1]), -1).numpy()
    prob = dict(zip(teacher.items, p, strict=True))
    first = [prob["a"] + prob["b"], prob["c"] + prob["d"] + prob["e"]]  # level 0: code 0 vs code 1 ("gone" has none)
    assert np.allclose(soft[3, :2], np.array(first) / sum(first), atol=1e-5)
    under_1 = [prob["c"], prob["d"] + prob["e"]]  # level 1 under code 1
    assert np.allclose(soft[4, :2], np.array(under_1) / sum(under_1), atol=1e-5)
    leaves = [prob["d"], prob["e"]]  # collision level under (1, 1): d is code 0, e is code 1
    assert np.allclose(soft[5, :2], np.array(leaves) / sum(leaves), atol=1e-5)


def test_collate_keeps_the_teacher_rows_of_the_labels_a_left_cut_kept(setup) -> None:
    sid_map, softmax, teacher, paths = setup
    ids, labels = labelled(sid_map, ["a", "d", "c", "e"])
    soft = soft_targets(teacher, labels, softmax, paths)
    # the cut falls inside the second ad's S-ID, so its last two tokens lose their labels too
    batch = collate([SequenceExample(ids, labels, soft)], pad_id=0, max_len=len(ids) - 6, trie=softmax)
    kept = int((batch.labels[:, 1:] != IGNORE).sum())
    assert kept == 6 and batch.soft is not None and torch.equal(batch.soft, torch.from_numpy(soft[-kept:]))
    plain = collate([SequenceExample(ids, labels)], pad_id=0, max_len=len(ids), trie=softmax)
    assert plain.soft is None


def test_a_teacher_row_moves_the_loss_and_weight_zero_ignores_it(setup) -> None:
    _, softmax, _, _ = setup
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 4), torch.randn(16, 4)
    targets = torch.tensor([OFFSET, OFFSET + 2])
    parents = torch.tensor([0, 1])
    soft = torch.zeros(2, softmax.children.shape[1])
    soft[0, 1] = 1.0  # the teacher puts all mass on the other child of the root
    hard = softmax.loss(hidden, weight, targets, parents)
    assert torch.equal(softmax.loss(hidden, weight, targets, parents, soft=soft, soft_weight=0.0), hard)
    mixed = softmax.loss(hidden, weight, targets, parents, soft=soft, soft_weight=0.5)
    logp = torch.log_softmax(hidden[0] @ weight[[OFFSET, OFFSET + 1]].T, -1)
    expected = (0.5 * -logp[0] + 0.5 * -logp[1] + (hard * 2 - -logp[0])) / 2  # row 1 has no teacher: hard only
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_an_ad_the_teacher_does_not_know_keeps_its_place_in_the_sequence(setup) -> None:
    _, _, teacher, _ = setup
    probs = teacher.next_probs(["a", "unknown", "d"])
    assert probs.shape == (3, len(teacher.items)) and torch.allclose(probs.sum(1), torch.ones(3))
    assert not torch.allclose(probs[2], teacher.next_probs(["a", "d"])[1])  # the gap is padding, not dropped


def test_an_ensemble_teacher_is_the_mean_of_its_members_distributions(setup) -> None:
    sid_map, softmax, teacher, paths = setup
    other = SASRecRecommender([*ADS, "gone"], SASRecConfig(hidden=8, blocks=1, heads=1, max_len=4, seed=4))
    other.net.eval()
    ensemble = EnsembleTeacher([teacher, other])
    sequence = ["a", "d", "c"]
    expected = (teacher.next_probs(sequence) + other.next_probs(sequence)) / 2
    assert torch.allclose(ensemble.next_probs(sequence), expected)
    _, labels = labelled(sid_map, [*sequence, "e"])
    soft = soft_targets(ensemble, labels, softmax, paths)  # usable wherever one SASRec is
    assert np.allclose(soft[3:].sum(1), 1.0, atol=1e-5)
    assert not np.allclose(soft, soft_targets(teacher, labels, softmax, paths))
    histories = [["a", "d"], ["c"]]
    users = [
        SplitExample(
            user_id=f"u{n}", history=[HistoryEvent(ts=t, kind="ad_click", ref=ad) for t, ad in enumerate(h)], target="a"
        )
        for n, h in enumerate(histories)
    ]
    mean = (teacher.last_probs(users) + other.last_probs(users)) / 2
    assert torch.allclose(ensemble.last_probs(users), mean)
    best = [[ensemble.items[i] for i in row] for row in mean.topk(3, dim=-1).indices.tolist()]
    assert ensemble.recommend(users, 3) == best
    shuffled = SASRecRecommender(["gone", *ADS], SASRecConfig(hidden=8, blocks=1, heads=1, max_len=4, seed=4))
    with pytest.raises(ValueError, match="candidate list"):
        EnsembleTeacher([teacher, shuffled])
