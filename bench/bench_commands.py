"""The README's two commands from a fresh clone: wall time, and what the test run reported.

    .venv/bin/python bench/bench_commands.py --out bench/results/commands.json [--skip-demo]

Clones the committed HEAD into a temporary directory beside this repository (no .venv, no var/; `../shared` resolves
as for the repository itself), then runs `bash scripts/test.sh`
and `bash scripts/demo.sh` there exactly as a user would, one after the other, then the demo a second time
(cached stages). Records each wall time, pytest's summary counts (passed, skipped, failed) and the load
average before and after. The pip cache of the machine is used, as on any developer machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import REPO, finish, run_info

SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def timed(cmd: list[str], cwd: Path, log: Path) -> dict[str, Any]:
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "wall_s": round(time.monotonic() - started, 1)}


def pytest_counts(log: Path) -> dict[str, int]:
    """Counts from pytest's last summary line ('386 passed, 1 skipped in 223.1s')."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if " in " in line and "passed" in line]
    counts: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}
    for number, what in SUMMARY.findall(lines[-1] if lines else ""):
        counts[what.rstrip("s") if what.startswith("error") else what] = int(number)
    seconds = re.search(r" in ([\d.]+)s", lines[-1]) if lines else None
    if seconds:
        counts["pytest_s"] = round(float(seconds.group(1)))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/commands.json"))
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument(
        "--logs", type=Path, default=REPO / "var" / "runs" / "commands", help="Where the commands' logs are kept."
    )
    args = parser.parse_args()
    info = run_info()
    result: dict[str, Any] = {"run": info}
    # the clone sits beside this repository, so `../shared` (the datasets) resolves for it as for a user's clone
    with (
        tempfile.TemporaryDirectory(prefix="adgen-fresh-clone-", dir=REPO.parent) as clone_dir,
        tempfile.TemporaryDirectory(prefix="adgen-fresh-clone-logs-") as tmp,
    ):
        clone = Path(clone_dir)
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True)
        result["clone_commit"] = head.stdout.strip()
        logs = Path(tmp) / "logs"
        logs.mkdir()
        result["test"] = timed(["bash", "scripts/test.sh"], clone, logs / "test.log")
        result["test"].update(pytest_counts(logs / "test.log"))
        print("test:", result["test"], flush=True)
        if not args.skip_demo:
            result["demo"] = timed(["bash", "scripts/demo.sh"], clone, logs / "demo.log")
            print("demo:", result["demo"], flush=True)
            result["demo_again"] = timed(["bash", "scripts/demo.sh"], clone, logs / "demo-again.log")
            print("demo again:", result["demo_again"], flush=True)
        shutil.copytree(logs, args.logs, dirs_exist_ok=True)  # the demo's summary and pytest's report, kept
        result["logs"] = str(args.logs)
        failed = [name for name in ("test", "demo", "demo_again") if result.get(name, {}).get("exit_code")]
        if failed:
            for name in failed:
                log = logs / f"{name.replace('_again', '-again')}.log"
                print(f"--- {name} failed; tail of {log}:\n" + "\n".join(log.read_text().splitlines()[-40:]))
    finish(info)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
