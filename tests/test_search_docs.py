"""docs/search.md's and README's search figures are the committed evaluation JSON's: a fresh render of the
generated tables and values must equal the documents."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from adgen.search.ci_report import BLOCK, RENDERERS, VALUE, render_document, render_values

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "search.md"
RESULT = ROOT / "docs" / "data" / "search" / "world.json"


def _load(source: str) -> object:
    return json.loads((ROOT / source).read_text())


def test_search_doc_tables_match_the_committed_json():
    text = DOC.read_text()
    payload = json.loads(RESULT.read_text())
    assert {m.group("name") for m in BLOCK.finditer(text)} == set(RENDERERS)
    assert render_values(render_document(text, payload), _load) == text, "stale: run `adgen ci report`"


def test_readme_search_figures_match_the_committed_json():
    text = (ROOT / "README.md").read_text()
    assert len(VALUE.findall(text)) >= 4
    assert render_values(text, _load) == text, "README.md is stale: run `adgen ci report`"


def test_a_changed_figure_makes_the_documents_stale():
    text = DOC.read_text()
    payload = copy.deepcopy(json.loads(RESULT.read_text()))
    payload["rows"][0]["ndcg10"] += 0.01
    assert render_document(text, payload) != text
    readme = (ROOT / "README.md").read_text()
    changed = copy.deepcopy(payload)
    for row in changed["rows"]:
        row["ndcg10"] += 0.01
    assert render_values(readme, lambda source: changed) != readme
