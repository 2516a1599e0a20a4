"""The search-quality evidence behind docs/search.md and README: a seeded 1,000-ad world, then
`adgen ci experiment` (build variants judged on validation, the chosen one and the baselines scored on the
test split once), writing docs/data/search/world.json (world seed 0) or world_seed<N>.json. Then
`adgen bench report` renders the documents; the seeds table there compares the served path with the best
baseline on every committed world seed.

    flock /tmp/adgen-quiet.lock nice -n 19 .venv/bin/python bench/search_quality.py
    flock /tmp/adgen-quiet.lock nice -n 19 .venv/bin/python bench/search_quality.py --seed 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="World seed (the default paths follow it).")
    parser.add_argument("--world", type=Path, default=None, help="Default: var/world1k (seed 0), var/world1k-seed<N>.")
    parser.add_argument("--builds", type=Path, default=None, help="Default: var/ci-experiment[-seed<N>].")
    parser.add_argument("--out", type=Path, default=None, help="Default: docs/data/search/world[_seed<N>].json.")
    args = parser.parse_args()
    suffix = "" if args.seed == 0 else f"-seed{args.seed}"
    world_dir = args.world or Path(f"var/world1k{suffix}")
    builds = args.builds or Path(f"var/ci-experiment{suffix}")
    out = args.out or Path("docs/data/search/" + ("world.json" if args.seed == 0 else f"world_seed{args.seed}.json"))
    cli = [sys.executable, "-m", "adgen.cli"]
    if not (world_dir / "queries" / "labels.jsonl").is_file():
        world = ["world", "generate", "--users", "300", "--ads", "1000", "--queries", "1000", "--seed", str(args.seed)]
        subprocess.run([*cli, *world, "--out", str(world_dir)], check=True)
    experiment = ["ci", "experiment", "--world", str(world_dir), "--out", str(builds), "--result", str(out)]
    subprocess.run([*cli, *experiment], check=True)


if __name__ == "__main__":
    main()
