"""DPO: loss sign and gradients on a toy case, pair construction by eCPM, and a tiny run that moves the policy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from adgen.core.catalogue import Item, SplitExample
from adgen.model.dpo import DPOConfig, PreferencePair, category_pairs, dpo_loss, model_pairs, train_dpo
from adgen.model.lm import LMConfig, build_lm
from adgen.model.lm_training import collate, response_logprobs
from adgen.model.tokenizer import build_tokenizer

ITEMS = {
    "a": Item(item_id="a", title="A", categories=("Sports",), ecpm=5.0),
    "b": Item(item_id="b", title="B", categories=("Sports",), ecpm=9.0),
    "c": Item(item_id="c", title="C", categories=("Music",), ecpm=5.0),
    "d": Item(item_id="d", title="D", categories=("Sports",), ecpm=5.0),
}


def test_loss_is_log2_at_the_reference_and_falls_when_chosen_gains():
    zero = torch.zeros(3)
    loss, cr, rr = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and not cr.any() and not rr.any()
    better, _, _ = dpo_loss(torch.full((3,), 2.0), zero, zero, zero, beta=0.5)
    worse, _, _ = dpo_loss(zero, torch.full((3,), 2.0), zero, zero, beta=0.5)
    assert better.item() < math.log(2) < worse.item()
    assert better.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_gradient_raises_chosen_and_lowers_rejected_logprob():
    chosen = torch.tensor([-3.0, -1.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -2.0], requires_grad=True)
    loss, _, _ = dpo_loss(chosen, rejected, torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0]), beta=0.2)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent pushes chosen up, rejected down
    assert torch.allclose(chosen.grad, -rejected.grad)


def test_pairs_choose_the_higher_ecpm_ad():
    ranked = [["a", "d", "b"], ["c"], ["a", "d", "c"]]
    examples = [SplitExample(user_id=f"u{i}", history=[], target="a") for i in range(3)]
    assert model_pairs(ranked, examples, ITEMS) == [(0, "b", "a")]  # a/d tie on eCPM; b differs and wins
    pairs = category_pairs(examples[:1], ITEMS, list(ITEMS), seed=0)
    assert pairs == [(0, "b", "a")]  # the only same-category ad with another eCPM


def test_tiny_dpo_run_increases_the_chosen_margin(tmp_path: Path):
    tok = build_tokenizer(["user likes sports music"] * 5, ["<a_0>", "<a_1>", "<a_2>"], vocab_size=300)
    model = build_lm(LMConfig(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=2, max_positions=64))
    ids = tok.convert_tokens_to_ids(["<a_0>", "<a_1>", "<a_2>"])
    prompts = [tok(f"user likes {w}", add_special_tokens=False).input_ids for w in ("sports", "music", "sports music")]
    pairs = [PreferencePair(p, [ids[0]], [ids[1]], "x", "y") for p in prompts]

    def margin() -> float:
        with torch.no_grad():
            c = response_logprobs(model, collate([(p.prompt_ids, p.chosen_ids) for p in pairs], 0, 64))
            r = response_logprobs(model, collate([(p.prompt_ids, p.rejected_ids) for p in pairs], 0, 64))
        return float((c - r).mean())

    before = margin()
    metrics = train_dpo(
        model, tok, pairs, DPOConfig(out_dir=tmp_path, beta=0.5, epochs=15, batch_size=3, lr=5e-3, torch_threads=1)
    )
    assert margin() > before + 1.0
    assert metrics["epochs"][-1]["accuracy"] == 1.0 and metrics["epochs"][-1]["loss"] < math.log(2)
    assert (tmp_path / "metrics.json").exists()


def test_no_pairs_is_a_clear_error(tmp_path: Path):
    tok = build_tokenizer(["x y"] * 5, ["<a_0>"], vocab_size=300)
    model = build_lm(LMConfig(vocab_size=len(tok), hidden_size=16, num_layers=1, num_heads=2, max_positions=32))
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(model, tok, [], DPOConfig(out_dir=tmp_path))
