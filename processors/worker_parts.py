"""What the worker's components share, as explicit objects instead of closure variables.

- `Component`: the base of every part of the worker (windows, ad index, generation, search, snapshots,
  lag). It is a `mode.Service` (Faust's own service library): start/stop, background tasks that end with
  it, `sleep` that wakes on stop. The worker starts every component once the Faust app runs and Faust
  stops them with the app; `ready` says whether the part is serving.
- `Readiness`: named flags one component sets and others wait for (the ad index "caught up" gates the
  behaviour windows, which need ad titles and categories).
- `DeadLetters`: the dead-letter topic as the event-loop components use it: each letter is sent and counted
  in `adgen_dead_letters_total` (and per reason) under its input topic, one rule for every path.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from faust.types import TopicT
from mode import Service

from adgen.processors.metrics import WorkerMetrics
from adgen.streams.app import send_dead_letter
from adgen.streams.dlq import DeadLetter

DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]


class Component(Service):
    """One part of the worker, owning its state, its input and its lifecycle."""

    @property
    def ready(self) -> bool:
        """Serving (the default: started and not stopping); components with a warm-up say more."""
        return self.started and not self.should_stop


class Readiness:
    """Named readiness flags (asyncio events), shown on the `adgen_ready` gauge."""

    INDEX_CAUGHT_UP = "index_caught_up"

    def __init__(self, metrics: WorkerMetrics | None = None) -> None:
        self.metrics = metrics
        self._flags: dict[str, asyncio.Event] = {}

    def _flag(self, name: str) -> asyncio.Event:
        return self._flags.setdefault(name, asyncio.Event())

    def set(self, name: str) -> None:
        self._flag(name).set()
        if self.metrics is not None:
            self.metrics.ready.labels(name).set(1)

    def is_set(self, name: str) -> bool:
        return self._flag(name).is_set()

    async def wait(self, name: str) -> None:
        await self._flag(name).wait()


class DeadLetters:
    """Send a dead letter from the event loop and count it under its input topic."""

    def __init__(self, topic: TopicT, metrics: WorkerMetrics) -> None:
        self.topic = topic
        self.metrics = metrics

    async def send(self, letter: DeadLetter, input_topic: str) -> None:
        await send_dead_letter(self.topic, letter)
        self.metrics.count_dead_letters(input_topic, {letter.error_kind: 1})

    async def send_batch(self, letters: Sequence[DeadLetter], input_topic: str) -> None:
        """A batch's letters, flushed to the broker once before this returns (the caller advances its own
        offsets past them next): one flush per batch, not a round trip per letter."""
        if not letters:
            return
        for letter in letters:
            await send_dead_letter(self.topic, letter)
        await self.topic.app.producer.flush()
        self.metrics.count_dead_letters(input_topic, Counter(letter.error_kind for letter in letters))

    def sink(self, input_topic: str) -> DeadLetterSink:
        """A sink for one input topic (for `decoded_stream`)."""

        async def send(letter: DeadLetter) -> None:
            await self.send(letter, input_topic)

        return send
