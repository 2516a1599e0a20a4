"""`adgen produce DIR --rate R`: replay a world directory's event files onto their topics.

The three files (`DIR/events/{topic}.jsonl`, each sorted by event_time) are merged by event_time with
`heapq.merge`, so memory stays constant however large the world is. Every line is validated with the
same codec consumers use; bad lines are counted and reported with file:line and reason, never dropped
silently.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, NamedTuple

import typer
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adgen.core.config import load_settings
from adgen.streams.codec import EventDecodeError, decode_event
from adgen.streams.producer import EventProducer
from adgen.streams.topics import INPUT_TOPICS, TopicSpec

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

_EVENT_TIME = re.compile(rb'"event_time"\s*:\s*"([^"]+)"')
_MAX_EXAMPLES = 20


class WorldLine(NamedTuple):
    """One line of an event file with its merge key (event time, then file rank, then line number)."""

    timestamp: float
    rank: int
    line_no: int
    spec: TopicSpec
    raw: bytes


class InvalidLine(BaseModel):
    file: str
    line: int
    kind: str
    reason: str


class ReplayReport(BaseModel):
    """What a replay did; printed as JSON and optionally written to a file."""

    world: str
    rate: float
    sent: dict[str, int] = Field(default_factory=dict, description="Events sent per topic.")
    invalid: dict[str, int] = Field(default_factory=dict, description="Invalid lines per error kind.")
    invalid_total: int = 0
    examples: list[InvalidLine] = Field(default_factory=list, description=f"First {_MAX_EXAMPLES} invalid lines.")
    elapsed_s: float = 0.0
    events_per_s: float = 0.0


def event_file(world_dir: Path, spec: TopicSpec) -> Path:
    return world_dir / "events" / f"{spec.name}.jsonl"


def _event_timestamp(raw: bytes) -> float | None:
    """The line's event_time as epoch seconds, or None if absent/unparseable/naive (decode reports why)."""
    found = _EVENT_TIME.search(raw)
    if found is None:
        return None
    try:
        when = datetime.fromisoformat(found.group(1).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _file_lines(path: Path, spec: TopicSpec, rank: int) -> Iterator[WorldLine]:
    """Lines of one file; a line without a usable event_time keeps its neighbour's place in the merge."""
    last = float("-inf")
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            raw = line.rstrip(b"\r\n")
            timestamp = _event_timestamp(raw)
            if timestamp is not None:
                last = timestamp
            yield WorldLine(last, rank, line_no, spec, raw)


def world_files(world_dir: Path) -> dict[TopicSpec, Path]:
    """The event file of each input topic; FileNotFoundError naming every missing one."""
    paths = {spec: event_file(world_dir, spec) for spec in INPUT_TOPICS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"not a world directory, missing: {', '.join(missing)} (see `adgen world generate`)")
    return paths


def iter_world_lines(world_dir: Path) -> Iterator[WorldLine]:
    """All event lines of a world, merged by event_time (stable: ties keep file order), constant memory."""
    streams = [_file_lines(path, spec, rank) for rank, (spec, path) in enumerate(world_files(world_dir).items())]
    return heapq.merge(*streams, key=lambda line: (line.timestamp, line.rank))


def count_lines(world_dir: Path) -> int:
    """Total lines of the event files (for the progress bar), counted in 1 MiB chunks."""
    total = 0
    for path in world_files(world_dir).values():
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                total += chunk.count(b"\n")
    return total


class Pacer:
    """Spaces calls to `rate` per second against a monotonic clock (rate 0: no waiting)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.start = clock()
        self.count = 0

    def wait(self) -> None:
        """Block until the next event is due (event n is due at start + n / rate)."""
        if self.rate > 0:
            delay = self.start + self.count / self.rate - self.clock()
            if delay > 0:
                self.sleep(delay)
        self.count += 1


def replay_world(
    world_dir: Path,
    producer: EventProducer,
    *,
    rate: float = 0.0,
    on_line: Callable[[], None] | None = None,
) -> ReplayReport:
    """Send every valid line to its topic (keyed by the codec) at `rate` events/s; count the rest."""
    report = ReplayReport(world=str(world_dir), rate=rate)
    sent: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    pacer = Pacer(rate)
    max_bytes = producer.settings.kafka.max_message_bytes
    started = time.monotonic()
    for line in iter_world_lines(world_dir):
        pacer.wait()
        try:
            event = decode_event(line.spec.name, line.raw, max_message_bytes=max_bytes)
        except EventDecodeError as error:
            invalid[error.kind] += 1
            if len(report.examples) < _MAX_EXAMPLES:
                name = event_file(world_dir, line.spec).name
                report.examples.append(InvalidLine(file=name, line=line.line_no, kind=error.kind, reason=error.reason))
        else:
            producer.send(event)
            sent[line.spec.name] += 1
        if on_line is not None:
            on_line()
    producer.flush()
    report.elapsed_s = time.monotonic() - started
    report.sent = dict(sent)
    report.invalid = dict(invalid)
    report.invalid_total = sum(invalid.values())
    report.events_per_s = sum(sent.values()) / report.elapsed_s if report.elapsed_s > 0 else 0.0
    return report


@app.command()
def produce(
    world_dir: Annotated[
        Path, typer.Argument(help="World directory with events/*.jsonl.", exists=True, file_okay=False)
    ],
    rate: Annotated[float, typer.Option("--rate", min=0, help="Events per second; 0 = as fast as possible.")] = 0.0,
    report_path: Annotated[Path | None, typer.Option("--report", help="Also write the JSON report here.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with code 2 if any line is invalid.")] = False,
    config_file: Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")] = None,
) -> None:
    """Replay a synthetic world onto the topics, merged by event_time, with a progress bar."""
    settings = load_settings(config_file)
    try:
        total = count_lines(world_dir)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=1) from None
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress, EventProducer(settings) as producer:
        task = progress.add_task("replay", total=total)
        report = replay_world(world_dir, producer, rate=rate, on_line=lambda: progress.advance(task))
    text = report.model_dump_json(indent=2)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(text)
    print(text)
    sent_total = sum(report.sent.values())
    err.print(f"sent {sent_total} events in {report.elapsed_s:.1f}s ({report.events_per_s:.0f}/s)")
    if report.invalid_total:
        err.print(f"[yellow]{report.invalid_total} invalid lines[/] by kind: {json.dumps(report.invalid)}")
        for example in report.examples[:5]:
            err.print(f"  {example.file}:{example.line}: {example.kind}: {example.reason}")
        if strict:
            raise typer.Exit(code=2)
