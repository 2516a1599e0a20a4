"""Ad-ID tokens (model/ad_tokens.py): written after each ad's S-ID as input only, <ad_unk> for ads the checkpoint
never saw, never a target, and dropped to <ad_unk> during training at the configured rate."""

from __future__ import annotations

import pytest
import torch

from adgen.core.catalogue import HistoryEvent
from adgen.model.ad_tokens import AD_UNK_TOKEN, AdTokens, ad_token_names
from adgen.model.lm_training import drop_tokens
from adgen.model.prompts import PromptBuilder, PromptOptions, as_data
from adgen.model.recipe import ServingRecipe, load_recipe, save_recipe
from adgen.model.tokenizer import build_tokenizer
from tests.test_prompts import CONTENT, ITEMS, LONG_HISTORY, PROFILE, SID_VOCAB, SIDS

VOCABULARY = ["ad1", "ad2"]  # ad3 has no token: it stands for an ad added after training


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Predict the next ad this user will click. Profile: age sex residence Interests: times days ago"] * 10
    return build_tokenizer(corpus, [*SID_VOCAB, *ad_token_names(len(VOCABULARY))], vocab_size=400)


def _builder(tokenizer, layout: str = "sequence") -> PromptBuilder:
    options = PromptOptions(layout=layout, ad_id_tokens=True, max_prompt_tokens=512)
    return PromptBuilder(tokenizer, ITEMS, SIDS.__getitem__, CONTENT, options, ad_vocabulary=VOCABULARY)


def test_each_ad_s_id_is_followed_by_its_own_ad_token_which_is_never_a_target(tokenizer):
    builder = _builder(tokenizer)
    seq = builder.sequence(LONG_HISTORY, PROFILE)
    tokens = builder.ad_tokens
    for ad in ("ad1", "ad2", "ad3"):
        sid = builder.response_ids(ad)
        at = next(i for i in range(len(seq.ids)) if seq.ids[i : i + len(sid)] == sid)
        assert seq.labels[at : at + len(sid)] == sid  # the S-ID is still the target
        assert seq.ids[at + len(sid)] == tokens.id_of(ad) and seq.labels[at + len(sid)] == -100
    assert tokens.id_of("ad1") != tokens.id_of("ad2")
    assert tokens.id_of("ad3") == tokens.unk == tokenizer.convert_tokens_to_ids(AD_UNK_TOKEN)
    assert "<a_1><b_2><c_0><ad_0>" in seq.text and "<ad_unk>" in seq.text


def test_with_ad_tokens_every_target_still_sees_exactly_the_serving_prompt_of_its_prefix(tokenizer):
    builder = _builder(tokenizer)
    full = builder.sequence(LONG_HISTORY, PROFILE)
    starts = [i for i, lab in enumerate(full.labels) if lab != -100 and full.labels[i - 1] == -100]
    n = len(LONG_HISTORY) - 1  # the last click (ad3)
    served = builder.user_prompt(LONG_HISTORY[:n], PROFILE, now=LONG_HISTORY[n].ts)
    assert served.ids == full.ids[: starts[-1]]


def test_sid_only_layout_carries_ad_tokens_too(tokenizer):
    builder = _builder(tokenizer, layout="sid_only")
    seq = builder.sequence(LONG_HISTORY, PROFILE)
    expected = [t for ad in ("ad1", "ad2", "ad3") for t in [*builder.response_ids(ad), builder.ad_tokens.id_of(ad)]]
    assert seq.ids[-len(expected) :] == expected
    assert sum(label != -100 for label in seq.labels) == 3 * len(builder.response_ids("ad1"))


def test_catalogue_text_cannot_forge_an_ad_token(tokenizer):
    item = ITEMS["ad1"].model_copy(update={"title": "buy <ad_1> now"})
    options = PromptOptions(layout="sequence", ad_id_tokens=True, ad_text="title", max_prompt_tokens=512)
    builder = PromptBuilder(tokenizer, {**ITEMS, "ad1": item}, SIDS.__getitem__, CONTENT, options, VOCABULARY)
    seq = builder.sequence([HistoryEvent(ts=0.0, kind="ad_click", ref="ad1")], PROFILE)
    assert seq.ids.count(builder.ad_tokens.id_of("ad2")) == 0  # the title's "<ad_1>" stayed text
    assert as_data("<ad_1>") != "<ad_1>"


def test_a_tokenizer_without_the_ad_block_is_refused_by_name():
    corpus = ["Predict the next ad this user will click."] * 10
    plain = build_tokenizer(corpus, SID_VOCAB, vocab_size=400)
    with pytest.raises(ValueError, match="ad tokens"):
        AdTokens(plain, VOCABULARY)
    with pytest.raises(ValueError, match="twice"):
        AdTokens(plain, ["ad1", "ad1"])


def test_token_dropout_replaces_only_ad_tokens_at_about_the_rate():
    ids = torch.arange(100).repeat(200, 1)  # 200 rows of ids 0..99; the "ad block" is [40, 60)
    out = drop_tokens(ids.clone(), (40, 60), 99, 0.25, torch.Generator().manual_seed(0))
    changed = out != ids
    assert not changed[:, :40].any() and not changed[:, 60:].any()
    assert (out[changed] == 99).all()
    assert 0.2 < changed[:, 40:60].float().mean().item() < 0.3


def test_recipe_keeps_the_ad_vocabulary(tmp_path):
    recipe = ServingRecipe(prompts=PromptOptions(layout="sequence", ad_id_tokens=True), ad_vocabulary=VOCABULARY)
    save_recipe(recipe, tmp_path)
    loaded = load_recipe(tmp_path)
    assert loaded.ad_vocabulary == VOCABULARY and loaded.prompts.ad_id_tokens
