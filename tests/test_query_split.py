"""The leak-free query split: no held-out query shares its normalised text or its intent with training."""

from __future__ import annotations

import pytest
from search_world import make_search_world

from adgen.search.query_log import LoggedQuery, world_query_log
from adgen.search.query_split import SplitConfig, query_groups, split_leaks, split_queries


@pytest.fixture(scope="module")
def world_log(tmp_path_factory):
    from adgen.datasets import load_world

    world = make_search_world(tmp_path_factory.mktemp("world"))
    return world_query_log(world, load_world(world).active_items())


def _q(qid: str, text: str, intent: str = "") -> LoggedQuery:
    return LoggedQuery(query_id=qid, text=text, intent=intent, relevance={"a": 2}, first_ts=0.0)


def test_world_split_shares_no_normalised_text_or_intent_across_splits(world_log):
    queries = world_log.labelled()
    split = split_queries(queries, SplitConfig(valid_share=0.2, test_share=0.2, seed=3))
    assert split_leaks(split) == []
    train_texts = {q.normalised for q in split.train}
    train_intents = {q.intent for q in split.train}
    held_out = split.valid + split.test
    assert held_out and not any(q.normalised in train_texts or q.intent in train_intents for q in held_out)
    assert not {q.intent for q in split.valid} & {q.intent for q in split.test}
    assert sorted(q.query_id for q in split.train + held_out) == sorted(q.query_id for q in queries)
    sizes = split.sizes()
    assert 0.1 < sizes["test"] / len(queries) < 0.3 and 0.1 < sizes["valid"] / len(queries) < 0.3
    # intents repeat in the world, so an id-only split would have leaked; grouping is doing real work
    assert len({q.intent for q in queries}) < len(queries)
    assert split_queries(queries, SplitConfig(seed=3)).model_dump() == split.model_dump()  # stable


def test_split_leaks_reports_a_held_out_query_with_a_training_twin(world_log):
    split = split_queries(world_log.labelled())
    twin = split.train[0].model_copy(update={"query_id": "leaked"})
    leaky = split.model_copy(update={"test": [*split.test, twin]})
    problems = split_leaks(leaky)
    assert problems and all("leaked" in p for p in problems)
    assert any("intent:" in p for p in problems) and any("text:" in p for p in problems)


def test_queries_are_grouped_by_normalised_text_and_by_intent_transitively():
    queries = [
        _q("1", "Trail Shoes!", "type:shoes"),
        _q("2", "trail shoes"),  # same text as 1
        _q("3", "running shoes", "type:shoes"),  # same intent as 1
        _q("4", "tent"),
        _q("5", "TENT ", "cat:camping"),
        _q("6", "sleeping bag", "cat:camping"),
        _q("7", "kayak"),
    ]
    groups = sorted(sorted(queries[i].query_id for i in g) for g in query_groups(queries))
    assert groups == [["1", "2", "3"], ["4", "5", "6"], ["7"]]
    split = split_queries(queries, SplitConfig(valid_share=0.3, test_share=0.3))
    assert split_leaks(split) == []
    where = {q.query_id: name for name in ("train", "valid", "test") for q in getattr(split, name)}
    assert where["1"] == where["2"] == where["3"] and where["4"] == where["5"] == where["6"]


def test_shares_that_leave_nothing_to_train_are_refused():
    with pytest.raises(ValueError, match="leave queries to train"):
        split_queries([_q("1", "x")], SplitConfig(valid_share=0.5, test_share=0.5))
