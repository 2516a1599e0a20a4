"""Search metrics (graded) and the BM25 / dense / hybrid baselines the CI path is compared against."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adgen.core.catalogue import Item
from adgen.search.ci_eval import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    Retrieved,
    average_precision,
    evaluate,
    evaluate_batched,
    hit_rate,
    ndcg,
    off_intent_share,
    score_answers,
)
from adgen.search.query_log import LoggedQuery

ITEMS = {
    "a": Item(item_id="a", title="nitrile gloves large", categories=("Lab", "Gloves")),
    "b": Item(item_id="b", title="glass beaker 250 ml", categories=("Lab", "Beakers")),
    "c": Item(item_id="c", title="digital multimeter", categories=("Electrical", "Meters")),
}


def test_hit_rate_and_average_precision_on_known_rankings():
    assert hit_rate(["x", "a", "b"], {"a", "c"}, k=2) == 0.5
    assert hit_rate([], {"a"}, k=10) == 0.0
    assert average_precision(["a", "x", "c"], {"a", "c"}, cutoff=10) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision(["a", "c"], {"a", "c"}, cutoff=10) == 1.0


def test_graded_ndcg_on_known_rankings():
    grades = {"a": 2, "b": 1, "c": 0}
    assert ndcg(["a", "b"], grades, k=10) == 1.0
    ideal = 3 + 1 / math.log2(3)
    assert ndcg(["b", "a"], grades, k=10) == pytest.approx((1 + 3 / math.log2(3)) / ideal)
    assert ndcg(["x", "a"], grades, k=1) == 0.0
    assert ndcg(["a"], {"c": 0}, k=10) == 0.0  # nothing relevant to find


def _q(qid: str, text: str, grades: dict[str, int]) -> LoggedQuery:
    return LoggedQuery(query_id=qid, text=text, relevance=grades, first_ts=0.0)


def test_off_intent_counts_the_ungraded_ads_of_the_served_top_10_over_answered_queries():
    queries = [
        _q("1", "gloves", {"a": 2, "b": 1}),
        _q("2", "beakers", {"b": 2}),
        _q("3", "meters", {"c": 2}),
    ]
    answers = [
        Retrieved(ads=["a", "x", "b", "y"]),  # 2 of 4 off-intent
        Retrieved(ads=["b"]),  # a floor-shortened list: 0 of 1
        Retrieved(ads=[]),  # unanswered: not averaged (ACR says it)
    ]
    report = score_answers("fixed", queries, answers, [])
    assert report.off_intent10 == pytest.approx((0.5 + 0.0) / 2)
    assert report.avg_ads_per_query == pytest.approx(5 / 3)
    assert off_intent_share([f"x{i}" for i in range(20)], {"x0": 1}, k=10) == pytest.approx(0.9)
    assert off_intent_share([], {"a": 2}, k=10) == 0.0


def test_evaluate_counts_coverage_cis_per_query_and_graded_gain():
    queries = [_q("1", "gloves", {"a": 2, "b": 1}), _q("2", "nothing", {"b": 2})]
    answers = {"gloves": Retrieved(ads=["a", "b"], num_cis=3), "nothing": Retrieved(ads=[], num_cis=0)}
    report = evaluate("fixed", answers.__getitem__, queries, progress=False)
    assert report.acr == 0.5
    assert report.hr == {"HR@10": 0.5, "HR@50": 0.5}
    assert report.ndcg10 == 0.5 and report.map == 0.5
    assert report.avg_cis_per_query == 1.5 and report.ms_p50 >= 0


def test_bm25_returns_only_matching_ads_best_first():
    bm25 = BM25Retriever(ITEMS)
    assert bm25("Nitrile GLOVES").ads[0] == "a"
    assert bm25("zebra").ads == []


def test_dense_ranks_by_cosine_of_the_given_encoder():
    def encode(texts):
        vocab = ["gloves", "beaker", "multimeter"]
        return np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=np.float32) + 1e-3

    dense = DenseRetriever(ITEMS, encode)
    assert dense("multimeter").ads[0] == "c"
    assert len(dense("multimeter").ads) == 3


def test_batched_retrieval_gives_the_same_report_as_one_by_one():
    queries = [_q(str(i), t, {"a": 2}) for i, t in enumerate(["x", "y", "z"])]
    answers = {"x": Retrieved(ads=["a"], num_cis=1), "y": Retrieved(ads=["b", "a"], num_cis=2), "z": Retrieved(ads=[])}
    single = evaluate("s", answers.__getitem__, queries, progress=False)
    batched = evaluate_batched("b", lambda qs: [answers[q] for q in qs], queries, batch_size=2)
    keys = ("hr", "ndcg10", "map", "acr", "avg_cis_per_query")
    assert single.model_dump(include=set(keys)) == batched.model_dump(include=set(keys))


def test_hybrid_fuses_ranks_with_weights():
    lexical = {"q": Retrieved(ads=["a", "b", "c"])}.__getitem__
    dense = {"q": Retrieved(ads=["c", "b", "d"])}.__getitem__
    fused = HybridRetriever(lexical, dense, k=1.0, lexical_weight=0.5)("q").ads
    # c: 0.5/4 + 0.5/2 = 0.375; b: 0.5/3 + 0.5/3 = 0.333; a: 0.5/2 = 0.25; d: 0.5/4 = 0.125
    assert fused == ["c", "b", "a", "d"]
    assert HybridRetriever(lexical, dense, k=60.0, lexical_weight=1.0)("q").ads[:3] == ["a", "b", "c"]
