"""The rooms' import contracts (pyproject.toml, [tool.importlinter]) hold, and they do catch a forbidden import.

import-linter finds a package by walking its directory, but `adgen`'s rooms live beside `adgen/` and are
mapped in by pyproject's package-dir. So the check runs on a mirror: every room's .py files copied under
one `adgen/` tree in a temp dir, the exact layout the package has once installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def mirror_package(dest: Path) -> Path:
    """Copy every room to where it sits in the installed package (`adgen.streams` -> dest/adgen/streams)."""
    package_dir: dict[str, str] = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for package, source in package_dir.items():
        target = dest.joinpath(*package.split("."))
        for file in (REPO / source).rglob("*.py"):
            if "__pycache__" in file.parts:
                continue
            copy = target / file.relative_to(REPO / source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, copy)
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repo's contracts over `tree` (run from inside it, so nothing else is found first)."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(PYPROJECT), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_rooms_keep_their_import_contracts(tmp_path: Path) -> None:
    result = lint(mirror_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("room_file", "forbidden_import", "report"),
    [
        ("index/ad_index.py", "import adgen.model.encoder", "adgen.index is not allowed to import adgen.model"),
        (
            "streams/producer.py",
            "import adgen.runtime.tansu_quirks",
            "adgen.streams is not allowed to import adgen.runtime",
        ),
        ("processors/generation.py", "import adgen.runtime", "adgen.processors is not allowed to import adgen.runtime"),
        ("model/decoding.py", "import redis", "adgen.model is not allowed to import redis"),
        ("core/config.py", "import adgen.index.trie_arrays", "adgen.core is not allowed to import adgen.index"),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(
    tmp_path: Path, room_file: str, forbidden_import: str, report: str
) -> None:
    tree = mirror_package(tmp_path)
    room, _, rest = room_file.partition("/")
    victim = tree / "adgen" / room / rest
    victim.write_text(victim.read_text() + f"\n{forbidden_import}  # added by the test\n")
    result = lint(tree)
    assert result.returncode != 0
    assert report in result.stdout, result.stdout
