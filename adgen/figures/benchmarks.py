"""docs/benchmarks.md: every number of every benchmark result, flattened into one table per file."""

from __future__ import annotations

from adgen.bench_report import all_results, command_of, render
from adgen.figures.regions import region
from adgen.figures.sources import Sources


@region("benchmarks-detail")
def benchmarks_detail(sources: Sources) -> str:
    results = all_results(sources.root)
    return render(results, {name: command_of(name) for name in results}, sources.root)
