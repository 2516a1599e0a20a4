"""The successions baseline (model/succession.py): counts of what followed the user's last ads, then popularity."""

from __future__ import annotations

from adgen.core.catalogue import HistoryEvent, SplitExample
from adgen.model.succession import SuccessionRecommender


def clicks(*ads: str) -> list[HistoryEvent]:
    return [HistoryEvent(ts=float(i), kind="ad_click", ref=ad) for i, ad in enumerate(ads)]


def test_successions_rank_what_followed_the_last_ads_then_the_rest_by_popularity() -> None:
    train = [clicks("a", "b"), clicks("a", "b"), clicks("a", "c"), clicks("x", "d", "d", "d")]
    rec = SuccessionRecommender(["a", "b", "c", "d", "x", "gone"][:5], window=1).fit(train)
    got = rec.recommend([SplitExample(user_id="u", history=clicks("x", "a"), target="b")], k=4)[0]
    # b followed a twice, c once; then the rest by popularity: a and d (3 each, by id)
    assert got[:2] == ["b", "c"]
    assert got[2:] == ["a", "d"]
    assert len(set(got)) == len(got) == 4


def test_a_wider_window_reads_older_ads_weighted_less_and_never_leaves_the_candidates() -> None:
    train = [clicks("x", "c"), clicks("a", "b")]
    rec = SuccessionRecommender(["a", "b", "x"], window=2).fit(train)  # c is not a candidate (deleted)
    got = rec.recommend([SplitExample(user_id="u", history=clicks("x", "a"), target="b")], k=3)[0]
    assert got[0] == "b" and "c" not in got
    assert rec.recommend([SplitExample(user_id="u", history=[], target="b")], k=2)[0] == ["a", "b"]
