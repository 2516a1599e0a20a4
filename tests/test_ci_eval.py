"""Search metrics and the BM25 / dense baselines that RARE-style retrieval is compared against."""

from __future__ import annotations

import numpy as np
import pytest

from adgen.core.catalogue import Item
from adgen.search.ci_eval import (
    BM25Retriever,
    DenseRetriever,
    LabelledQuery,
    Retrieved,
    average_precision,
    evaluate,
    hit_rate,
    markdown_table,
)

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


def test_evaluate_counts_coverage_and_cis_per_query():
    queries = [
        LabelledQuery(query_id="1", text="gloves", relevance={"a": 2}),
        LabelledQuery(query_id="2", text="nothing", relevance={"b": 2}),
    ]
    answers = {"gloves": Retrieved(ads=["a", "b"], num_cis=3), "nothing": Retrieved(ads=[], num_cis=0)}
    report = evaluate("fixed", answers.__getitem__, queries, ks=(1, 2), progress=False)
    assert report.acr == 0.5
    assert report.hr == {"HR@1": 0.5, "HR@2": 0.5}
    assert report.avg_cis_per_query == 1.5
    assert "| fixed | 0.5000 | 0.5000 |" in markdown_table([report])


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
    queries = [LabelledQuery(query_id=str(i), text=t, relevance={"a": 2}) for i, t in enumerate(["x", "y", "z"])]
    answers = {"x": Retrieved(ads=["a"], num_cis=1), "y": Retrieved(ads=["b", "a"], num_cis=2), "z": Retrieved(ads=[])}
    single = evaluate("s", answers.__getitem__, queries, ks=(1, 2), progress=False)
    batched = evaluate(
        "b",
        answers.__getitem__,
        queries,
        ks=(1, 2),
        progress=False,
        retrieve_many=lambda qs: [answers[q] for q in qs],
        batch_size=2,
    )
    assert (single.hr, single.map, single.acr, single.avg_cis_per_query) == (
        batched.hr,
        batched.map,
        batched.acr,
        batched.avg_cis_per_query,
    )
