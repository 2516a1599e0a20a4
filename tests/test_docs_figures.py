"""Every generated figure in README.md and docs/*.md equals what its committed JSON gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adgen.figures.regions import REGIONS, region, render_documents, render_text
from adgen.figures.sources import FigureError, Sources, format_value, walk

REPO = Path(__file__).resolve().parents[1]


def test_committed_documents_match_their_json() -> None:
    problems = render_documents(REPO, write=False)
    assert not problems, "run `adgen bench report` and commit:\n" + "\n".join(map(str, problems))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "bench/results").mkdir(parents=True)
    (tmp_path / "bench/results/speed.json").write_text(
        json.dumps({"events_per_s": 34557.2, "ok": False, "models": [{"model": "small", "ms": 24.72}]})
    )
    (tmp_path / "docs").mkdir()
    return tmp_path


def test_inline_values_render_from_the_json_and_a_stale_one_is_reported(repo: Path) -> None:
    doc = (
        "rate <!-- value: speed events_per_s ,.0f -->1<!-- end value --> ev/s, "
        "small <!-- value: bench/results/speed.json models[model=small].ms .1f -->24.7<!-- end value --> ms, "
        "target <!-- value: speed ok met -->met<!-- end value -->\n"
    )
    text, problems = render_text(doc, Sources(repo), "d.md")
    assert "-->34,557<!--" in text and "-->24.7<!--" in text and "-->**missed**<!--" in text
    assert [p.stale for p in problems] == [True, True]  # 1 -> 34,557 and met -> **missed**; 24.7 was right
    assert "shows '1', JSON gives '34,557'" in problems[0].detail


def test_a_missing_file_or_key_is_an_error_naming_both(repo: Path) -> None:
    doc = "<!-- value: speed windows.batched -->x<!-- end value --> <!-- value: nothing a -->y<!-- end value -->"
    text, problems = render_text(doc, Sources(repo), "d.md")
    assert text == doc  # unrenderable regions keep their text
    assert not any(p.stale for p in problems)
    assert "bench/results/speed.json: <root> has no key 'windows'" in problems[0].detail
    assert "bench/results/nothing.json does not exist" in problems[1].detail


def test_block_regions_use_the_registry_and_unknown_or_unclosed_ones_are_errors(repo: Path) -> None:
    @region("test-speed-line")
    def _speed(sources: Sources) -> str:
        return f"rate {sources.fmt('speed', 'events_per_s', ',.0f')}"

    try:
        doc = "a\n<!-- generated: test-speed-line -->\nold\n<!-- end generated: test-speed-line -->\nb\n"
        text, problems = render_text(doc, Sources(repo))
        assert (
            text == "a\n<!-- generated: test-speed-line -->\nrate 34,557\n<!-- end generated: test-speed-line -->\nb\n"
        )
        assert [p.detail for p in problems] == ["out of date with its JSON"]
        assert render_text(text, Sources(repo))[1] == []

        _, problems = render_text("<!-- generated: nobody -->\nx\n<!-- end generated: nobody -->\n", Sources(repo))
        assert "no renderer registered" in problems[0].detail
        _, problems = render_text("<!-- generated: test-speed-line -->\nx\n", Sources(repo))
        assert "no matching end marker" in problems[0].detail
    finally:
        REGIONS.pop("test-speed-line")


def test_write_saves_rendered_documents_and_then_the_check_passes(repo: Path) -> None:
    (repo / "docs/page.md").write_text("<!-- value: speed events_per_s .0f -->0<!-- end value -->\n")
    assert [p.stale for p in render_documents(repo, write=False)] == [True]
    assert render_documents(repo, write=True) == []
    assert (repo / "docs/page.md").read_text() == "<!-- value: speed events_per_s .0f -->34557<!-- end value -->\n"
    assert render_documents(repo, write=False) == []


def test_formats_scale_and_refuse_what_they_cannot_print() -> None:
    assert format_value(56441336, "/1e6:.1f") == "56.4"
    assert format_value(0.0247, "*1000:.1f") == "24.7"
    assert format_value(0.878, ".1%") == "87.8%"
    assert format_value(1.2345678) == "1.235"
    assert format_value(True, "met") == "met"
    assert format_value(40.5, ">=35") == "met" and format_value(1.2, "<=1.1") == "**missed**"
    assert walk({"tests": {"a.py::t[1]": {"ok": 1}}}, 'tests["a.py::t[1]"].ok') == 1
    rows = {"n": [{"level": "a", "k": 10, "v": 1}, {"level": "b", "k": 10, "v": 2}]}
    assert walk(rows, "n[level=b,k=10].v") == 2
    with pytest.raises(FigureError, match="2 items with k=10"):
        walk(rows, "n[k=10].v")
    with pytest.raises(FigureError):
        format_value("text", ".1f")
    with pytest.raises(FigureError):
        format_value(3.0, "met")
    with pytest.raises(FigureError):
        walk({"a": [1]}, "a[3]")


def test_bench_report_command_checks_then_rewrites_the_documents(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from adgen.cli import app

    (repo / "docs/page.md").write_text("<!-- value: speed events_per_s .0f -->0<!-- end value -->\n")
    monkeypatch.chdir(repo)
    runner = CliRunner()
    stale = runner.invoke(app, ["bench", "report", "--check"])
    assert stale.exit_code == 1 and "shows '0', JSON gives '34557'" in stale.output
    assert runner.invoke(app, ["bench", "report"]).exit_code == 0
    assert (repo / "docs/benchmarks.png").exists()  # the overview plot is redrawn too
    assert runner.invoke(app, ["bench", "report", "--check"]).exit_code == 0


def test_an_owed_run_renders_as_a_note_naming_its_command_until_its_json_is_committed(repo: Path) -> None:
    from adgen.figures.regions import PENDING_VALUE
    from adgen.figures.sources import PENDING, Pending

    @region("test-owed-block")
    def _owed(sources: Sources) -> str:
        return f"rate {sources.fmt('owed', 'events_per_s', ',.0f')}"

    PENDING["bench/results/owed.json"] = Pending("bench/x.py --out bench/results/owed.json", 7, lambda d: "run" in d)
    try:
        doc = (
            "<!-- value: owed events_per_s ,.0f -->1<!-- end value -->\n"
            "<!-- generated: test-owed-block -->\nold\n<!-- end generated: test-owed-block -->\n"
            "<!-- generated: test-owed-block -->\nold\n<!-- end generated: test-owed-block -->\n"
        )
        for content in (None, {"events_per_s": 5.0}):  # missing, then an older file without the new run's shape
            if content is not None:
                (repo / "bench/results/owed.json").write_text(json.dumps(content))
            text, problems = render_text(doc, Sources(repo))
            assert all(p.stale for p in problems)  # nothing fails to render: the document only needs a write
            assert f"-->{PENDING_VALUE}<!--" in text
            note = "*Not measured yet (`bench/results/owed.json`"
            assert note in text and "`bench/x.py --out bench/results/owed.json` makes it, about 7 min" in text
            assert text.count(note) == 1 and "*Not measured yet: see above (`bench/results/owed.json`).*" in text
            assert render_text(text, Sources(repo))[1] == []
        (repo / "bench/results/owed.json").write_text(json.dumps({"run": {}, "events_per_s": 34557.0}))
        text, _ = render_text(doc, Sources(repo))
        assert "-->34,557<!--" in text and text.count("rate 34,557") == 2 and "Not measured" not in text
    finally:
        REGIONS.pop("test-owed-block")
        PENDING.pop("bench/results/owed.json")


def test_every_owed_run_names_a_script_of_this_repository() -> None:
    from adgen.figures.regions import load_renderers
    from adgen.figures.sources import PENDING

    load_renderers()
    assert PENDING
    for path, owed in PENDING.items():
        scripts = [w for w in owed.command.split() if w.endswith(".py") or w.startswith("tests/")]
        assert scripts, f"{path}: {owed.command!r} names no script"
        assert all((REPO / w).exists() for w in scripts), f"{path}: {owed.command!r} names a missing file"


def test_the_reliability_table_cites_tests_that_exist() -> None:
    import re

    from adgen.figures.reliability import GUARANTEES

    for guarantee in GUARANTEES:
        for backing in guarantee.tests:
            path, _, name = backing.test.partition("::")
            source = (REPO / path).read_text()
            assert not name or re.search(rf"def {re.escape(name)}", source), f"no test {backing.test}"
