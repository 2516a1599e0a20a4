"""The next-ad head (model/ad_head.py): its training targets and loss, and the prior that re-ranks the beam's ads."""

from __future__ import annotations

import itertools

import pytest
import torch

from adgen.index.trie_arrays import TrieArrays
from adgen.model.ad_head import AdPrior
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm
from adgen.model.lm_training import IGNORE, SequenceExample, ad_head_targets, collate, response_loss
from adgen.model.recipe import ServingRecipe
from tests.test_decoding import PROMPTS, brute_force

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 48
AD_BLOCK = (40, 46)  # six known ads; token 46 plays <ad_unk>
UNK = 46
ITEMS = [list(s) for s in itertools.product(range(10, 14), range(20, 23), range(30, 33))]  # 36 S-IDs, depth 3


@pytest.fixture(scope="module")
def tiny_lm():
    return build_lm(LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, init_std=0.2))


def test_targets_sit_on_each_run_start_and_name_the_ad_token_after_the_run():
    ids = [5, 10, 20, 30, 41, 6, 11, 21, 31, UNK, 7, 12, 22, 32]
    labels = [IGNORE, 10, 20, 30, IGNORE, IGNORE, 11, 21, 31, IGNORE, IGNORE, 12, 22, 32]
    got = ad_head_targets(ids, labels, AD_BLOCK)
    # run 1 is followed by <ad_1> (index 1); run 2 by <ad_unk> (no target); run 3 ends the sequence (no target)
    assert got == [-1, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]


def test_the_head_adds_its_weighted_cross_entropy_over_the_ad_block_only(tiny_lm):
    ids = [5, 10, 20, 30, 41, 6, 11, 21, 31, 44, 7]
    labels = [IGNORE, 10, 20, 30, IGNORE, IGNORE, 11, 21, 31, IGNORE, IGNORE]
    batch = collate([SequenceExample(ids, labels)], pad_id=0, max_len=64, ad_block=AD_BLOCK)
    base = response_loss(tiny_lm, batch)
    with_head = response_loss(tiny_lm, batch, ad_head=(AD_BLOCK, 0.5))
    with torch.no_grad():
        hidden = tiny_lm.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0]
        block = hidden @ tiny_lm.get_output_embeddings().weight[40:46].T
        # the states before each S-ID's first code (positions 0 and 5) must name ads 1 and 4
        expected = torch.nn.functional.cross_entropy(block[[0, 5]], torch.tensor([1, 4]))
    assert torch.allclose(with_head - base, 0.5 * expected, atol=1e-5)
    tiny_lm.zero_grad()
    (with_head - base).backward()
    grad = tiny_lm.get_output_embeddings().weight.grad
    assert grad[40:46].abs().sum() > 0 and grad[:40].abs().sum() == 0 and grad[46:].abs().sum() == 0
    tiny_lm.zero_grad()


def test_an_ad_head_without_its_targets_in_the_batch_is_a_clear_error(tiny_lm):
    batch = collate([SequenceExample([5, 10, 20, 30, 41], [IGNORE, 10, 20, 30, IGNORE])], pad_id=0, max_len=64)
    with pytest.raises(ValueError, match="ad block"):
        response_loss(tiny_lm, batch, ad_head=(AD_BLOCK, 1.0))


class _Tokens:
    """The AdTokens surface AdPrior reads: ads a0..a5 own tokens 40..45, every other ad is <ad_unk>."""

    block = AD_BLOCK

    def id_of(self, ad_id: str) -> int:
        i = int(ad_id[1:])
        return 40 + i if i < 6 else UNK


@pytest.mark.parametrize("weight", [0.0, 1.0, 4.0])
def test_the_prior_ranks_the_beam_pool_by_s_id_score_plus_weighted_ad_log_prob(tiny_lm, weight):
    trie = TrieArrays.from_sequences(ITEMS, list(range(len(ITEMS))))
    prior = AdPrior.build(((v, f"a{v}") for v in range(len(ITEMS))), _Tokens(), weight)
    k = 5
    got = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS, trie, k=k, beams=len(ITEMS), ad_prior=prior)
    changed = 0
    for prompt, row in zip(PROMPTS, got, strict=True):
        sid = brute_force(tiny_lm, prompt, ITEMS)
        with torch.no_grad():
            last = tiny_lm(torch.tensor([prompt])).logits[0, -1].float()
        ad_lp = last[40:46].log_softmax(-1)
        prior_of = torch.cat([ad_lp, ad_lp.median().expand(len(ITEMS) - 6)])  # ads 6.. have no token: the median
        expected = (sid + weight * prior_of).topk(k)
        assert [v for v, _ in row] == expected.indices.tolist()
        assert torch.allclose(torch.tensor([s for _, s in row]), expected.values, atol=1e-4)
        changed += [v for v, _ in row] != sid.topk(k).indices.tolist()
    if weight >= 4.0:
        assert changed > 0  # the prior is strong enough here to move ads: the check above is not vacuous


def test_a_recipe_with_a_prior_but_no_ad_vocabulary_is_refused():
    with pytest.raises(ValueError, match="ad_prior_weight"):
        ServingRecipe(ad_prior_weight=1.0)
    assert ServingRecipe(ad_prior_weight=1.0, ad_vocabulary=["a0"]).ad_prior_weight == 1.0


def test_a_pipeline_with_an_ad_head_but_no_ad_tokens_is_refused():
    from adgen.model.pipeline import PipelineConfig

    base = {"name": "x", "out_dir": "var/x", "data": {"source": "amazon", "path": "data"}}
    with pytest.raises(ValueError, match="ad_id_tokens"):
        PipelineConfig(**base, train={"ad_head_weight": 1.0})
    with pytest.raises(ValueError, match="ad_id_tokens"):
        PipelineConfig(**base, eval={"ad_prior_weight": 1.0})
    PipelineConfig(**base, prompts={"ad_id_tokens": True}, train={"ad_head_weight": 1.0})
