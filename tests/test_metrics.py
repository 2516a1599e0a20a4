"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from adgen.model.metrics import (
    abundance,
    concentration,
    dice,
    hit_rate,
    list_qualities,
    mean_dice,
    ndcg,
    ranking_metrics,
)

RANKINGS = [["a", "b", "c", "d"], ["x", "y", "z", "w"], ["c", "a", "b", "d"]]
TARGETS = ["b", "q", "d"]  # ranks 1, missing, 3


def test_hit_rate_counts_targets_inside_the_cutoff():
    assert hit_rate(RANKINGS, TARGETS, 1) == 0.0
    assert hit_rate(RANKINGS, TARGETS, 2) == pytest.approx(1 / 3)
    assert hit_rate(RANKINGS, TARGETS, 4) == pytest.approx(2 / 3)


def test_ndcg_discounts_by_log2_of_rank():
    assert ndcg(RANKINGS, TARGETS, 2) == pytest.approx((1 / math.log2(3)) / 3)
    assert ndcg(RANKINGS, TARGETS, 4) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 3)
    assert ndcg([["t"]], ["t"], 10) == 1.0
    metrics = ranking_metrics(RANKINGS, TARGETS, [1, 4])
    assert set(metrics) == {"hr@1", "ndcg@1", "hr@4", "ndcg@4"} and metrics["ndcg@1"] == 0.0


def test_concentration_abundance_and_list_qualities():
    assert concentration(["s", "s", "m", "s"]) == 0.75
    assert abundance(["s", "s", "m", "t"]) == 3
    cats = {"a": "s", "b": "s", "c": "m", "d": "t", "x": "s", "y": "s", "z": "s", "w": "s"}
    ecpm = {"a": 1.0, "b": 3.0, "x": 2.0, "y": 2.0, "c": 0.0}
    q = list_qualities(RANKINGS[:2], 2, cats.__getitem__, ecpm)
    assert q == {"concentration@2": 1.0, "abundance@2": 1.0, "mean_ecpm@2": pytest.approx((2.0 + 2.0) / 2)}


def test_dice_of_lists():
    assert dice(["a", "b", "c"], ["b", "c", "d", "e"]) == pytest.approx(4 / 7)
    assert dice([], []) == 1.0
    assert mean_dice([["a", "b"], ["c"]], [["a", "b"], ["d"]], 2) == pytest.approx(0.5)


def test_mismatched_or_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="2 rankings but 1 targets"):
        hit_rate([["a"], ["b"]], ["a"], 1)
    with pytest.raises(ValueError, match="split is empty"):
        ndcg([], [], 1)
