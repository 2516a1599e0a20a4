import json
from pathlib import Path

from adgen.bench_report import MAX_LIST_ITEMS, flatten, render


def test_flatten_keeps_every_scalar_with_its_path() -> None:
    rows = dict(flatten({"a": {"b": 1.23456, "c": [1, 2]}, "d": [{"e": "x|y"}]}))
    assert rows == {"a.b": "1.235", "a.c": "[1, 2]", "d[0].e": "x\\|y"}


def test_long_lists_are_cut_and_say_so() -> None:
    rows = dict(flatten({"xs": list(range(MAX_LIST_ITEMS + 5))}))
    assert rows["xs"].endswith("… (+5)]")


def test_render_marks_missing_results_and_shows_present_ones(tmp_path: Path) -> None:
    present = tmp_path / "a.json"
    present.write_text(json.dumps({"throughput": {"events_per_s": 21000.0, "ratio_vs_naive": 19.5}}))
    page = render({"a": present, "b": tmp_path / "missing.json"}, {"a": "python bench/a.py"})
    assert "| `throughput.events_per_s` | 2.1e+04 |" in page
    assert "| `throughput.ratio_vs_naive` | 19.5 |" in page
    assert "## b" in page and "Not run (no result file)." in page


def test_overview_plot_is_written_and_names_every_missing_result(tmp_path: Path) -> None:
    from adgen.bench_report import plot_overview

    search = tmp_path / "search.json"
    search.write_text(
        json.dumps({"cache_hit": {"p50_ms": 0.02, "p99_ms": 0.2}, "cache_miss": {"p50_ms": 15, "p99_ms": 40}})
    )
    results = {"decoder": tmp_path / "decoder.json", "worker": tmp_path / "worker.json", "search": search}
    missing = plot_overview(results, tmp_path / "runs", tmp_path / "out.png")
    assert (tmp_path / "out.png").stat().st_size > 1000
    assert str(tmp_path / "decoder.json") in missing
    assert any("worker.json" in m for m in missing)
    assert not any("search.json" in m for m in missing)
