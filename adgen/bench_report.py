"""Every benchmark's JSON result as markdown tables (the detail of docs/benchmarks.md) and the overview plot.

Benchmarks write differently shaped JSON; flattening each into `path = value` rows keeps every number
visible without a renderer per benchmark, and the page can never show a number the JSON does not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_ROWS_PER_BENCH = 400
MAX_LIST_ITEMS = 12


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, printable value) for every scalar; long lists are cut with a note."""
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, sub in value.items():
            rows.extend(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(value, list):
        if value and all(not isinstance(v, dict | list) for v in value):
            shown = ", ".join(_fmt(v) for v in value[:MAX_LIST_ITEMS])
            more = f" … (+{len(value) - MAX_LIST_ITEMS})" if len(value) > MAX_LIST_ITEMS else ""
            return [(prefix, f"[{shown}{more}]")]
        rows = []
        for i, sub in enumerate(value[:MAX_LIST_ITEMS]):
            rows.extend(flatten(sub, f"{prefix}[{i}]"))
        if len(value) > MAX_LIST_ITEMS:
            rows.append((f"{prefix}[…]", f"{len(value) - MAX_LIST_ITEMS} more entries in the JSON"))
        return rows
    return [(prefix, _fmt(value))]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


#: name -> (script, extra arguments); each writes bench/results/<name>.json (`adgen bench` runs them).
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "runtime": ("bench/bench_runtime.py", []),
    "index": ("bench/bench_index.py", []),
    "decoder": ("bench/bench_decoder.py", []),
    "worker": ("bench/bench_worker.py", []),
    "search": ("bench/bench_search.py", ["--world", "var/demo/world", "--ci-dir", "var/demo/index/ci"]),
    "scaleout": ("bench/bench_scaleout.py", []),  # 1 vs 2 workers (docs/benchmarks.md, scale-out)
}
RESULTS_DIR = Path("bench/results")


def result_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def command_of(name: str) -> str:
    """The command that regenerates bench/results/<name>.json (recorded runs name their arguments in the JSON)."""
    if name not in BENCHMARKS:
        return "recorded run; its arguments are in the JSON"
    script, extra = BENCHMARKS[name]
    return " ".join([".venv/bin/python", script, *extra, "--out", str(result_path(name))])


def render(results: dict[str, Path], commands: dict[str, str], root: Path = Path(".")) -> str:
    """One section per result file (paths relative to `root`) with every number in it; depends only on the
    files (no clock, no host), so a committed page can be checked against its JSON."""
    lines: list[str] = []
    for name, path in results.items():
        lines += [f"## {name}", "", f"Command: `{commands.get(name, '?')}` · data: `{path}`", ""]
        if not (root / path).exists():
            lines += ["Not run (no result file).", ""]
            continue
        try:
            data = json.loads((root / path).read_text())
        except json.JSONDecodeError as exc:
            lines += [f"Unreadable result file: {exc}", ""]
            continue
        owed = _owed_note(Path(path), data)
        if owed is not None:
            lines += [f"Superseded, {owed}.", ""]
            continue
        rows = flatten(data)
        lines += ["| measure | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {v} |" for k, v in rows[:MAX_ROWS_PER_BENCH]]
        if len(rows) > MAX_ROWS_PER_BENCH:
            lines.append(f"| … | {len(rows) - MAX_ROWS_PER_BENCH} more rows in the JSON |")
        lines.append("")
    return "\n".join(lines)


def all_results(root: Path) -> dict[str, Path]:
    """The listed benchmarks first (in run order), then every other recorded result under bench/results."""
    listed = {name: result_path(name) for name in BENCHMARKS}
    others = {p.stem: p.relative_to(root) for p in sorted((root / RESULTS_DIR).glob("*.json")) if p.stem not in listed}
    return {**listed, **others}


def _owed_note(path: Path, data: Any) -> str | None:
    """The note of an owed run (adgen/figures/pending.py) when `data` is not that run's yet, else None."""
    from adgen.figures.sources import PENDING

    for ref, owed in PENDING.items():
        if path.as_posix().endswith(ref) and not owed.ready(data):
            return owed.note(ref)
    return None


def _load(path: Path) -> Any:
    """A result for the plot; a superseded one (an owed run's older file) counts as missing."""
    data = json.loads(path.read_text()) if path.exists() else None
    return None if data is None or _owed_note(path, data) else data


def plot_overview(results: dict[str, Path], runs_dir: Path, out_png: Path) -> list[str]:
    """One PNG with four panels, each drawn from a JSON file; returns what was missing (panel left blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing: list[str] = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    runs = [("world-small", "synthetic world"), ("amazon-small", "Amazon Scientific")]
    models = ["leadre", "sasrec", "popularity"]
    for i, (run, _label) in enumerate(runs):
        evaluation = _load(runs_dir / run / "eval" / "eval.json")
        if evaluation is None:
            missing.append(f"{runs_dir / run}/eval/eval.json")
            continue
        for j, model in enumerate(models):
            value = evaluation["results"].get(model, {}).get("ndcg@10")
            if value is not None:
                ax.bar(i + (j - 1) * 0.25, value, 0.25, color=f"C{j}", label=model if i == 0 else None)
    ax.set_xticks(range(len(runs)), [label for _, label in runs])
    ax.set_title("retrieval quality: NDCG@10 (leave-one-out, full ranking)")
    if ax.get_legend_handles_labels()[0]:  # nothing plotted when every run is missing
        ax.legend()

    ax = axes[0][1]
    decoder = _load(results["decoder"])
    if decoder is None:
        missing.append(str(results["decoder"]))
    else:
        keys = [
            ("a_hf_ms_per_prompt", "(a) HF generate"),
            ("b_unconstrained_ms_per_prompt", "(b) ours, free"),
            ("c_constrained_ms_per_prompt", "(c) ours, trie"),
        ]
        for i, row in enumerate(decoder["models"]):
            for j, (key, label) in enumerate(keys):
                ax.bar(i + (j - 1) * 0.25, row[key], 0.25, color=f"C{j}", label=label if i == 0 else None)
        ax.set_xticks(
            range(len(decoder["models"])), [f"{r['model']} ({r['params'] / 1e6:.1f}M)" for r in decoder["models"]]
        )
        ax.set_yscale("log")
        ax.set_ylabel("ms per prompt (log)")
        ax.set_title("decoder: 32 prompts x 200 tokens, B = K = 20, 100k-item trie")
        ax.legend()

    ax = axes[1][0]
    worker = _load(results["worker"])
    windows = (worker or {}).get("windows")
    if not windows:
        missing.append(f"{results['worker']} (windows)")
    else:
        variants = [v for v in ("drain", "naive", "naive_redis", "batched") if v in windows]
        ax.bar(
            variants, [windows[v]["events_per_s"] for v in variants], color=["C7", "C3", "C1", "C2"][: len(variants)]
        )
        ax.set_ylabel("behaviour events/s (one worker)")
        ax.set_title("nearline windows: batched agent vs naive per-event agents")

    ax = axes[1][1]
    search = _load(results["search"])
    if search is None:
        missing.append(str(results["search"]))
    else:
        rows = [
            ("cache hit", "cache_hit"),
            ("cache miss", "cache_miss"),
            ("BM25", "baseline_bm25"),
            ("free beam", "baseline_unconstrained_beam"),
        ]
        rows = [(label, search[key]) for label, key in rows if key in search]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["p50_ms"] for _, r in rows], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r["p99_ms"] for _, r in rows], 0.4, label="p99")
        ax.set_xticks(list(x), [label for label, _ in rows])
        ax.set_yscale("log")
        ax.set_ylabel("ms per query (log)")
        ax.set_title("RARE query path latency")
        ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return missing
