"""The served ranking's pure pieces: lexical CI matching, fusion with the model, query-ad match, ad weights."""

from __future__ import annotations

import numpy as np
import pytest

from adgen.core.catalogue import Item
from adgen.search.ci_index import CIIndex, CISet
from adgen.search.ci_serving import (
    CIQueryMapper,
    LexicalCIMatcher,
    ServingConfig,
    ad_ci_weights,
    catalogue_cis,
    fuse,
    lexical_distribution,
    rank_ads,
)

TEXTS = ["nursery", "nursing pillow", "home for sale", "good grain co snacks", "safety goggles"]
CI_SET = CISet(texts=TEXTS, support=[1] * len(TEXTS), aliases={t: i for i, t in enumerate(TEXTS)})


def test_lexical_matching_survives_typos_and_picks_the_closest_ci():
    matcher = LexicalCIMatcher(TEXTS)
    sims = matcher.similarities(["nusrery", "safety gogles", "zzzz"])
    assert sims.shape == (3, len(TEXTS))
    assert int(np.argmax(sims[0])) == 0 and int(np.argmax(sims[1])) == 4
    assert lexical_distribution(sims[2], k=3, temperature=0.05) == {}  # no shared n-gram: no CI


def test_lexical_distribution_is_a_sharp_softmax_over_the_top_k():
    row = np.array([0.9, 0.8, 0.0, 0.1, 0.5], dtype=np.float32)
    dist = lexical_distribution(row, k=3, temperature=0.1)
    assert set(dist) == {0, 1, 4} and sum(dist.values()) == pytest.approx(1.0)
    assert dist[0] > dist[1] > dist[4]


def test_lexical_share_drops_the_cis_far_below_the_best_match_and_renormalises():
    row = np.array([0.9, 0.8, 0.0, 0.1, 0.5], dtype=np.float32)
    assert lexical_distribution(row, k=5, temperature=0.1, min_share=0.0).keys() == {0, 1, 3, 4}
    kept = lexical_distribution(row, k=5, temperature=0.1, min_share=0.5)  # 0.5 * 0.9 = 0.45: drops 0.1 only
    assert kept.keys() == {0, 1, 4} and sum(kept.values()) == pytest.approx(1.0)
    assert lexical_distribution(row, k=5, temperature=0.1, min_share=0.95) == {0: 1.0}
    # the mapper applies the configured share ("nursing" also matches "nursery"; lexical only: no model needed)
    config = ServingConfig(lexical_weight=1.0, lexical_top=5, lexical_min_share=0.0)
    both = CIQueryMapper(None, None, CI_SET, config)(["nursing pillow"])[0]  # type: ignore[arg-type]
    assert set(both) == {0, 1}
    strict = config.model_copy(update={"lexical_min_share": 0.9})
    assert CIQueryMapper(None, None, CI_SET, strict)(["nursing pillow"]) == [{1: 1.0}]  # type: ignore[arg-type]


def test_fuse_mixes_model_and_lexical_probabilities():
    model, lexical = {0: 0.8, 1: 0.2}, {1: 0.5, 2: 0.5}
    assert fuse(model, lexical, 0.0) == model and fuse(model, lexical, 1.0) == lexical
    mixed = fuse(model, lexical, 0.5)
    assert mixed == pytest.approx({0: 0.4, 1: 0.35, 2: 0.25}) and sum(mixed.values()) == pytest.approx(1.0)
    assert fuse({}, lexical, 0.3) == lexical  # the model returned nothing: lexical alone


def test_rank_ads_sums_ci_evidence_and_query_ad_match_orders_ads_inside_a_ci():
    index = CIIndex(CI_SET, version="t")
    index.set_ad("crib", {0: 1.0})
    index.set_ad("pillow", {0: 1.0, 1: 1.0})
    index.set_ad("house", {2: 1.0})
    assert rank_ads(index, {0: 0.6, 2: 0.4}, top_n=10) == [("crib", 0.6), ("pillow", 0.6), ("house", 0.4)]
    matched = rank_ads(index, {0: 1.0}, top_n=10, ci_match={1: 0.9}, ad_match_weight=0.5)
    assert [a for a, _ in matched] == ["pillow", "crib"]  # its other CI shares the query's words
    assert rank_ads(index, {0: 1.0}, top_n=1) == [("crib", 1.0)]


def test_rank_ads_without_query_ad_match_is_the_index_ranking_of_one_view():
    index = CIIndex(CI_SET, version="t")
    index.update({f"ad{i}": {i % 5: 1.0 / (1 + i % 3), (i + 1) % 5: 0.5} for i in range(40)})
    scores = {0: 0.5, 1: 0.3, 3: 0.2}
    assert rank_ads(index, scores, top_n=25) == index.rank(scores, 25)
    before = index.view
    index.update(removals=["ad0", "ad1"])
    assert index.view is not before and "ad0" in before.ad_cis  # the old view a reader holds is untouched
    assert "ad0" not in {a for a, _ in rank_ads(index, scores, top_n=40)}


def test_ad_weights_keep_catalogue_cis_and_the_top_model_cis():
    generated = [(3, -0.1), (0, -1.0), (4, -3.0)]
    weights = ad_ci_weights([1], generated, cis_per_ad=2, model_weight=0.5)
    assert weights[1] == 1.0 and set(weights) == {1, 3, 0} and weights[3] > weights[0]
    assert ad_ci_weights([1], generated, cis_per_ad=0, model_weight=0.5) == {1: 1.0}
    assert set(ad_ci_weights([], generated, cis_per_ad=0, model_weight=0.5)) == {3}  # never unreachable


def test_catalogue_cis_are_a_lookup_of_the_ads_own_phrases():
    item = Item(item_id="g", title="Acme goggles", categories=("Lab", "Safety Goggles"), brand="Acme")
    assert catalogue_cis(item, CI_SET) == [4]


def test_serving_config_round_trips_and_defaults_without_a_file(tmp_path):
    assert ServingConfig.load(tmp_path) == ServingConfig()
    tuned = ServingConfig(lexical_weight=0.5, templates=["top rated {}"], strip_templates=True)
    tuned.save(tmp_path)
    assert ServingConfig.load(tmp_path) == tuned


def _floor_index() -> CIIndex:
    index = CIIndex(CI_SET, version="t")
    index.set_ad("crib", {0: 1.0})
    index.set_ad("pillow", {0: 1.0, 1: 1.0})
    index.set_ad("house", {2: 1.0})
    index.set_ad("goggles", {4: 0.5})
    return index


def test_rank_ads_relative_floor_drops_the_weak_tail_and_keeps_the_order():
    index = _floor_index()
    scores = {0: 0.5, 1: 0.5, 2: 0.25, 4: 0.25}  # pillow 1.0, crib 0.5, house 0.25, goggles 0.125
    full = rank_ads(index, scores, top_n=10)
    assert full == [("pillow", 1.0), ("crib", 0.5), ("house", 0.25), ("goggles", 0.125)]
    floored = rank_ads(index, scores, top_n=10, relative_floor=0.3)
    assert floored == full[:2]  # a prefix: the floor only ends the list earlier
    assert rank_ads(index, scores, top_n=10, relative_floor=0.25) == full[:3]  # exactly at the cut: kept
    assert rank_ads(index, scores, top_n=1, relative_floor=0.3) == full[:1]  # top_n still bounds it


def test_rank_ads_floor_zero_is_the_unfloored_ranking_exactly():
    index = CIIndex(CI_SET, version="t")
    index.update({f"ad{i}": {i % 5: 1.0 / (1 + i % 3), (i + 1) % 5: 0.5} for i in range(40)})
    scores = {0: 0.5, 1: 0.3, 3: 0.2}
    assert rank_ads(index, scores, top_n=25, relative_floor=0.0) == rank_ads(index, scores, top_n=25)
    assert rank_ads(index, scores, top_n=25, relative_floor=0.0) == index.rank(scores, 25)
    matched = rank_ads(index, scores, 40, ci_match={1: 0.9, 3: 0.2}, ad_match_weight=0.5)
    assert rank_ads(index, scores, 40, {1: 0.9, 3: 0.2}, 0.5, relative_floor=0.0) == matched


def test_rank_ads_floor_keeps_all_equal_scores_and_answers_nothing_with_nothing():
    index = CIIndex(CI_SET, version="t")
    index.update({f"ad{i}": {0: 1.0} for i in range(6)})
    tied = rank_ads(index, {0: 0.3}, top_n=10, relative_floor=0.99)
    assert [a for a, _ in tied] == [f"ad{i}" for i in range(6)]  # ties by ad id, none below the best
    assert rank_ads(index, {}, top_n=10, relative_floor=0.5) == []
    assert rank_ads(index, {3: 1.0}, top_n=10, relative_floor=0.5) == []  # a CI without ads
    assert [a for a, _ in rank_ads(index, {0: 0.0}, top_n=3, relative_floor=0.5)] == ["ad0", "ad1", "ad2"]


def test_the_support_cut_drops_ads_reached_only_through_weak_links_and_keeps_their_full_scores():
    index = _floor_index()
    index.set_ad("guess", {0: 0.05})  # a CI the model guessed for it with little confidence
    index.set_ad("both", {0: 0.05, 1: 1.0})  # a weak link and a strong one
    scores = {0: 0.5, 1: 0.5}
    full = rank_ads(index, scores, top_n=10)
    assert [a for a, _ in full] == ["pillow", "both", "crib", "guess"]
    cut = rank_ads(index, scores, top_n=10, min_link_weight=0.1)
    assert cut == [kv for kv in full if kv[0] != "guess"]  # the weak link still counts for "both"
    assert dict(cut)["both"] == pytest.approx(0.5 * 0.05 + 0.5 * 1.0)
    assert rank_ads(index, scores, top_n=10, min_link_weight=0.05) == full  # exactly at the cut: kept
    assert [a for a, _ in rank_ads(index, scores, top_n=10, min_link_weight=1.0)] == ["pillow", "both", "crib"]
    # with both cuts the score floor reads the best supported ad
    assert rank_ads(index, scores, top_n=10, relative_floor=0.5, min_link_weight=0.1) == full[:3]


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_a_support_cut_outside_zero_to_one_is_refused(weight):
    with pytest.raises(ValueError, match="min_link_weight must be in"):
        rank_ads(_floor_index(), {0: 1.0}, top_n=10, min_link_weight=weight)
    with pytest.raises(ValueError, match="min_link_weight"):
        ServingConfig(min_link_weight=weight)


@pytest.mark.parametrize("floor", [1.0, -0.1, 1.5])
def test_a_relative_floor_outside_zero_to_one_is_refused(floor):
    with pytest.raises(ValueError, match="relative_floor must be in"):
        rank_ads(_floor_index(), {0: 1.0}, top_n=10, relative_floor=floor)
    with pytest.raises(ValueError, match="relative_floor"):
        ServingConfig(relative_floor=floor)
