"""docs/indexing.md: index quality on Amazon Scientific (docs/data/index-quality/, from `adgen index build`
+ `adgen index report`). The page's benchmark blocks are rendered by `bench/bench_index.py --render-docs`
(the index helper's own renderer, checked by tests/test_live_index.py)."""

from __future__ import annotations

from typing import Any

from adgen.figures.regions import region
from adgen.figures.sources import Sources

QUALITY = "docs/data/index-quality/report.json"
BUILD = "docs/data/index-quality/build_report.json"
RUN = "docs/data/index-quality/run.json"


def _pct(x: float) -> str:
    return f"{x:.1%}"


@region("index-quality-run")
def index_quality_run(sources: Sources) -> str:
    q, b, run = sources.data(QUALITY), sources.data(BUILD), sources.data(RUN)
    levels = len(b["codebook_sizes"]) - 1
    return (
        f"Measured with `{run['command']}` (commit {run['commit']}, {run['started_at'][:10]}): {levels} levels x"
        f" {b['codebook_sizes'][0]} codes, seed {q['seed']}, {q['sampled_ads']:,} sampled ads for the neighbour"
        f" check. The {b['items'] - q['items']:,} products without a category are left out of the category checks,"
        f' so the report covers {q["items"]:,} of the {b["items"]:,} ads. "first-level" is the first category'
        ' under the catalogue root (e.g. *Fasteners*), "second-level" the pair of the first two (e.g.'
        " *Fasteners > Collated Fasteners*)."
    )


@region("index-quality-usage")
def index_quality_usage(sources: Sources) -> str:
    q, b = sources.data(QUALITY), sources.data(BUILD)
    n = len(q["utilisation"])
    lines = [
        "| code usage | " + " | ".join(f"level {i + 1}" for i in range(n)) + " |",
        "|---|" + "---|" * n,
        "| utilisation | " + " | ".join(f"{u:.0%}" for u in q["utilisation"]) + " |",
        f"| perplexity (max {q['codebook_sizes'][0]}) | " + " | ".join(f"{p:.1f}" for p in q["perplexity"]) + " |",
        "",
        f"Collision rate before the extra code (1 − distinct semantic code tuples / ads):"
        f" **{_pct(q['collision_rate_before_extra_code'])}** on the ads with a category, {_pct(b['collision_rate'])}"
        f" on all {b['items']:,}; the largest group of ads sharing their semantic codes holds {b['max_collisions']},"
        f" so the collision level was sized to {b['codebook_sizes'][-1]} codes (highest collision code used:"
        f" {q['max_collision_code']}).",
    ]
    return "\n".join(lines)


def _rows(checks: list[dict[str, Any]], level: str, key: str) -> list[dict[str, Any]]:
    return sorted((c for c in checks if c["level"] == level), key=lambda c: c[key])


@region("index-quality-neighbours")
def index_quality_neighbours(sources: Sources) -> str:
    q = sources.data(QUALITY)
    levels = list(dict.fromkeys(c["level"] for c in q["neighbours"]))
    ks = sorted({c["k"] for c in q["neighbours"]})
    lines = ["| category | " + " | ".join(f"K = {k}" for k in ks) + " | chance |", "|---|" + "---|" * (len(ks) + 1)]
    for level in levels:
        rows = _rows(q["neighbours"], level, "k")
        cells = " | ".join(_pct(c["same_category"]) for c in rows)
        lines.append(f"| {level} | {cells} | {_pct(rows[0]['chance'])} |")
    return "\n".join(lines)


@region("index-quality-coherence")
def index_quality_coherence(sources: Sources) -> str:
    q = sources.data(QUALITY)
    levels = list(dict.fromkeys(c["level"] for c in q["coherence"]))
    lengths = sorted({c["prefix_length"] for c in q["coherence"]})
    names = {1: "shared first code", 2: "first two codes", 3: "all three codes"}
    head = [names.get(n, f"first {n} codes") for n in lengths]
    lines = ["| category | " + " | ".join(head) + " | chance |", "|---|" + "---|" * (len(lengths) + 1)]
    for level in levels:
        rows = _rows(q["coherence"], level, "prefix_length")
        cells = [f"{_pct(c['same_category_given_shared_prefix'])} ({c['lift']:.1f}×)" for c in rows]
        lines.append(f"| {level} | " + " | ".join(cells) + f" | {_pct(rows[0]['chance'])} |")
    pairs = _rows(q["coherence"], levels[0], "prefix_length")
    shares = ", ".join(f"{c['pairs']:,} share the {names.get(c['prefix_length'], 'prefix')}" for c in pairs)
    lines += ["", f"(pairs: {shares}.)", "", "![index quality](data/index-quality/report.png)"]
    return "\n".join(lines)
