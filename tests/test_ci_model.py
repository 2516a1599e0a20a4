"""The CI model: two-stage training on catalogue pairs, and constrained generation inside the CI set."""

from __future__ import annotations

import pytest
import torch

from adgen.core.config import ModelSettings
from adgen.model.backends import BackendUnavailable
from adgen.search.ci_data import AD_PROMPT, QUERY_PROMPT, TextPair
from adgen.search.ci_index import CISet
from adgen.search.ci_model import CIModel, CIModelConfig, assign_cis, probabilities, train_ci_model

CIS = ["nitrile gloves", "glass beakers", "digital multimeter", "safety goggles", "pipette tips"]
TINY = CIModelConfig(
    vocab_size=320,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    knowledge_epochs=1,
    format_epochs=40,
    batch_size=16,
    lr=1e-2,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ci_set = CISet(texts=CIS, support=[1] * len(CIS), aliases={t: i for i, t in enumerate(CIS)})
    fmt = [TextPair(prompt=QUERY_PROMPT.format(text=t), response=t, stage="format") for t in CIS]
    fmt += [TextPair(prompt=AD_PROMPT.format(text=f"acme {t} pro"), response=t, stage="format") for t in CIS]
    know = [TextPair(prompt=f"ad: acme {t} pro\ncategory:", response="lab", stage="knowledge") for t in CIS]
    out = tmp_path_factory.mktemp("ci_model")
    model, metrics = train_ci_model(know, fmt, ci_set, out, TINY)
    return model, ci_set, out, metrics


def test_two_stage_training_writes_metrics_for_both_stages(trained):
    _, _, out, metrics = trained
    assert (out / "knowledge" / "metrics.json").is_file() and (out / "format" / "metrics.json").is_file()
    assert metrics["format"]["epochs"][-1]["train_loss"] < metrics["format"]["epochs"][0]["train_loss"]


def test_generated_cis_are_always_inside_the_ci_set(trained):
    model, ci_set, _, _ = trained
    trie = model.ci_trie(ci_set)
    prompts = [QUERY_PROMPT.format(text=q) for q in ["gloves", "zzz qqq", "multimeter digital", "x" * 300]]
    for row in model.generate(prompts, trie, k=5, beams=8):
        assert row, "an unconstrained prompt still gets CIs from the set"
        assert all(0 <= ci < len(CIS) for ci, _ in row)
        assert len({ci for ci, _ in row}) == len(row)


def test_trained_model_maps_a_query_onto_its_intention(trained):
    model, ci_set, _, _ = trained
    trie = model.ci_trie(ci_set)
    top = model.generate([QUERY_PROMPT.format(text="safety goggles")], trie, k=3)[0]
    assert CIS[top[0][0]] == "safety goggles"


def test_score_floor_truncates_low_scoring_cis(trained):
    model, ci_set, _, _ = trained
    trie = model.ci_trie(ci_set)
    prompt = [QUERY_PROMPT.format(text="pipette tips")]
    full = model.generate(prompt, trie, k=5)[0]
    cut = model.generate(prompt, trie, k=5, score_floor=-1.0)[0]
    assert len(cut) < len(full)
    assert cut and cut[0][0] == full[0][0]


def test_saved_model_reloads_and_generates_the_same(trained):
    model, ci_set, out, _ = trained
    again = CIModel.load(out / "model")
    prompt = [QUERY_PROMPT.format(text="glass beakers")]
    assert again.fingerprint() == model.fingerprint()
    a = model.generate(prompt, model.ci_trie(ci_set), k=3)[0]
    b = again.generate(prompt, again.ci_trie(ci_set), k=3)[0]
    assert [ci for ci, _ in a] == [ci for ci, _ in b]


def test_model_backend_setting_selects_the_ci_models_decoder(trained):
    """The CI model generates on the backend `model.backend` names; TensorRT-LLM is refused here with a reason
    (no GPU) rather than silently replaced by torch."""
    model, ci_set, out, _ = trained
    on_torch = CIModel.load(out / "model", ModelSettings(backend="torch"))
    assert on_torch.backend.name == "torch" and on_torch.backend.search.prefix_cache is None
    prompt = [QUERY_PROMPT.format(text="glass beakers")]
    assert on_torch.generate(prompt, on_torch.ci_trie(ci_set), k=3) == model.generate(
        prompt, model.ci_trie(ci_set), k=3
    )
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_backends.py runs the real TensorRT-LLM comparison")
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU"):
        CIModel.load(out / "model", ModelSettings(backend="tensorrt_llm"))


def test_probabilities_softmax_the_beam_scores():
    probs = probabilities([(3, -1.0), (7, -2.0)])
    assert probs[3] > probs[7] and sum(probs.values()) == pytest.approx(1.0)
    assert probabilities([]) == {}


def test_assign_cis_gives_every_new_ad_at_least_one_ci_from_the_set(trained):
    model, ci_set, _, _ = trained
    prompts = [AD_PROMPT.format(text="acme digital multimeter pro"), AD_PROMPT.format(text="unrelated thing")]
    rows = assign_cis(model, model.ci_trie(ci_set), prompts, k=3, min_prob=0.2)
    assert all(rows) and all(0 <= ci < len(CIS) for row in rows for ci in row)
    assert max(rows[0], key=rows[0].get) == CIS.index("digital multimeter")


def test_low_score_truncation_never_leaves_a_query_without_cis(trained):
    from adgen.search.ci_model import query_cis

    model, ci_set, _, _ = trained
    trie = model.ci_trie(ci_set)
    strict = query_cis(model, trie, ["zzz qqq", "safety goggles"], top_cis=4, beams=4, score_floor=-1e-9)
    assert all(1 <= len(row) <= 3 for row in strict)
    assert query_cis(model, trie, ["zzz qqq"], top_cis=4, beams=4, score_floor=-1e-9, fallback_cis=0) == [{}]
