"""The built-in LM: sizes, seeded builds, safetensors round trip, clear errors for unusable checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from adgen.model.lm import LMConfig, LMError, build_lm, count_parameters, load_lm, quantize_int8, save_lm


def test_default_model_is_a_small_llama_of_5_to_10_million_parameters():
    model = build_lm()
    assert model.config.model_type == "llama"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (256, 4)
    assert 5_000_000 <= count_parameters(model) <= 10_000_000


def test_builds_with_one_seed_are_identical_and_other_seeds_differ():
    cfg = LMConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)
    a, b = build_lm(cfg), build_lm(cfg)
    c = build_lm(cfg.model_copy(update={"seed": 1}))
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_save_load_round_trip_gives_identical_logits_from_safetensors(tmp_path):
    model = build_lm(LMConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1))
    save_lm(model, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["num_key_value_heads"] == 1
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = load_lm(tmp_path)
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_loading_a_directory_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(LMError, match=r"no config\.json"):
        load_lm(tmp_path)


def test_loading_an_unsupported_model_family_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(LMError, match="'gpt2' is not supported"):
        load_lm(tmp_path)


def test_inconsistent_head_counts_are_rejected():
    with pytest.raises(ValueError, match="must divide"):
        LMConfig(hidden_size=30, num_heads=4)


def test_int8_quantisation_replaces_linears_and_keeps_outputs_close():
    model = build_lm(LMConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=2))
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        ref = model(ids).logits.log_softmax(-1)
        q = quantize_int8(build_lm(LMConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=2)))
        out = q(ids).logits.log_softmax(-1)
    assert "quantized" in type(q.lm_head).__module__
    assert (out - ref).abs().max() < 0.05


def test_auto_dtype_is_bf16_only_where_the_cpu_multiplies_it_natively() -> None:
    from adgen.model.lm import cpu_has_native_bf16, resolve_dtype

    amx = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    assert cpu_has_native_bf16(amx) and not cpu_has_native_bf16(avx2)
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    assert resolve_dtype("auto") == ("bfloat16" if cpu_has_native_bf16() else "float32")
