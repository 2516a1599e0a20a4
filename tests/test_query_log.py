"""The labelled query log: the documented JSONL format, its errors, merging, frequencies, the world's log."""

from __future__ import annotations

import json

import pytest
from search_world import make_search_world

from adgen.search.query_log import (
    QueryLogError,
    load_query_log,
    world_query_log,
    write_query_log,
)

CATALOGUE = {"a1", "a2", "a3"}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_of_one_query_merge_into_grades_and_a_search_count(tmp_path):
    path = _write(
        tmp_path / "log.jsonl",
        [
            {"query_id": "q1", "text": "Trail Shoes", "ts": 1700000000, "ads": {"a1": 2, "a2": 1}},
            {"query_id": "q2", "text": "tent", "ts": 1700000100},
            "",
            {"query_id": "q1", "text": "trail shoes!", "ts": 1699999000.5, "ads": {"a2": 2}},
        ],
    )
    log = load_query_log(path, CATALOGUE)
    q1, q2 = log.queries
    assert (q1.query_id, q1.count, q1.first_ts) == ("q1", 2, 1699999000.5)
    assert q1.relevance == {"a1": 2, "a2": 2}  # the higher grade wins
    assert q1.relevant(2) == {"a1", "a2"} and q1.normalised == "trail shoes"
    assert log.frequencies() == {"trail shoes": 2, "tent": 1}
    assert [q.query_id for q in log.labelled()] == ["q1"] and q2.relevance == {}  # q2 has no judged ads
    assert log.rows == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"log\.jsonl:2: invalid JSON"),
        ("[1, 2]", r"log\.jsonl:2: expected a JSON object, got list"),
        ({"query_id": "q9", "ts": 1}, r"log\.jsonl:2: field 'text': Field required"),
        ({"query_id": "q9", "text": "x", "ts": "yesterday"}, r"log\.jsonl:2: field 'ts': must be a finite number"),
        ({"query_id": "q9", "text": "x", "ts": True}, r"field 'ts': must be a finite number"),
        ({"query_id": "q9", "text": "x", "ts": 1, "ads": {"a1": 5}}, r"field 'ads\.a1': Input should be less"),
        ({"query_id": "q9", "text": "x", "ts": 1, "ads": {"a1": "2"}}, r"field 'ads\.a1': Input should be a valid int"),
        (
            {"query_id": "q9", "text": "x", "ts": 1, "ads": {"zz": 2}},
            r"log\.jsonl:2: field 'ads\.zz': ad id 'zz' is not",
        ),
        ({"query_id": "q9", "text": "x", "ts": 1, "clicks": 3}, r"field 'clicks': Extra inputs are not permitted"),
        ({"query_id": "q9", "text": "?!", "ts": 1}, r"field 'text': query text is empty after normalisation"),
        ({"query_id": "q9", "text": "x" * 513, "ts": 1}, r"field 'text': String should have at most 512"),
        ({"query_id": 7, "text": "x", "ts": 1}, r"field 'query_id': Input should be a valid string"),
        ({"query_id": "q1", "text": "other words", "ts": 1}, r"log\.jsonl:2: field 'text': query id 'q1' was"),
    ],
)
def test_a_bad_row_fails_the_load_naming_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "log.jsonl", [{"query_id": "q1", "text": "tent", "ts": 1}, line])
    with pytest.raises(QueryLogError, match=message):
        load_query_log(path, CATALOGUE)


def test_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(QueryLogError, match="file not found"):
        load_query_log(tmp_path / "nope.jsonl", CATALOGUE)
    with pytest.raises(QueryLogError, match="no queries"):
        load_query_log(_write(tmp_path / "empty.jsonl", [""]), CATALOGUE)


def test_written_log_reads_back_identically(tmp_path):
    path = _write(
        tmp_path / "log.jsonl",
        [
            {"query_id": "q1", "text": "trail shoes", "ts": 5, "ads": {"a1": 2}, "intent": "type:shoes"},
            {"query_id": "q1", "text": "trail shoes", "ts": 7},
            {"query_id": "q2", "text": "tent", "ts": 6, "ads": {"a3": 1}},
        ],
    )
    log = load_query_log(path, CATALOGUE)
    again = load_query_log(write_query_log(log, tmp_path / "copy.jsonl"), CATALOGUE)
    assert again.queries == log.queries


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return make_search_world(tmp_path_factory.mktemp("world"))


def test_a_world_becomes_a_query_log_with_search_counts_and_live_ads_only(world_dir):
    from adgen.datasets import load_query_labels, load_world

    dataset = load_world(world_dir)
    live = dataset.active_items()
    log = world_query_log(world_dir, live)
    labels = load_query_labels(world_dir)
    assert [q.query_id for q in log.queries[: len(labels)]] == [label.query_id for label in labels]
    searches = [json.loads(line) for line in (world_dir / "events" / "search-queries.jsonl").open()]
    by_id = {q.query_id: q for q in log.queries}
    for label in labels[:50]:
        q = by_id[label.query_id]
        issued = [s for s in searches if s["query_id"] == label.query_id]
        assert q.count == max(len(issued), 1) and q.intent == label.intent
        assert q.relevance == {ad: g for ad, g in label.relevance.items() if ad in live}
    assert sum(log.frequencies().values()) >= len(searches)
    assert not any(ad in dataset.deleted_at for q in log.queries for ad in q.relevance)
