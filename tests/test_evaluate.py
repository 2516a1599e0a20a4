"""End to end on a toy world: train -> constrained generation -> metrics; harness behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from adgen.core.catalogue import Dataset, HistoryEvent, Item, SplitExample, UserHistory, UserProfile, leave_one_out
from adgen.index.semantic_ids import SemanticIdMap, sid_vocabulary
from adgen.model.baselines import PopularityRecommender
from adgen.model.evaluate import EvalOptions, GenerativeRecommender, evaluate_recommender, truncate, write_report
from adgen.model.lm import LMConfig, build_lm
from adgen.model.lm_training import LMTrainConfig, train_causal_lm
from adgen.model.prompts import PromptBuilder, PromptOptions, fixed_texts
from adgen.model.tokenizer import build_tokenizer

DAY = 86_400.0
N_ADS = 24


def _world() -> tuple[Dataset, SemanticIdMap]:
    cats = ["Sports", "Music", "Travel", "Food"]
    items = {
        f"ad{i}": Item(item_id=f"ad{i}", title=f"{cats[i % 4]} offer {i}", categories=(cats[i % 4],), ecpm=float(i))
        for i in range(N_ADS)
    }
    users = {}
    for u in range(20):
        refs = [f"ad{(5 * u + j) % N_ADS}" for j in range(4)] + [f"ad{(u * 7) % N_ADS}"]
        events = [HistoryEvent(ts=j * DAY, kind="ad_click", ref=r) for j, r in enumerate(refs)]
        users[f"u{u}"] = UserHistory(user_id=f"u{u}", profile=UserProfile(age=20 + u), events=events)
    sid_map = SemanticIdMap.build(list(items), [[i % 4, (i // 4) % 3] for i in range(N_ADS)], codebook_sizes=(4, 3, 2))
    return Dataset(name="toy", items=items, users=users), sid_map


def test_tiny_model_overfits_20_users_and_generates_their_target_sids(tmp_path: Path):
    data, sid_map = _world()
    split = leave_one_out(data)
    assert len(split.test) == 20
    vocab = sid_vocabulary(sid_map.codebook_sizes)
    tok = build_tokenizer(([i.title for i in data.items.values()] + fixed_texts()) * 3, vocab, vocab_size=600)
    options = PromptOptions(max_prompt_tokens=80, include_summary=False)
    builder = PromptBuilder(tok, data.items, sid_map.sid_of, options=options)
    examples = [
        (builder.user_prompt(e.history, data.users[e.user_id].profile).ids, builder.response_ids(e.target))
        for e in split.test
    ]
    model = build_lm(LMConfig(vocab_size=len(tok), hidden_size=128, num_layers=2, num_heads=2, max_positions=256))
    cfg = LMTrainConfig(out_dir=tmp_path / "run", epochs=150, batch_size=5, lr=2e-3, warmup_ratio=0.0, torch_threads=1)
    train_causal_lm(model, tok, examples, cfg)

    rec = GenerativeRecommender(model, tok, builder, sid_map, {u: h.profile for u, h in data.users.items()})
    top = rec.recommend(split.test, 3)
    assert [r[0] for r in top] == [e.target for e in split.test]
    assert all(len(set(r)) == 3 and set(r) <= set(data.items) for r in top)

    report = evaluate_recommender(rec, split.test, data, EvalOptions(ks=(1, 5)))
    assert report["hr@1"] == 1.0 and report["ndcg@5"] == 1.0 and report["users"] == 20
    assert 0 < report["concentration@10"] <= 1 and 1 <= report["abundance@10"] <= 4
    assert 0 <= report["dice@10"] <= 1


def test_untrained_model_still_returns_valid_distinct_ads_but_does_not_hit():
    data, sid_map = _world()
    split = leave_one_out(data)
    tok = build_tokenizer(["offer Predict the next ad"] * 5, sid_vocabulary(sid_map.codebook_sizes), vocab_size=350)
    builder = PromptBuilder(tok, data.items, sid_map.sid_of, options=PromptOptions(max_prompt_tokens=128))
    model = build_lm(LMConfig(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=2, max_positions=256))
    rec = GenerativeRecommender(model, tok, builder, sid_map, {})
    top = rec.recommend(split.test, 30)  # more than the catalogue: returns all 24, no duplicates
    assert all(sorted(r) == sorted(data.items) for r in top)


def test_popularity_through_the_harness_and_report_files(tmp_path: Path):
    data, _ = _world()
    split = leave_one_out(data)
    pop = PopularityRecommender(list(data.items)).fit([e.history for e in split.valid])
    opts = EvalOptions(ks=(1, 10), diversity_k=4)
    metrics = evaluate_recommender(pop, split.test, data, opts)
    assert metrics["dice@4"] == 1.0  # popularity ignores the history: perfectly stable
    assert metrics["abundance@4"] >= 1 and metrics["mean_ecpm@4"] >= 0
    path = write_report({"popularity": metrics}, tmp_path, "toy", opts.ks)
    assert path.exists() and (tmp_path / "eval.png").stat().st_size > 1000


def test_truncate_keeps_the_most_recent_share():
    events = [HistoryEvent(ts=float(i), kind="ad_click", ref=f"a{i}") for i in range(6)]
    cut = truncate(SplitExample(user_id="u", history=events, target="x"), 0.5)
    assert [e.ref for e in cut.history] == ["a3", "a4", "a5"]


def test_empty_evaluation_is_a_clear_error():
    data, _ = _world()
    with pytest.raises(ValueError, match="no evaluation examples"):
        evaluate_recommender(PopularityRecommender(list(data.items)), [], data, EvalOptions())
