"""docs/search.md's and README's search tables come from the committed evaluation JSON: they render from
it, a changed figure makes the documents stale, and without the JSON they say 'not measured' with the
command (the shared owed-run mechanism, adgen/figures/sources.py PENDING) and show no figure.
That the committed documents are up to date is tests/test_docs_figures.py's check of every region."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from adgen.figures.regions import render_text
from adgen.figures.search import COMMAND, FLOOR_WHY, RESULT, SEED_RESULTS
from adgen.figures.sources import Sources

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("search-setup", "search-quality", "search-variants", "search-levers", "search-floor")


def _row(key: str, method: str, ndcg: float, hr50: float, ads: float = 120.0, off: float = 0.25) -> dict[str, object]:
    return {
        "key": key,
        "method": method,
        "hr": {"HR@10": hr50 - 0.2, "HR@50": hr50},
        "ndcg10": ndcg,
        "map": ndcg - 0.1,
        "acr": 1.0,
        "avg_cis_per_query": 4.0,
        "avg_ads_per_query": ads,
        "ms_p50": 3.5,
        "off_intent10": off,
    }


def _floor_row(
    floor: float, ndcg: float, objective: float, ads: float, off: float, link: float = 0.0, share: float = 0.3
) -> dict[str, object]:
    settings = {"relative_floor": floor, "min_link_weight": link, "lexical_min_share": share}
    row = {"stage": "floor", "settings": settings, "objective": objective, "ndcg10": ndcg, "hr50": 1.0}
    return {**row, "ads_per_query": ads, "off_intent10": off}


PAYLOAD: dict[str, object] = {
    "command": "adgen ci experiment --world w",
    "data": "w",
    "ads": 1000,
    "split": "test",
    "queries": 200,
    "split_sizes": {"train": 600, "valid": 200, "test": 200},
    "split_leaks": [],
    "min_grade": 2,
    "build": {
        "cis": 900,
        "avg_cis_per_ad": 7.5,
        "query_targets": 400,
        "templates": ["best {}"],
        "epochs_trained": 5,
        "best_epoch": 3,
    },
    "serving": {
        "beams": 20,
        "score_floor": None,
        "top_cis": 10,
        "cis_per_ad": 15,
        "model_weight": 0.5,
        "lexical_weight": 0.5,
        "lexical_top": 10,
        "strip_templates": True,
        "ad_match_weight": 0.0,
        "relative_floor": 0.2,
        "min_link_weight": 0.5,
        "lexical_min_share": 0.3,
    },
    "valid": {"hybrid": {"k": 60.0, "lexical_weight": 0.5}},
    "rows": [
        _row("pure", "CI path, model only (pure)", 0.41, 0.80),
        _row("served", "CI path as served (model + lexical CI matching)", 0.634, 0.97, ads=9.5, off=0.05),
        _row("bm25", "BM25 (rank-bm25)", 0.60, 0.96),
    ],
    "served_without_floor": _row("", "CI path as served, relative score floor 0", 0.64, 0.98, ads=47.0, off=0.31),
    "floor_tolerance": 0.005,
    "verdict": {
        "best_baseline_ndcg10": "BM25 (rank-bm25)",
        "best_baseline_hr50": "BM25 (rank-bm25)",
        "served_ndcg10_at_least_best_baseline": True,
        "served_hr50_at_least_best_baseline": True,
    },
    "tuning_rows": [
        {
            "stage": "decoding",
            "settings": {"beams": 20, "score_floor": None},
            "objective": 0.5,
            "ndcg10": 0.4,
            "hr50": 0.6,
        },
        {"stage": "fusion", "settings": {"lexical_weight": 0.5}, "objective": 0.7, "ndcg10": 0.6, "hr50": 0.8},
        _floor_row(0.0, 0.6, 0.8, 48.0, 0.3),
        _floor_row(0.2, 0.59, 0.795, 11.0, 0.06),  # two cuts other than chosen: not shown
        _floor_row(0.2, 0.58, 0.79, 12.0, 0.07, link=0.5, share=0.0),  # only the share differs: shown
        _floor_row(0.0, 0.6, 0.8, 20.0, 0.2, link=0.5),
        _floor_row(0.2, 0.595, 0.7975, 10.0, 0.04, link=0.5),
        _floor_row(0.3, 0.5, 0.75, 6.0, 0.01, link=0.5),
    ],
    "variants": [
        {
            "name": "default",
            "cis": 900,
            "epochs_trained": 5,
            "best_epoch": 3,
            "pure_valid": {"ndcg10": 0.4, "hr": {"HR@50": 0.8}},
            "served_valid": {"ndcg10": 0.6, "hr": {"HR@50": 0.9}},
        }
    ],
    "chosen_variant": "default",
    "loadavg_start": [0.1, 0.2, 0.3],
    "loadavg_end": [1.0, 0.5, 0.4],
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    readme_block = "<!-- generated: search-readme -->\n<!-- end generated: search-readme -->\n"
    text = (ROOT / "docs" / "search.md").read_text() + "\n" + readme_block
    (tmp_path / "docs" / "search.md").write_text(text)
    return tmp_path


def _write(repo: Path, payload: object) -> None:
    (repo / RESULT).parent.mkdir(parents=True, exist_ok=True)
    (repo / RESULT).write_text(json.dumps(payload))


def test_every_search_block_is_in_the_documents():
    text = (ROOT / "docs" / "search.md").read_text()
    assert all(f"<!-- generated: {name} -->" in text for name in BLOCKS)
    assert "<!-- generated: search-readme -->" in (ROOT / "README.md").read_text()


def test_without_the_json_the_blocks_say_not_measured_and_show_no_figure(repo: Path):
    text, problems = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    assert not [p for p in problems if not p.stale]
    bodies = [text.split(f"<!-- generated: {name} -->\n")[1].split("<!-- end generated")[0] for name in BLOCKS]
    assert all(b.startswith("*Not measured yet") and RESULT in b for b in bodies)
    assert COMMAND in bodies[0] and all("see above" in b for b in bodies[1:])  # the command is named once
    assert not any(ch.isdigit() for b in bodies[1:] for ch in b.replace(RESULT, ""))  # no figure stands in


def test_the_blocks_render_the_json_and_a_changed_figure_makes_them_stale(repo: Path):
    _write(repo, PAYLOAD)
    rendered, _ = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    assert "| CI path as served (model + lexical CI matching) | 0.634 | 0.970 |" in rendered  # README table
    assert "NDCG@10 **yes** (best baseline: BM25 (rank-bm25))" in rendered
    assert "Not measured" not in rendered
    assert render_text(rendered, Sources(repo))[1] == []  # up to date with its JSON

    changed = copy.deepcopy(PAYLOAD)
    changed["rows"][1]["ndcg10"] = 0.5  # type: ignore[index]
    _write(repo, changed)
    _, problems = render_text(rendered, Sources(repo))
    stale = {p.region for p in problems if p.stale}
    assert stale == {"search-quality", "search-readme", "search-seeds", "search-floor"}


def test_a_broken_json_is_an_error_not_a_silent_not_measured(repo: Path):
    (repo / RESULT).parent.mkdir(parents=True)
    (repo / RESULT).write_text("{not json")
    _, problems = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    assert problems and all("not valid JSON" in p.detail for p in problems)


def test_the_seeds_table_shows_every_committed_seed_its_spread_and_the_owed_ones(repo: Path):
    _write(repo, PAYLOAD)
    losing = copy.deepcopy(PAYLOAD)
    losing["rows"][1]["ndcg10"] = 0.55  # type: ignore[index]  # below BM25's 0.60 on this seed
    (repo / SEED_RESULTS[1]).write_text(json.dumps(losing))
    rendered, problems = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    assert not [p for p in problems if not p.stale]
    block = rendered.split("<!-- generated: search-seeds -->\n")[1].split("<!-- end generated")[0]
    assert "| 0 | 200 | 0.634 | 0.600 | 0.970 | 0.960 | yes |" in block
    assert "| 1 | 200 | 0.550 | 0.600 | 0.970 | 0.960 | **no** |" in block
    assert "| mean ± sd (2 seeds) | | 0.592 ± 0.059 | 0.600 ± 0.000 |" in block
    assert "World seed 2: not measured yet" in block and "bench/search_quality.py --seed 2" in block


def test_the_floor_block_shows_the_validation_choice_and_the_test_lists_without_and_with_it(repo: Path):
    _write(repo, PAYLOAD)
    rendered, problems = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    assert not [p for p in problems if not p.stale]
    block = rendered.split("<!-- generated: search-floor -->\n")[1].split("<!-- end generated")[0]
    kept = "lexical share **0.3**, support cut **0.5**, relative floor **0.2**"
    assert kept in block and "within 0.005 of the best" in block
    assert "| **0.3** | **0.5** | **0.2** | **0.595** | **1.000** | **0.7975** | **10.0** | **0.040** |" in block
    assert "| 0.3 | 0.5 | 0.3 | 0.500 | 1.000 | 0.7500 | 6.0 | 0.010 |" in block  # another floor
    assert "| 0.3 | 0 | 0.2 | 0.590 | 1.000 | 0.7950 | 11.0 | 0.060 |" in block  # another support cut
    assert "| 0 | 0.5 | 0.2 | 0.580 |" in block  # another lexical share
    assert "| 0.3 | 0 | 0 | 0.600 |" not in block  # two cuts other than kept
    assert "| 0 | 0.3, 0.5, 0.2 | 0.310 → 0.050 | 47.0 → 9.5 | 0.640 → 0.634 | 0.980 → 0.970 |" in block
    assert "World seed 1: not measured yet" in block
    quality = rendered.split("<!-- generated: search-quality -->\n")[1].split("<!-- end generated")[0]
    assert "off-intent@10 |" in quality.splitlines()[0] and "| 9.5 | 3.50 | 0.050 |" in quality
    assert "relative score floor 0.2, support cut 0.5, lexical share 0.3;" in rendered  # named with the others


def test_a_run_from_before_the_floor_renders_every_block_but_the_floors(repo: Path):
    old = copy.deepcopy(PAYLOAD)
    for key in ("served_without_floor", "floor_tolerance"):
        del old[key]
    del old["serving"]["relative_floor"]  # type: ignore[attr-defined]
    del old["serving"]["min_link_weight"]  # type: ignore[attr-defined]
    del old["serving"]["lexical_min_share"]  # type: ignore[attr-defined]
    old["tuning_rows"] = [r for r in old["tuning_rows"] if r["stage"] != "floor"]  # type: ignore[attr-defined]
    for row in old["rows"]:  # type: ignore[attr-defined]
        del row["off_intent10"]
    _write(repo, old)
    seed_one = copy.deepcopy(PAYLOAD)
    (repo / SEED_RESULTS[1]).write_text(json.dumps(seed_one))
    rendered, problems = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    assert not [p for p in problems if not p.stale]
    block = rendered.split("<!-- generated: search-floor -->\n")[1].split("<!-- end generated")[0]
    assert block.startswith("*Not measured yet") and FLOOR_WHY in block and COMMAND in block
    assert not re.search(r"\d\.\d", block)  # no figure stands in
    quality = rendered.split("<!-- generated: search-quality -->\n")[1].split("<!-- end generated")[0]
    assert "off-intent" not in quality and "| 0.634 |" in quality
    assert "relative score floor" not in rendered.split("<!-- generated: search-setup -->")[1].split("<!-- end")[0]

    _write(repo, PAYLOAD)  # seed 0 has the floor, seed 1 above does too; a seed-2 run from before it is owed
    (repo / SEED_RESULTS[2]).write_text(json.dumps(old))
    rendered, _ = render_text((repo / "docs" / "search.md").read_text(), Sources(repo))
    block = rendered.split("<!-- generated: search-floor -->\n")[1].split("<!-- end generated")[0]
    assert "| 0 | 0.3, 0.5, 0.2 |" in block and "| 1 | 0.3, 0.5, 0.2 |" in block and "| 2 |" not in block
    assert f"World seed 2: not measured yet (`{SEED_RESULTS[2]}`: {FLOOR_WHY})" in block
