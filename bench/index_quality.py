"""Index quality on the real Amazon Scientific catalogue, committed as docs/data/index-quality/*.json.

    .venv/bin/python bench/index_quality.py --out docs/data/index-quality

Runs `adgen index build --amazon DIR` (3 levels x 64 codes, 100 epochs, seed 0) into a scratch directory,
then `adgen index report` (1,000 sampled ads, seed 0), both as a user would, and keeps what
docs/indexing.md and the README cite: `report.json` (code use, Table 3 neighbours, S-ID coherence),
`report.png`, `build_report.json` (the build's own report: items, collision rate, largest group) and
`run.json` (command, commit, times, load average at the start and the end). The catalogue is found in
`$ADGEN_SHARED_DATA/datasets/amazon-scientific`, else `<repo>/../shared/datasets/amazon-scientific`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import REPO, finish, run_info

ADGEN = str(Path(sys.executable).with_name("adgen"))


def default_amazon() -> Path:
    shared = Path(os.environ.get("ADGEN_SHARED_DATA") or REPO.parent / "shared")
    return shared / "datasets" / "amazon-scientific"


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/data/index-quality"))
    parser.add_argument("--amazon", type=Path, default=None, help="Amazon (LC-Rec format) directory.")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    amazon = args.amazon or default_amazon()
    if not amazon.is_dir():
        parser.error(f"no Amazon catalogue at {amazon} (pass --amazon or set ADGEN_SHARED_DATA)")
    info = run_info()
    with tempfile.TemporaryDirectory(prefix="adgen-index-quality-") as tmp:
        work = Path(tmp)
        # the embedding cache is kept where the settings say (the texts are the same run to run)
        env = {**os.environ, "ADGEN_PATHS__MODELS": str(work / "models")}
        index = work / "index"
        build = [ADGEN, "index", "build", "--amazon", str(amazon), "--index", str(index)]
        run([*build, "--levels", "3", "--codebook-size", "64", "--epochs", str(args.epochs), "--seed", "0"], env)
        out = args.out if args.out.is_absolute() else REPO / args.out
        out.mkdir(parents=True, exist_ok=True)
        report = [ADGEN, "index", "report", "--amazon", str(amazon), "--index", str(index)]
        run([*report, "--out", str(out), "--samples", str(args.samples)], env)
        (built,) = (work / "models" / "rqvae").glob("*/build_report.json")
        shutil.copyfile(built, out / "build_report.json")
    info["amazon"] = str(amazon.relative_to(REPO.parent)) if amazon.is_relative_to(REPO.parent) else str(amazon)
    (out / "run.json").write_text(json.dumps(finish(info), indent=1) + "\n")
    print(f"wrote {out}/report.json, report.png, build_report.json, run.json; then: adgen bench report")


if __name__ == "__main__":
    main()
