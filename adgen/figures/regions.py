"""Generated regions in README.md and docs/*.md, and the registry of functions that render them.

Two kinds of marker, both invisible in rendered markdown:

- a block, rendered by a registered function (tables, whole paragraphs)::

      <!-- generated: decoder-table -->
      ...whatever the function returns...
      <!-- end generated: decoder-table -->

- an inline value, self-describing (source, path, optional format; see `sources.py`)::

      <!-- value: worker windows.batched.events_per_s ,.0f -->34,557<!-- end value -->

A figure whose source is an owed run (registered in `pending.py`) renders as a note naming the command
that makes it. `render_text` replaces what sits between the markers; `check_documents` reports every region whose text
differs from what the committed JSON gives, which is what the docs test asserts. To add a block, write a
function `(Sources) -> str` in any module of the `adgen.figures` package and decorate it with
`@region("name")`: modules there are imported automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adgen.figures.sources import FigureError, PendingFigure, Sources

Renderer = Callable[[Sources], str]

BLOCK = re.compile(
    r"<!-- generated: (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- end generated: (?P<end>[\w.-]+) -->", re.DOTALL
)
VALUE = re.compile(r"<!-- value: (?P<args>[^\n]*?) -->(?P<body>[^\n]*?)<!-- end value -->")
_BLOCK_OPEN = re.compile(r"<!-- generated: ")
_VALUE_OPEN = re.compile(r"<!-- value: ")

#: Documents that may hold generated regions (repo-relative globs).
DOCUMENT_GLOBS = ("README.md", "docs/*.md")

REGIONS: dict[str, Renderer] = {}

#: What an inline value from an owed run (sources.PENDING) shows until its JSON is committed.
PENDING_VALUE = "(not measured yet)"


def region(name: str) -> Callable[[Renderer], Renderer]:
    """Register `fn` as the renderer of `<!-- generated: name -->` blocks."""

    def register(fn: Renderer) -> Renderer:
        if name in REGIONS and REGIONS[name] is not fn:
            raise ValueError(f"region {name!r} is registered twice ({REGIONS[name].__module__}, {fn.__module__})")
        REGIONS[name] = fn
        return fn

    return register


def load_renderers() -> dict[str, Renderer]:
    """Import every module of the adgen.figures package so their @region functions register."""
    import adgen.figures as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return REGIONS


@dataclass(frozen=True)
class Problem:
    """A region that is out of date or cannot be rendered."""

    document: str
    line: int
    region: str
    detail: str
    stale: bool = False  # True: renders fine but the document shows other text (fixed by a write)

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.region}: {self.detail}"


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _render_value(args: str, sources: Sources) -> str:
    parts = args.split()
    if len(parts) not in (2, 3):
        raise FigureError(f"value marker needs 'SOURCE PATH [FORMAT]', got {args!r}")
    return sources.fmt(*parts)


def render_text(text: str, sources: Sources, document: str = "<text>") -> tuple[str, list[Problem]]:
    """The document with every region re-rendered, and the problems found (stale regions included).

    A region that fails to render keeps its old text and is reported; nothing is silently skipped."""
    renderers = load_renderers()
    problems: list[Problem] = []
    out: list[str] = []
    pos = 0
    blocks = list(BLOCK.finditer(text))
    owed: set[str] = set()  # notes already shown in this document (the first block says it in full)
    if len(blocks) != len(_BLOCK_OPEN.findall(text)):
        problems.append(Problem(document, 1, "?", "a '<!-- generated: NAME -->' marker has no matching end marker"))
    for match in blocks:
        name, line = match["name"], _line(text, match.start())
        out.append(text[pos : match.start()])
        pos = match.end()
        body = match["body"]
        if match["end"] != name:
            problems.append(Problem(document, line, name, f"ends with the marker of {match['end']!r}"))
        elif name not in renderers:
            problems.append(
                Problem(document, line, name, f"no renderer registered (known: {', '.join(sorted(renderers))})")
            )
        else:
            try:
                try:
                    body = renderers[name](sources).strip("\n") + "\n"
                except PendingFigure as exc:  # an owed run: the document says so and names the command
                    first = f"*{exc.note[:1].upper()}{exc.note[1:]}.*\n"
                    body = f"*Not measured yet: see above (`{exc.path}`).*\n" if exc.note in owed else first
                    owed.add(exc.note)
            except (FigureError, KeyError, TypeError, ValueError) as exc:
                problems.append(Problem(document, line, name, f"cannot render: {exc}"))
            else:
                if body != match["body"]:
                    problems.append(Problem(document, line, name, "out of date with its JSON", stale=True))
        out.append(f"<!-- generated: {name} -->\n{body}<!-- end generated: {match['end']} -->")
    out.append(text[pos:])
    text = "".join(out)

    values = list(VALUE.finditer(text))
    if len(values) != len(_VALUE_OPEN.findall(text)):
        problems.append(
            Problem(document, 1, "value", "a '<!-- value: ... -->' marker has no '<!-- end value -->' on its line")
        )
    out, pos = [], 0
    for match in values:
        out.append(text[pos : match.start()])
        pos = match.end()
        body, line = match["body"], _line(text, match.start())
        try:
            try:
                body = _render_value(match["args"], sources)
            except PendingFigure:
                body = PENDING_VALUE
        except FigureError as exc:
            problems.append(Problem(document, line, f"value {match['args'].strip()}", f"cannot render: {exc}"))
        else:
            if body != match["body"]:
                problems.append(
                    Problem(
                        document,
                        line,
                        f"value {match['args'].strip()}",
                        f"shows {match['body']!r}, JSON gives {body!r}",
                        stale=True,
                    )
                )
        out.append(f"<!-- value: {match['args']} -->{body}<!-- end value -->")
    out.append(text[pos:])
    return "".join(out), problems


def documents(root: Path) -> list[Path]:
    return sorted({p for pattern in DOCUMENT_GLOBS for p in root.glob(pattern)})


def render_documents(root: Path, write: bool) -> list[Problem]:
    """Re-render every document's regions from the JSON under `root`; with `write`, save the results.

    Returns the problems; after a write, only regions that could not be rendered remain problems."""
    sources = Sources(root)
    problems: list[Problem] = []
    for path in documents(root):
        old = path.read_text()
        new, found = render_text(old, sources, str(path.relative_to(root)))
        if write:
            if new != old:
                path.write_text(new)
            found = [p for p in found if not p.stale]
        problems.extend(found)
    return problems
