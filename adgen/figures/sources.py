"""Reading one number out of a committed JSON file, and printing it the way a document shows it.

A figure is named by a *source* and a *path*: the source is a JSON file in the repository (a short name
`worker` means `bench/results/worker.json`; anything with a `/` is a path from the repo root), the path
walks into it (`windows.batched.events_per_s`, `models[0].params`, `models[model=small].params`,
`tests["a.py::test_x"].outcome` for keys holding dots); `@name` is a figure computed from committed JSON
by a function registered with `@derived`. Every
failure names the file and the path, so a stale document points at what to regenerate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[\"([^\"]+)\"\]|\[([^\]]+=[^\]]+)\]")


class FigureError(ValueError):
    """A figure cannot be rendered: missing file, missing key, wrong type or a bad format spec."""


def _always(_data: Any) -> bool:
    return True


@dataclass(frozen=True)
class Pending:
    """A result a document cites whose run is owed (too heavy for a loaded machine): the command that makes
    it, its expected duration on a quiet machine, and a test of whether the committed file is already the
    new run's (an older file of another shape is not)."""

    command: str
    minutes: float
    ready: Callable[[Any], bool] = _always
    why: str = "not committed yet"

    def note(self, path: str) -> str:
        return (
            f"not measured yet (`{path}`: {self.why}); `{self.command}` makes it, about {self.minutes:g} min on a"
            " quiet machine, then `adgen bench report`"
        )


#: Owed runs, by repo-relative path (registered in adgen/figures/pending.py). A figure from a listed file
#: that is missing or not `ready` renders as a "not measured yet" note naming the command, instead of
#: failing the docs check; once the run's JSON is committed, the figure renders from it.
PENDING: dict[str, Pending] = {}


class PendingFigure(FigureError):
    """The figure's source is an owed run (see PENDING); `note` says what makes it."""

    def __init__(self, path: str, pending: Pending) -> None:
        super().__init__(pending.note(path))
        self.path, self.pending = path, pending
        self.note = pending.note(path)


#: Figures computed from committed JSON (e.g. counts over many test results), read as `@name` sources;
#: registered with `@derived("name")` next to the renderers that need them.
DERIVED: dict[str, Callable[[Sources], Any]] = {}


def derived(name: str) -> Callable[[Callable[[Sources], Any]], Callable[[Sources], Any]]:
    def register(fn: Callable[[Sources], Any]) -> Callable[[Sources], Any]:
        DERIVED[name] = fn
        return fn

    return register


def source_path(ref: str) -> Path:
    """Repo-relative path of a source: `worker` -> bench/results/worker.json; `docs/data/x.json` as is."""
    if "/" in ref or ref.endswith(".json"):
        return Path(ref)
    return RESULTS_DIR / f"{ref}.json"


Selector = tuple[tuple[str, str], ...]


def parse_path(expr: str) -> list[str | int | Selector]:
    """`a.b[2].c[model=small,k=10]["x.y"]` -> ['a', 'b', 2, 'c', (('model', 'small'), ('k', '10')), 'x.y'];
    raises on leftovers."""
    steps: list[str | int | Selector] = []
    pos = 0
    while pos < len(expr):
        if expr[pos] == "." and pos > 0:
            pos += 1
        match = _STEP.match(expr, pos)
        if match is None:
            raise FigureError(f"bad path {expr!r} at character {pos}: expected a key, [index] or [key=value]")
        key, index, quoted, selector = match.groups()
        if key is not None or quoted is not None:
            steps.append(key if key is not None else quoted)
        elif index is not None:
            steps.append(int(index))
        else:
            pairs = [part.partition("=") for part in selector.split(",")]
            if any(not k or not eq for k, eq, _ in pairs):
                raise FigureError(f"bad selector [{selector}] in {expr!r}: expected [key=value,key=value]")
            steps.append(tuple((k.strip(), v.strip()) for k, _, v in pairs))
        pos = match.end()
    if not steps:
        raise FigureError("empty path")
    return steps


def walk(data: Any, expr: str, where: str = "") -> Any:
    """The value at `expr` inside `data`; the error names the first step that is not there."""
    node = data
    done: list[str] = []
    for step in parse_path(expr):
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise FigureError(f"{where}: {'.'.join(done) or '<root>'} has no item [{step}] (path {expr!r})")
            node = node[step]
            done.append(f"[{step}]")
        elif isinstance(step, tuple):
            items = node if isinstance(node, list) else []
            hits = [x for x in items if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in step)]
            wanted = ",".join(f"{k}={v}" for k, v in step)
            if len(hits) != 1:
                raise FigureError(
                    f"{where}: {'.'.join(done) or '<root>'} has {len(hits)} items with {wanted} (path {expr!r})"
                )
            node = hits[0]
            done.append(f"[{wanted}]")
        else:
            if not isinstance(node, dict) or step not in node:
                raise FigureError(f"{where}: {'.'.join(done) or '<root>'} has no key {step!r} (path {expr!r})")
            node = node[step]
            done.append(step)
    return node


#: Named formats for values that are not plain numbers.
NAMED_FORMATS: dict[str, dict[Any, str]] = {
    "met": {True: "met", False: "**missed**"},
    "yesno": {True: "yes", False: "no"},
    "pass": {True: "PASS", False: "**FAIL**"},
}


def format_value(value: Any, spec: str = "") -> str:
    """Print `value` per `spec`: a Python format spec (`,.0f`, `.1%`), optionally after a scale
    (`/1e6:.1f` divides, `*1000:.0f` multiplies), a named format (`met`: True -> met, False -> **missed**)
    or a target (`>=35`, `<=1.1`: met or **missed**).
    Without a spec, floats print with 4 significant digits and everything else as is."""
    if spec in NAMED_FORMATS:
        if not isinstance(value, bool):
            raise FigureError(f"format {spec!r} needs a boolean, got {value!r}")
        return NAMED_FORMATS[spec][value]
    if spec[:2] in (">=", "<="):  # a target: "met" or "**missed**"
        try:
            bound = float(spec[2:])
        except ValueError as exc:
            raise FigureError(f"bad target {spec!r}: expected >=NUMBER or <=NUMBER") from exc
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FigureError(f"target {spec!r} needs a number, got {value!r}")
        return NAMED_FORMATS["met"][value >= bound if spec[0] == ">" else value <= bound]
    factor = 1.0
    if spec[:1] in ("*", "/"):
        factor_text, _, rest = spec[1:].partition(":")
        try:
            factor = float(factor_text)
        except ValueError as exc:
            raise FigureError(f"bad scale {factor_text!r} in format spec {spec!r}") from exc
        if factor == 0:
            raise FigureError(f"scale 0 in format spec {spec!r}")
        factor = factor if spec[0] == "*" else 1.0 / factor
        spec = rest
    if isinstance(value, bool) or not isinstance(value, int | float):
        if spec or factor != 1.0:
            raise FigureError(f"format {spec!r} cannot print the {type(value).__name__} {value!r}")
        return str(value)
    number = value * factor if factor != 1.0 else value
    if not spec:
        return f"{number:.4g}" if isinstance(number, float) else str(number)
    try:
        return format(number, spec)
    except ValueError as exc:
        raise FigureError(f"format {spec!r} cannot print {value!r}: {exc}") from exc


class Sources:
    """The committed JSON files of one repository checkout, each read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, Any] = {}

    def path(self, ref: str) -> Path:
        return self.root / source_path(ref)

    def data(self, ref: str) -> Any:
        """The parsed JSON of a source (or an `@name` derived source); a missing or broken file is a
        FigureError naming it."""
        if ref.startswith("@"):
            if ref[1:] not in DERIVED:
                raise FigureError(f"no derived source {ref!r} (known: {', '.join(sorted(DERIVED))})")
            return DERIVED[ref[1:]](self)
        path = self.path(ref)
        owed = PENDING.get(source_path(ref).as_posix())
        if owed is not None and not path.is_file():
            raise PendingFigure(source_path(ref).as_posix(), owed)
        if path not in self._cache:
            if not path.is_file():
                raise FigureError(
                    f"{source_path(ref)} does not exist (a document cites it: commit it or drop the figure)"
                )
            try:
                self._cache[path] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise FigureError(f"{source_path(ref)} is not valid JSON: {exc}") from exc
        if owed is not None and not owed.ready(self._cache[path]):
            raise PendingFigure(source_path(ref).as_posix(), owed)
        return self._cache[path]

    def get(self, ref: str, expr: str) -> Any:
        return walk(self.data(ref), expr, ref if ref.startswith("@") else str(source_path(ref)))

    def fmt(self, ref: str, expr: str, spec: str = "") -> str:
        """One figure as the document prints it."""
        return format_value(self.get(ref, expr), spec)
