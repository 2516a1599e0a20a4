"""Real-data (Amazon Scientific) and generic JSONL loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import require_shared, shared_data

from adgen.core.catalogue import leave_one_out
from adgen.datasets import DatasetFormatError, clean_text, load_amazon, load_items_jsonl, load_jsonl

AMAZON_DIR = shared_data() / "datasets" / "amazon-scientific"


@pytest.fixture(scope="module")
def amazon():
    return load_amazon(require_shared("datasets/amazon-scientific"))


def test_amazon_counts_match_source_md(amazon):
    assert len(amazon.items) == 4344
    assert len(amazon.users) == 8317
    assert sum(len(u.events) for u in amazon.users.values()) == 58492


def test_amazon_histories_keep_file_order_one_day_apart(amazon):
    raw = json.loads((AMAZON_DIR / "Scientific.inter.json").read_text())
    user = amazon.users["3"]
    assert [e.ref for e in user.events] == [str(i) for i in raw["3"]]
    gaps = {b.ts - a.ts for a, b in zip(user.events, user.events[1:], strict=False)}
    assert gaps == {86_400.0}
    assert {e.kind for e in user.events} == {"ad_click"}


def test_amazon_text_is_stripped_of_html_and_whitespace(amazon):
    for item in amazon.items.values():
        for text in (item.title, item.description, item.brand):
            assert "<br" not in text and "&amp;" not in text and "  " not in text
            assert text == text.strip()
    assert amazon.items["0"].categories[:2] == ("Industrial & Scientific", "Industrial Electrical")


def test_amazon_leave_one_out_gives_one_test_and_valid_per_user(amazon):
    split = leave_one_out(amazon)
    assert len(split.test) == len(split.valid) == 8317
    raw = json.loads((AMAZON_DIR / "Scientific.inter.json").read_text())
    test = next(e for e in split.test if e.user_id == "0")
    assert test.target == str(raw["0"][-1])
    assert [e.ref for e in test.history] == [str(i) for i in raw["0"][:-1]]


def test_clean_text_unescapes_and_drops_tags():
    assert clean_text("  <b>Fast</b>&amp;cheap<br/>\n\tpipette ") == "Fast &cheap pipette"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def jsonl_files(tmp_path):
    items = _write(
        tmp_path / "items.jsonl",
        [
            {"item_id": "a1", "title": "Trail shoe", "categories": ["Sports", "Running"], "ecpm": 3.5},
            {"item_id": "a2", "title": "Tent", "categories": ["Sports", "Camping"], "brand": "Acme"},
        ],
    )
    events = _write(
        tmp_path / "events.jsonl",
        [
            {"user_id": "u1", "ts": 30, "kind": "ad_click", "ref": "a2"},
            {"user_id": "u1", "ts": 10, "kind": "content_play", "ref": "v9", "title": "Best tents", "category": "X"},
            {"user_id": "u1", "ts": 20, "kind": "ad_conversion", "ref": "a1", "title": "custom"},
            {"user_id": "u2", "ts": 5, "kind": "content_search", "ref": "running shoes"},
        ],
    )
    return items, events


def test_jsonl_loader_sorts_events_and_fills_ad_text_from_items(jsonl_files):
    dataset = load_jsonl(*jsonl_files)
    assert set(dataset.items) == {"a1", "a2"} and dataset.items["a1"].ecpm == 3.5
    events = dataset.users["u1"].events
    assert [e.ref for e in events] == ["v9", "a1", "a2"]
    assert events[1].title == "custom" and events[1].category == "Sports"
    assert events[2].title == "Tent"
    assert dataset.users["u1"].ad_sequence() == ["a1", "a2"]
    assert dataset.users["u2"].events[0].kind == "content_search"


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ({"user_id": "u1", "ts": "soon", "kind": "ad_click", "ref": "a1"}, r"events.jsonl:2: field 'ts'"),
        ({"user_id": "u1", "ts": 1, "kind": "ad_view", "ref": "a1"}, r"events.jsonl:2: field 'kind'"),
        ({"user_id": "u1", "ts": 1, "kind": "ad_click"}, r"events.jsonl:2: field 'ref'"),
        ({"user_id": "u1", "ts": 1, "kind": "ad_click", "ref": "a1", "extra": 1}, r"events.jsonl:2: field 'extra'"),
        ({"user_id": "u1", "ts": 1, "kind": "ad_click", "ref": "nope"}, r"events.jsonl:2: field 'ref'.*'nope'"),
        ('{"user_id": "u1", "ts": 1,', r"events.jsonl:2: invalid JSON"),
        ("[1, 2]", r"events.jsonl:2: expected a JSON object"),
    ],
)
def test_jsonl_loader_names_line_and_field_of_bad_event_rows(jsonl_files, bad_row, expected):
    items, events = jsonl_files
    good = {"user_id": "u1", "ts": 1, "kind": "ad_click", "ref": "a1"}
    _write(events, [good, bad_row])
    with pytest.raises(DatasetFormatError, match=expected):
        load_jsonl(items, events)


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ({"item_id": "a3", "title": "x", "ecpm": -1}, r"items.jsonl:3: field 'ecpm'"),
        ({"item_id": "a3"}, r"items.jsonl:3: field 'title'"),
        ({"item_id": "a1", "title": "again"}, r"items.jsonl:3: field 'item_id': duplicate"),
    ],
)
def test_items_loader_names_line_and_field_of_bad_item_rows(jsonl_files, bad_row, expected):
    items, _ = jsonl_files
    with items.open("a") as handle:
        handle.write(json.dumps(bad_row) + "\n")
    with pytest.raises(DatasetFormatError, match=expected):
        load_items_jsonl(items)


def test_jsonl_loader_reports_missing_file(tmp_path):
    with pytest.raises(DatasetFormatError, match="file not found"):
        load_jsonl(tmp_path / "missing.jsonl")


def test_leave_one_out_does_not_target_the_conversion_of_the_click_just_before(tmp_path):
    items = _write(tmp_path / "items.jsonl", [{"item_id": f"a{i}", "title": f"ad {i}"} for i in range(4)])
    rows = [("ad_click", "a0"), ("ad_click", "a1"), ("ad_conversion", "a1"), ("ad_click", "a2"), ("ad_click", "a3")]
    events = _write(
        tmp_path / "events.jsonl", [{"user_id": "u", "ts": t, "kind": k, "ref": r} for t, (k, r) in enumerate(rows)]
    )
    split = leave_one_out(load_jsonl(items, events))
    assert [e.target for e in split.train] == ["a1"]
    assert [e.target for e in split.valid] == ["a2"] and [e.target for e in split.test] == ["a3"]
    assert [e.kind for e in split.valid[0].history][-1] == "ad_conversion"  # still in the history


def test_amazon_category_names_with_commas_stay_whole_and_events_skip_the_shared_root(amazon):
    assert amazon.items["5"].categories == (
        "Industrial & Scientific",
        "Tapes, Adhesives & Sealants",
        "Cyanoacrylate Adhesives",
    )
    categories = {e.category for u in amazon.users.values() for e in u.events}
    assert "Industrial & Scientific" not in categories and "Tapes, Adhesives & Sealants" in categories
    assert len(categories - {""}) >= 20


def test_jsonl_loader_adds_optional_profiles_and_rejects_bad_profile_rows(jsonl_files, tmp_path):
    users = _write(
        tmp_path / "users.jsonl",
        [
            {"user_id": "u1", "profile": {"age": 31, "consumption_level": "high", "arpu": 12.5}},
            {"user_id": "u3", "profile": {"sex": "female"}},
        ],
    )
    dataset = load_jsonl(*jsonl_files, users_path=users)
    assert dataset.users["u1"].profile.age == 31 and dataset.users["u1"].profile.arpu == 12.5
    assert dataset.users["u2"].profile.age is None
    assert dataset.users["u3"].events == [] and dataset.users["u3"].profile.sex == "female"
    _write(users, [{"user_id": "u1", "profile": {"arpu": -3}}])
    with pytest.raises(DatasetFormatError, match=r"users.jsonl:1: field 'profile.arpu'"):
        load_jsonl(*jsonl_files, users_path=users)
