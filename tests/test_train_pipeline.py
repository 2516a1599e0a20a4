"""`adgen train --config` / `adgen eval` end to end on a tiny Amazon-format dataset, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adgen.cli import app
from adgen.index.rqvae import RQVAE, RQVAEConfig, save_rqvae
from adgen.index.semantic_ids import SemanticIdMap
from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_model_files, write_index_snapshot
from adgen.model.pipeline import load_config, merge_click_conversions

N_ITEMS = 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipe")
    cats = ["Lab", "Tools", "Safety"]
    items = {
        f"i{n}": {
            "title": f"{cats[n % 3]} thing {n}",
            "description": "",
            "brand": "B",
            "categories": f"Root,{cats[n % 3]}",
        }
        for n in range(N_ITEMS)
    }
    inter = {f"u{u}": [f"i{(u + j) % N_ITEMS}" for j in range(5)] for u in range(16)}
    data = root / "data"
    data.mkdir()
    (data / "Tiny.item.json").write_text(json.dumps(items))
    (data / "Tiny.inter.json").write_text(json.dumps(inter))
    # a hand-made S-ID index (codes by category and number) so the test needs no sentence encoder
    sid_map = SemanticIdMap.build(list(items), [[n % 3, n // 3] for n in range(N_ITEMS)], (3, 4, 2))
    rq_dir = root / "rq"
    version = save_rqvae(RQVAE(RQVAEConfig(input_dim=8, hidden_dims=(8,), latent_dim=4, codebook_size=4)), rq_dir)
    store = SnapshotStore(root / "index", kind=INDEX_KIND)
    write_index_snapshot(store, sid_map, read_model_files(rq_dir), version, {})
    config = {
        "name": "tiny",
        "out_dir": str(root / "run"),
        "data": {"source": "amazon", "path": str(data)},
        "sids": {"index": str(root / "index")},
        "tokenizer": {"vocab_size": 400},
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_positions": 256},
        "prompts": {"max_prompt_tokens": 96},
        "train": {"stage_epochs": {"ex": 1, "im": 1, "main": 2}, "batch_size": 8, "torch_threads": 1, "valid_users": 8},
        "eval": {"max_users": 10, "beams": 5, "ks": [1, 5], "sasrec": {"hidden": 16, "blocks": 1, "epochs": 2}},
        "dpo": {"enabled": False},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    return root


def test_train_runs_every_stage_and_writes_metrics_model_and_report(workdir: Path):
    result = CliRunner().invoke(app, ["train", "--config", str(workdir / "tiny.yaml")])
    assert result.exit_code == 0, result.output
    run = workdir / "run"
    stages = sorted(p.name for p in run.glob("stage*"))
    assert stages == ["stage0_ex", "stage1_im", "stage2_main"]
    main = json.loads((run / "stage2_main" / "metrics.json").read_text())
    assert len(main["epochs"]) == 2 and "ndcg@10" in main["epochs"][0]["valid"]
    assert (run / "model" / "model.safetensors").exists() and (run / "model" / "tokenizer.json").exists()
    report = json.loads((run / "eval" / "eval.json").read_text())["results"]
    assert set(report) == {"leadre", "popularity", "sasrec", "channel"} and report["leadre"]["users"] == 10
    assert report["channel"]["hr@20_base"] >= report["channel"]["hr@10_base"]  # LEADRE as an added channel
    assert (run / "eval" / "eval.png").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["items"] == N_ITEMS and summary["stages"][2]["examples"] > 0


def test_a_distilled_run_fits_its_teacher_once_and_the_evaluation_scores_that_same_sasrec(workdir: Path):
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config.update(out_dir=str(workdir / "distilled"), tasks={"curriculum": "main_only"})
    config["prompts"]["layout"] = "sequence"
    config["train"].update(stage_epochs={"main": 1}, scoring="trie", distill_weight=0.5)
    (workdir / "distilled.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--config", str(workdir / "distilled.yaml")])
    assert result.exit_code == 0, result.output
    run = workdir / "distilled"
    fitted = json.loads((run / "sasrec" / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timings"]["sasrec_reused"] is True  # the teacher, fitted before training, is the baseline row
    report = json.loads((run / "eval" / "eval.json").read_text())["results"]
    assert report["sasrec"]["train_s"] == fitted["train_seconds"]
    bad = {**config, "train": {**config["train"], "scoring": "vocab"}}
    (workdir / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match=r"distill_weight needs train\.scoring: trie"):
        load_config(workdir / "bad.yaml")


def test_the_pool_priors_are_saved_in_the_recipe_with_the_training_parts_counts(workdir: Path):
    """eval.popularity_weight and eval.transition_weight reach the checkpoint's recipe.json with each ad's count and
    each succession in the training part (every user's behaviour before the validation target: 3 of the 5 ads each
    here), so serving ranks as evaluated."""
    from adgen.model.recipe import load_recipe

    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    config.update(out_dir=str(workdir / "popular"), tasks={"curriculum": "main_only"})
    config["train"].update(stage_epochs={"main": 1})
    config["eval"].update(popularity_weight=0.3, transition_weight=0.4, transition_window=1, baselines=[])
    (workdir / "popular.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--config", str(workdir / "popular.yaml")])
    assert result.exit_code == 0, result.output
    saved = load_recipe(workdir / "popular" / "model").popularity
    assert saved is not None and saved.weight == 0.3
    expected: dict[str, int] = {}
    for u in range(16):
        for j in range(3):
            item = f"i{(u + j) % N_ITEMS}"
            expected[item] = expected.get(item, 0) + 1
    assert saved.counts == expected
    transitions = load_recipe(workdir / "popular" / "model").transitions
    assert transitions is not None and (transitions.weight, transitions.window) == (0.4, 1)
    following: dict[str, dict[str, float]] = {}
    for u in range(16):
        for j in range(2):
            row = following.setdefault(f"i{(u + j) % N_ITEMS}", {})
            later = f"i{(u + j + 1) % N_ITEMS}"
            row[later] = row.get(later, 0.0) + 1.0
    assert transitions.following == following


def test_rerun_resumes_finished_stages_and_eval_reloads_the_model(workdir: Path):
    run = workdir / "run"
    before = (run / "stage2_main" / "metrics.json").read_text()
    cfg = str(workdir / "tiny.yaml")
    result = CliRunner().invoke(app, ["train", "--config", cfg, "--no-eval"])
    assert result.exit_code == 0, result.output
    assert (run / "stage2_main" / "metrics.json").read_text() == before  # finished stage not retrained
    result = CliRunner().invoke(app, ["eval", "--config", cfg])
    assert result.exit_code == 0, result.output
    assert "leadre" in json.loads((run / "eval" / "eval.json").read_text())["results"]


def test_dpo_on_data_without_ecpm_is_refused_before_training(workdir: Path, tmp_path: Path):
    raw = yaml.safe_load((workdir / "tiny.yaml").read_text())
    raw.update(out_dir=str(tmp_path / "run"), dpo={"enabled": True})
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "dpo.yaml")])
    assert result.exit_code == 1 and "eCPM" in result.output and not (tmp_path / "run" / "stage0_ex").exists()


def test_invalid_config_is_reported_with_the_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "out_dir": str(tmp_path), "data": {"source": "nowhere", "path": "."}}))
    result = CliRunner().invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "data.source" in result.output


def test_ablation_config_inherits_its_base(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {"name": "b", "out_dir": "o", "data": {"source": "world", "path": "w"}, "prompts": {"max_events": 7}}
        )
    )
    (tmp_path / "abl.yaml").write_text("base: base.yaml\nname: a\nprompts: {include_summary: false}\n")
    cfg = load_config(tmp_path / "abl.yaml")
    assert cfg.name == "a" and cfg.prompts.max_events == 7 and not cfg.prompts.include_summary


def test_click_then_conversion_of_the_same_ad_counts_once():
    from adgen.core.catalogue import Dataset, HistoryEvent, Item, UserHistory

    ev = [
        HistoryEvent(ts=1, kind="ad_click", ref="a"),
        HistoryEvent(ts=2, kind="content_complete", ref="c"),
        HistoryEvent(ts=3, kind="ad_conversion", ref="a"),
        HistoryEvent(ts=4, kind="ad_click", ref="b"),
        HistoryEvent(ts=5, kind="ad_click", ref="b"),
    ]
    data = Dataset(
        name="d", items={"a": Item(item_id="a", title="A")}, users={"u": UserHistory(user_id="u", events=ev)}
    )
    kept = merge_click_conversions(data).users["u"].events
    assert [(e.kind, e.ref) for e in kept] == [
        ("content_complete", "c"),
        ("ad_conversion", "a"),
        ("ad_click", "b"),
        ("ad_click", "b"),
    ]


def test_local_hf_checkpoint_gets_its_own_tokenizer_extended_with_sids_and_embeddings_resized(tmp_path: Path):
    from adgen.core.catalogue import Dataset, Item
    from adgen.index.semantic_ids import sid_vocabulary
    from adgen.model.lm import LMConfig, build_lm, save_lm
    from adgen.model.pipeline import PipelineConfig, prepare_model
    from adgen.model.tokenizer import build_tokenizer, save_tokenizer, token_offset

    base_tok = build_tokenizer(["a local model's own corpus"] * 5, vocab_size=300)
    ckpt = tmp_path / "ckpt"
    save_lm(build_lm(LMConfig(vocab_size=len(base_tok), hidden_size=16, num_layers=1, num_heads=2)), ckpt)
    save_tokenizer(base_tok, ckpt)
    sid_map = SemanticIdMap.build(["x", "y"], [[0, 1], [1, 0]], (2, 2, 2))
    cfg = PipelineConfig.model_validate(
        {
            "name": "hf",
            "out_dir": str(tmp_path / "run"),
            "data": {"source": "world", "path": "."},
            "model": {"checkpoint": str(ckpt)},
        }
    )
    data = Dataset(name="d", items={i: Item(item_id=i, title=i) for i in ("x", "y")}, users={})
    model, tok = prepare_model(cfg, data, sid_map)
    vocab = sid_vocabulary(sid_map.codebook_sizes)
    assert token_offset(tok, vocab) == len(base_tok)  # appended after the checkpoint's own vocabulary
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(base_tok) + len(vocab)
