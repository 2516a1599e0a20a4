"""The shared causal-LM loop: response-only loss, learning, checkpoint + resume, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adgen.model.lm_training import LMTrainConfig, collate, load_state, response_logprobs, train_causal_lm
from adgen.model.tokenizer import build_tokenizer

SID = [f"<{lvl}_{c}>" for lvl, n in zip("abc", (4, 4, 3), strict=True) for c in range(n)]


def _tiny_model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def data():
    names = ["red shoe", "blue hat", "green bag", "black pen", "white cup", "gold ring"]
    tok = build_tokenizer([f"user likes {n}" for n in names] * 5, SID, vocab_size=320)
    examples = []
    for i, name in enumerate(names):
        sid = [f"<a_{i % 4}>", f"<b_{(i * 3) % 4}>", f"<c_{i % 3}>"]
        prompt = tok(f"user likes {name}", add_special_tokens=False).input_ids
        response = [*tok.convert_tokens_to_ids(sid), tok.eos_token_id]
        examples.append((prompt, response))
    return tok, examples


def test_collate_puts_labels_on_response_only_and_cuts_prompt_from_left():
    batch = collate([([5, 6, 7, 8], [1, 2]), ([9], [3])], pad_id=0, max_len=5)
    assert batch.input_ids.tolist() == [[6, 7, 8, 1, 2], [9, 3, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, -100, 1, 2], [-100, 3, -100, -100, -100]]
    assert batch.real_tokens == 7
    assert batch.num_response_tokens == 3


def test_collate_rejects_empty_response():
    with pytest.raises(ValueError, match="empty response"):
        collate([([1], [])], pad_id=0, max_len=8)


def test_training_memorises_responses_and_writes_metrics(tmp_path: Path, data):
    tok, examples = data
    model = _tiny_model(len(tok))
    before = response_logprobs(model, collate(examples, tok.pad_token_id, 64)).mean().item()
    cfg = LMTrainConfig(out_dir=tmp_path, epochs=60, batch_size=3, lr=2e-2, warmup_ratio=0.0, seed=1, torch_threads=1)
    metrics = train_causal_lm(model, tok, examples, cfg)
    after = response_logprobs(model, collate(examples, tok.pad_token_id, 64))
    assert after.mean().item() > before + 5
    assert (after > -1.0).all(), after  # every response is now the model's clear favourite
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["epochs"]) == 60 and saved["epochs"][-1]["train_loss"] < saved["epochs"][0]["train_loss"]
    assert metrics["global_step"] == 60 * 2


def test_resume_from_mid_run_checkpoint_matches_an_uninterrupted_run(tmp_path: Path, data):
    tok, examples = data
    full = _tiny_model(len(tok))
    train_causal_lm(
        full, tok, examples, LMTrainConfig(out_dir=tmp_path / "full", epochs=4, batch_size=2, seed=3, torch_threads=1)
    )

    # stop mid-way through epoch 2 of the same 4-epoch schedule, then resume to the end
    part = _tiny_model(len(tok))
    cfg = LMTrainConfig(out_dir=tmp_path / "part", epochs=4, batch_size=2, seed=3, torch_threads=1)
    first = train_causal_lm(part, tok, examples, cfg.model_copy(update={"stop_after_steps": 5}))
    assert (
        first["interrupted"] and json.loads((tmp_path / "part/checkpoint/state.json").read_text())["global_step"] == 5
    )
    resumed = _tiny_model(len(tok))
    train_causal_lm(resumed, tok, examples, cfg)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_early_stopping_keeps_best_weights(tmp_path: Path, data):
    tok, examples = data
    model = _tiny_model(len(tok))
    scores = iter([0.5, 0.9, 0.2, 0.1, 0.0, 0.0])
    cfg = LMTrainConfig(out_dir=tmp_path, epochs=6, batch_size=3, patience=2, monitor="ndcg@10", torch_threads=1)
    metrics = train_causal_lm(model, tok, examples, cfg, eval_fn=lambda m: {"ndcg@10": next(scores)})
    assert len(metrics["epochs"]) == 4 and metrics["best_epoch"] == 2
    best = _tiny_model(len(tok))
    load_state(best, None, tmp_path / "best")
    for a, b in zip(model.state_dict().values(), best.state_dict().values(), strict=True):
        assert torch.equal(a, b)
