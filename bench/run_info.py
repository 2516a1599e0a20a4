"""What every committed benchmark result records about its run: when, where, which code, and how busy
the machine was at the start and at the end (a contaminated run shows in its load average)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def run_info() -> dict[str, Any]:
    """Call at the start of a run; pass the dict to `finish` at the end."""
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }


def finish(info: dict[str, Any]) -> dict[str, Any]:
    info["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return info
