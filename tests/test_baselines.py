"""Baselines: popularity ranks by training counts; SASRec learns a deterministic sequential pattern."""

from __future__ import annotations

from adgen.core.catalogue import Dataset, HistoryEvent, Item, UserHistory, leave_one_out
from adgen.model.baselines import PopularityRecommender, SASRecConfig, SASRecRecommender, ad_ids
from adgen.model.metrics import ranking_metrics

DAY = 86_400.0


def _clicks(refs: list[str]) -> list[HistoryEvent]:
    return [HistoryEvent(ts=i * DAY, kind="ad_click", ref=r) for i, r in enumerate(refs)]


def test_popularity_ranks_by_training_counts_with_id_tiebreak():
    histories = [_clicks(["b", "c", "b"]), _clicks(["c", "b"]), [HistoryEvent(ts=0, kind="content_complete", ref="a")]]
    pop = PopularityRecommender(["a", "b", "c", "d"]).fit(histories)
    assert pop.ranking == ["b", "c", "a", "d"]
    assert pop.recommend([None, None], 2) == [["b", "c"], ["b", "c"]]  # type: ignore[list-item]


def test_sasrec_learns_a_cyclic_next_item_rule():
    # 12 items in a fixed cycle: the next item is always the successor of the last one
    items = [f"i{n}" for n in range(12)]
    users = {}
    for u in range(60):
        refs = [items[(u + j) % 12] for j in range(7)]
        users[f"u{u}"] = UserHistory(user_id=f"u{u}", events=_clicks(refs))
    data = Dataset(name="cycle", items={i: Item(item_id=i, title=i) for i in items}, users=users)
    split = leave_one_out(data)
    model = SASRecRecommender(items, SASRecConfig(hidden=32, blocks=1, epochs=40, batch_size=32, lr=5e-3, max_len=8))
    train_seqs = [ad_ids(e.history) for e in split.valid]
    metrics = model.fit(train_seqs, split.valid)
    rankings = model.recommend(split.test, 5)
    result = ranking_metrics(rankings, [e.target for e in split.test], [1])
    assert result["hr@1"] > 0.9, metrics["epochs"][-1]
    assert all(len(r) == 5 and len(set(r)) == 5 for r in rankings)


def test_a_fitted_sasrec_is_reloaded_only_for_the_same_config_and_candidates(tmp_path):
    items = [f"i{n}" for n in range(12)]
    users = {
        f"u{u}": UserHistory(user_id=f"u{u}", events=_clicks([items[(u + j) % 12] for j in range(7)]))
        for u in range(30)
    }
    split = leave_one_out(Dataset(name="cycle", items={i: Item(item_id=i, title=i) for i in items}, users=users))
    cfg = SASRecConfig(hidden=16, blocks=1, epochs=3, batch_size=32, max_len=8, seed=3)
    fitted = SASRecRecommender(items, cfg)
    metrics = fitted.fit([ad_ids(e.history) for e in split.valid], split.valid, tmp_path)

    again = SASRecRecommender(items, cfg.model_copy(update={"torch_threads": 1}))  # threads do not matter
    assert again.load_fitted(tmp_path)["best_valid_ndcg@10"] == metrics["best_valid_ndcg@10"]
    assert again.recommend(split.test, 5) == fitted.recommend(split.test, 5)
    assert SASRecRecommender(items, cfg.model_copy(update={"seed": 4})).load_fitted(tmp_path) is None
    assert SASRecRecommender(items, cfg.model_copy(update={"dropout": 0.5})).load_fitted(tmp_path) is None
    assert SASRecRecommender([*items[:-1], "other"], cfg).load_fitted(tmp_path) is None  # other candidates
    assert SASRecRecommender(items, cfg).load_fitted(tmp_path / "missing") is None
