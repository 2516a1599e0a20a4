"""The dead-letter topic: every event we could not decode, with the reason and the original bytes.

Nothing bad is dropped silently and nothing bad stops a stream: a consumer turns the failure into a
`DeadLetter`, sends it here and moves on. Replaying a fixed event means re-producing `original()`.
Senders: `DeadLetterProducer` (streams/dlq_producer.py: a consumed batch's letters, acknowledged before
its offsets are committed), `EventProducer.send_dead_letter` (sync) and `decoded_stream` in streams/app.py
(inside Faust agents). `DeadLetterLog` keeps a flood of bad input from becoming a flood of log lines.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from adgen.core.config import Settings
from adgen.streams.codec import EventDecodeError
from adgen.streams.topics import DEAD_LETTER, topic_name

#: Original payloads larger than this are truncated in the record (the record itself must fit the broker).
MAX_ORIGINAL_BYTES = 48 * 1024


class DeadLetter(BaseModel):
    """One failed message: why it failed, where it came from, and its bytes (base64)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error: str = Field(description="Human-readable reason, e.g. field 'ad_id' = 5: Input should be a valid string.")
    error_kind: str = Field(description="Stable code from EventDecodeError.kind, for counting and alerting.")
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = Field(None, description="The Kafka key as text (undecodable bytes backslash-escaped).")
    original_b64: str = Field(description="The original value bytes, base64 (first MAX_ORIGINAL_BYTES).")
    original_size: int = Field(ge=0, description="Size of the original value in bytes.")
    truncated: bool = False
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def from_error(
        cls,
        error: EventDecodeError,
        *,
        source_topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        failed_at: datetime | None = None,
    ) -> DeadLetter:
        """`failed_at`: one clock read for a whole batch's letters (default: now)."""
        value = value or b""
        kept = value[:MAX_ORIGINAL_BYTES]
        return cls(
            error=error.reason,
            error_kind=error.kind,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key.decode(errors="backslashreplace") if isinstance(key, bytes) else key,
            original_b64=base64.b64encode(kept).decode("ascii"),
            original_size=len(value),
            truncated=len(kept) < len(value),
            failed_at=failed_at or datetime.now(UTC),
        )

    def original(self) -> bytes:
        """The original value bytes (possibly truncated; see `truncated`)."""
        return base64.b64decode(self.original_b64)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def kafka_key(self) -> bytes:
        """Keyed by source topic so one topic's failures stay in order."""
        return self.source_topic.encode()


def dead_letter_topic(settings: Settings) -> str:
    """Physical name of the dead-letter topic (with the configured prefix)."""
    return topic_name(DEAD_LETTER, settings.kafka.topic_prefix)


class DeadLetterLog:
    """Logs dead letters without a line per event: in each period of `every_s`, the first letter of each
    (topic, kind) in full, then one summary with the count per kind. Formatting and writing a log line cost
    more than decoding and dead-lettering the event; the counts per reason live in the worker's metrics."""

    def __init__(
        self, logger: logging.Logger, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()  # consumers run in threads (window consumer, executor) and on the loop
        self._counts: Counter[tuple[str, str]] = Counter()
        self._shown: set[tuple[str, str]] = set()  # kinds already logged in full in this period
        self._since = clock()

    def claim(self, topic: str, kind: str) -> bool:
        """True once per period and kind: the caller logs this one in full (e.g. with a traceback)."""
        with self._lock:
            if (topic, kind) in self._shown:
                return False
            self._shown.add((topic, kind))
            return True

    def record(self, letters: Sequence[DeadLetter]) -> None:
        """Count `letters`; log the first of each kind in this period and, once it is over, its summary."""
        if not letters:
            return
        new: list[DeadLetter] = []
        with self._lock:
            for letter in letters:
                key = (letter.source_topic, letter.error_kind)
                if key not in self._shown:
                    self._shown.add(key)
                    new.append(letter)
                self._counts[key] += 1
            now = self.clock()
            period = now - self._since
            due = period >= self.every_s
            if due:
                counts, self._counts, self._since = self._counts, Counter(), now
                self._shown = set()
        for letter in new:
            self.logger.warning(
                "dead-lettered %s[%s]@%s: %s (more of kind %s are counted and summarised every %.0fs)",
                letter.source_topic,
                letter.partition,
                letter.offset,
                letter.error,
                letter.error_kind,
                self.every_s,
            )
        if due and sum(counts.values()) > len(counts):  # more than the lines already written
            shown = ", ".join(f"{topic} {kind}: {n}" for (topic, kind), n in counts.most_common())
            self.logger.warning("dead-lettered %d events in the last %.0fs (%s)", sum(counts.values()), period, shown)
