"""The scale-out section of docs/benchmarks.md renders from bench/results/scaleout.json, or says it is missing."""

from __future__ import annotations

import json
from pathlib import Path

from adgen.figures.scaleout import scaleout_table
from adgen.figures.sources import Sources


def phase(workers: int, events_per_s: float, steady: float | None, gen: float) -> dict[str, object]:
    return {
        "workers": workers,
        "events_per_s": events_per_s,
        "events_per_s_all_consuming": steady,
        "generations_per_s": gen,
    }


def test_the_table_shows_both_phases_the_ratios_and_the_load(tmp_path: Path) -> None:
    result = {
        "measured_at": "2026-11-28T10:00:00+00:00",
        "command": ".venv/bin/python bench/bench_scaleout.py",
        "cpus": 2,
        "loadavg_start": [0.4, 0.3, 0.2],
        "loadavg_end": [1.9, 1.0, 0.5],
        "one": phase(1, 12000.0, 13000.0, 40.0),
        "two": phase(2, 18000.0, None, 60.0),
        "ratios": {"events_per_s": 1.5, "events_per_s_all_consuming": None, "generations_per_s": 1.5},
    }
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "scaleout.json").write_text(json.dumps(result))
    text = scaleout_table(Sources(tmp_path))
    assert "| 1 worker(s) | 12,000 | 13,000 | 40.0 |" in text
    assert "| 2 worker(s) | 18,000 | - | 60.0 |" in text
    assert "| two / one | 1.50x | - | 1.50x |" in text
    assert "load average 0.40 at the start and 1.90 at the end" in text


def test_without_a_result_the_section_names_the_command_instead_of_a_number(tmp_path: Path) -> None:
    text = scaleout_table(Sources(tmp_path))
    assert text.startswith("Not measured yet:") and "bench/bench_scaleout.py" in text


def _scaleout_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_scaleout.py"
    spec = importlib.util.spec_from_file_location("scaleout_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_all_consuming_spans_from_the_last_worker_to_start_to_the_first_to_finish() -> None:
    bench = _scaleout_module()
    # counts move in 10k steps; worker b starts at t=1, worker a finishes at t=5, b at t=6; a pause between two
    # of a's batches (t=2 -> t=3) must not cut the stretch
    a = [0, 10_000, 20_000, 20_000, 30_000, 40_000, 40_000]
    b = [0, 0, 10_000, 20_000, 30_000, 40_000, 50_000]
    samples = [(float(t), {"a": (a[t], 0.0), "b": (b[t], 0.0)}) for t in range(7)]
    span, count = bench.all_consuming(samples, ["a", "b"])
    assert span == 3.0  # t=2 (b's first count) to t=5 (a's last)
    assert count == (40_000 + 40_000) - (20_000 + 10_000)
    one = [(float(t), {"a": (a[t], 0.0)}) for t in range(7)]
    assert bench.all_consuming(one, ["a"]) == (4.0, 30_000)  # t=1 to t=5
    apart = [(float(t), {"a": (min(a[t], 10_000), 0.0), "b": (b[t], 0.0)}) for t in range(7)]  # a done before b
    assert bench.all_consuming(apart, ["a", "b"]) == (0.0, 0.0)
