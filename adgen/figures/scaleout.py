"""docs/benchmarks.md, scale-out section: one worker vs two on the same topics (bench/bench_scaleout.py)."""

from __future__ import annotations

from typing import Any

from adgen.bench_report import command_of
from adgen.figures.regions import region
from adgen.figures.sources import Sources

SOURCE = "scaleout"  # bench/results/scaleout.json


def summary_table(result: dict[str, Any]) -> str:
    """One row per phase (1 worker, 2 workers), then the two/one ratios (markdown)."""
    rows = ["| phase | events/s (drain) | events/s (all consuming) | users generated/s |", "| --- | --- | --- | --- |"]
    for phase in ("one", "two"):
        p = result[phase]
        steady = f"{p['events_per_s_all_consuming']:,.0f}" if p["events_per_s_all_consuming"] else "-"
        rows.append(
            f"| {p['workers']} worker(s) | {p['events_per_s']:,.0f} | {steady} | {p['generations_per_s']:,.1f} |"
        )
    r = result["ratios"]
    steady_ratio = f"{r['events_per_s_all_consuming']:.2f}x" if r["events_per_s_all_consuming"] else "-"
    rows.append(f"| two / one | {r['events_per_s']:.2f}x | {steady_ratio} | {r['generations_per_s']:.2f}x |")
    return "\n".join(rows)


@region("scaleout-table")
def scaleout_table(sources: Sources) -> str:
    """The table and the load average of the committed run, or 'not measured' with the command to run."""
    if not sources.path(SOURCE).is_file():
        return f"Not measured yet: `{command_of(SOURCE)}` on a quiet machine writes it.\n"
    result = sources.data(SOURCE)
    start, end = result["loadavg_start"], result["loadavg_end"]
    return (
        f"{summary_table(result)}\n\n"
        f"Measured {result['measured_at']} on {result['cpus']} CPUs, load average {start[0]:.2f} at the start "
        f"and {end[0]:.2f} at the end; `{result['command']}`.\n"
    )
