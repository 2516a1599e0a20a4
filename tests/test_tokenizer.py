"""Tokenizer: S-ID tokens are single, contiguous ids matching the trie's token_offset contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from adgen.model.tokenizer import (
    SOFT_PROMPT_TOKEN,
    TokenizerError,
    build_tokenizer,
    extend_tokenizer,
    load_tokenizer,
    save_tokenizer,
    soft_prompt_id,
    token_offset,
)

SID_VOCAB = [f"<{lvl}_{c}>" for lvl, n in zip("abcd", (8, 8, 8, 3), strict=True) for c in range(n)]
CORPUS = ["The name of the ad is red running shoes", "3 days ago^click^blue widget", "sports^12 times"] * 20


def test_sid_tokens_get_contiguous_ids_in_vocabulary_order():
    tok = build_tokenizer(CORPUS, SID_VOCAB, vocab_size=400)
    offset = token_offset(tok, SID_VOCAB)
    assert tok.convert_tokens_to_ids(SID_VOCAB) == list(range(offset, offset + len(SID_VOCAB)))
    assert soft_prompt_id(tok) == offset - 1
    assert len(tok) == offset + len(SID_VOCAB)


def test_sid_tokens_and_soft_prompt_encode_as_single_tokens_and_round_trip():
    tok = build_tokenizer(CORPUS, SID_VOCAB, vocab_size=400)
    text = f"{SOFT_PROMPT_TOKEN} 2 days ago^click^<a_5><b_0><c_7><d_2>"
    ids = tok(text, add_special_tokens=False).input_ids
    offset = token_offset(tok, SID_VOCAB)
    assert ids[0] == soft_prompt_id(tok)
    assert ids[-4:] == [offset + 5, offset + 8 + 0, offset + 16 + 7, offset + 24 + 2]
    assert tok.decode(ids) == text


def test_saved_tokenizer_loads_with_identical_ids(tmp_path: Path):
    tok = build_tokenizer(CORPUS, SID_VOCAB, vocab_size=400)
    save_tokenizer(tok, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    text = "3 days ago^click^<a_1><b_2><c_3><d_0> sports^12 times"
    assert again(text).input_ids == tok(text).input_ids
    assert again.pad_token_id == tok.pad_token_id and again.eos_token_id == tok.eos_token_id


def test_loading_a_missing_tokenizer_says_what_is_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_extending_an_existing_tokenizer_resizes_model_embeddings():
    base = build_tokenizer(CORPUS, vocab_size=350)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(base),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    extend_tokenizer(base, SID_VOCAB, model=model)
    assert model.get_input_embeddings().weight.shape[0] == len(base)
    assert token_offset(base, SID_VOCAB) == len(base) - len(SID_VOCAB)


def test_adding_a_token_already_present_is_refused():
    tok = build_tokenizer(CORPUS, SID_VOCAB, vocab_size=400)
    with pytest.raises(TokenizerError, match="already in the vocabulary"):
        extend_tokenizer(tok, ["<a_0>"])


def test_token_offset_rejects_unknown_or_non_contiguous_tokens():
    tok = build_tokenizer(CORPUS, SID_VOCAB, vocab_size=400)
    with pytest.raises(TokenizerError, match="not contiguous"):
        token_offset(tok, ["<a_0>", "<a_2>"])
    with pytest.raises(TokenizerError, match="not in the tokenizer"):
        token_offset(tok, ["<z_0>"])
