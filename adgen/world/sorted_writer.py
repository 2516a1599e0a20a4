"""Time-sorted JSONL in bounded memory (external merge sort).

Users are simulated one by one (possibly in several processes), so their events arrive grouped by user,
but every event file must be sorted by event_time for replay. `RunWriter` buffers lines, sorts them and
spills sorted run files; `merge_runs` merges any number of runs with `heapq.merge`, in rounds of at most
`fan_in` files so the open-file limit is never hit. Order is total (timestamp, then the line itself,
which starts with a unique event id), so the output is byte-identical for the same input, whatever the
buffer size or the number of processes.
"""

from __future__ import annotations

import heapq
from contextlib import ExitStack
from pathlib import Path

_TS_WIDTH = 12  # seconds since the epoch, zero padded: string order == time order until year 33658


class RunWriter:
    """Collects (ts, line) pairs and spills them as sorted run files named `{prefix}-{n}.txt`."""

    def __init__(self, spill_dir: Path, prefix: str, buffer_lines: int = 200_000) -> None:
        self.spill_dir = spill_dir
        self.prefix = prefix
        self.buffer_lines = buffer_lines
        self.count = 0
        self.runs: list[Path] = []
        self._buffer: list[str] = []

    def add(self, ts: int, line: str) -> None:
        """Queue one JSON line (without newline) whose sort key is `ts`."""
        self._buffer.append(f"{ts:0{_TS_WIDTH}d}\t{line}\n")
        self.count += 1
        if len(self._buffer) >= self.buffer_lines:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        run = self.spill_dir / f"{self.prefix}-{len(self.runs):06d}.txt"
        run.write_text("".join(self._buffer), encoding="utf-8")
        self.runs.append(run)
        self._buffer = []

    def finish(self) -> list[Path]:
        """Spill what is left; returns the sorted run files."""
        if self._buffer:
            self._spill()
        return self.runs


def merge_runs(runs: list[Path], target: Path, scratch: Path, fan_in: int = 128) -> None:
    """Merge sorted runs into `target` (sort keys stripped) and delete the runs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    round_no = 0
    while len(runs) > fan_in:
        merged = []
        for start in range(0, len(runs), fan_in):
            partial = scratch / f"{target.stem}-merge-{round_no}-{start:06d}.txt"
            _merge(runs[start : start + fan_in], partial, strip_key=False)
            merged.append(partial)
        runs = merged
        round_no += 1
    _merge(runs, target, strip_key=True)


def _merge(runs: list[Path], target: Path, strip_key: bool) -> None:
    with ExitStack() as stack, target.open("w", encoding="utf-8") as out:
        files = [stack.enter_context(run.open(encoding="utf-8")) for run in runs]
        merged = heapq.merge(*files)
        if strip_key:
            out.writelines(line[_TS_WIDTH + 1 :] for line in merged)
        else:
            out.writelines(merged)
    for run in runs:
        run.unlink()
