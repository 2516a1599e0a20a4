"""The search-quality evidence behind docs/search.md and README: a seeded 1,000-ad world, then
`adgen ci experiment` (build variants judged on validation, the chosen one and the baselines scored on the
test split once), writing docs/data/search/world.json. Then `adgen bench report` renders the documents.

    flock /tmp/adgen-quiet.lock nice -n 19 .venv/bin/python bench/search_quality.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("var/world1k"))
    parser.add_argument("--builds", type=Path, default=Path("var/ci-experiment"))
    parser.add_argument("--out", type=Path, default=Path("docs/data/search/world.json"))
    args = parser.parse_args()
    cli = [sys.executable, "-m", "adgen.cli"]
    if not (args.world / "queries" / "labels.jsonl").is_file():
        world = ["world", "generate", "--users", "300", "--ads", "1000", "--queries", "1000", "--seed", "0"]
        subprocess.run([*cli, *world, "--out", str(args.world)], check=True)
    experiment = ["ci", "experiment", "--world", str(args.world), "--out", str(args.builds), "--result", str(args.out)]
    subprocess.run([*cli, *experiment], check=True)


if __name__ == "__main__":
    main()
