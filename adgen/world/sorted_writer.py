"""A JSONL writer that emits lines sorted by an integer timestamp in bounded memory (external merge sort).

Users are simulated one by one, so their events arrive grouped by user, but every event file must be
sorted by event_time for replay. Lines are buffered, sorted and spilled to run files; `close()` merges the
runs with `heapq.merge` (in rounds of at most `fan_in` files, so any number of runs fits the open-file
limit). Order is total (timestamp, then the line itself, which starts with a unique event id), so the
output is byte-identical for the same input.
"""

from __future__ import annotations

import heapq
import shutil
from contextlib import ExitStack
from pathlib import Path

_TS_WIDTH = 12  # seconds since the epoch, zero padded: string order == time order until year 33658


class SortedJsonlWriter:
    def __init__(self, path: Path, spill_dir: Path, buffer_lines: int = 200_000, fan_in: int = 128) -> None:
        self.path = path
        self.spill_dir = spill_dir / path.stem
        self.buffer_lines = buffer_lines
        self.fan_in = fan_in
        self.count = 0
        self._buffer: list[str] = []
        self._runs: list[Path] = []

    def add(self, ts: int, line: str) -> None:
        """Queue one JSON line (without newline) whose sort key is `ts`."""
        self._buffer.append(f"{ts:0{_TS_WIDTH}d}\t{line}\n")
        self.count += 1
        if len(self._buffer) >= self.buffer_lines:
            self._spill()

    def _spill(self) -> None:
        self._buffer.sort()
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        run = self.spill_dir / f"run-{len(self._runs):06d}.txt"
        run.write_text("".join(self._buffer), encoding="utf-8")
        self._runs.append(run)
        self._buffer = []

    def close(self) -> int:
        """Write the sorted file; returns the number of lines."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._runs:
            self._buffer.sort()
            with self.path.open("w", encoding="utf-8") as out:
                out.writelines(line[_TS_WIDTH + 1 :] for line in self._buffer)
            self._buffer = []
            return self.count
        if self._buffer:
            self._spill()
        runs = self._runs
        round_no = 0
        while len(runs) > self.fan_in:
            merged = []
            for start in range(0, len(runs), self.fan_in):
                target = self.spill_dir / f"merge-{round_no}-{start:06d}.txt"
                self._merge(runs[start : start + self.fan_in], target, strip_key=False)
                merged.append(target)
            runs = merged
            round_no += 1
        self._merge(runs, self.path, strip_key=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        return self.count

    def _merge(self, runs: list[Path], target: Path, strip_key: bool) -> None:
        with ExitStack() as stack, target.open("w", encoding="utf-8") as out:
            files = [stack.enter_context(run.open(encoding="utf-8")) for run in runs]
            merged = heapq.merge(*files)
            if strip_key:
                out.writelines(line[_TS_WIDTH + 1 :] for line in merged)
            else:
                out.writelines(merged)
        for run in runs:
            run.unlink()
