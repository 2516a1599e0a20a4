"""The window changelog: every changed window row, keyed by user id, in the partition of its input events.

The compacted changelog topic is the durable copy of the window state (local RocksDB is a cache of it):
a batch's rows are acknowledged here before RocksDB, Redis or the input offsets see the batch, and a
worker that is assigned a partition first restores the rows written since its local position.

"Restore to the end" needs the end, and Tansu's reported high watermark can read low (tansu_quirks 2).
So the restorer writes a marker record and reads until it reaches the marker's acknowledged offset: the
end as the broker itself numbered it, correct on any broker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from adgen.core.config import Settings
from adgen.processors.window_store import WindowStore
from adgen.streams.topics import WINDOW_CHANGELOG, topic_name

log = logging.getLogger(__name__)

#: Keys starting with this byte are control records (restore markers), never rows.
CONTROL_PREFIX = b"\x00"
MARKER_KEY = CONTROL_PREFIX + b"marker"
MAX_BACKOFF_S = 5.0
RESTORE_BATCH = 2000


class Stopping(RuntimeError):
    """The worker is shutting down while a write was still unacknowledged: the batch must not be committed."""


@dataclass(frozen=True)
class Written:
    """Where one partition's rows of a batch landed: offsets first..last, `count` records."""

    first: int
    last: int
    count: int

    @property
    def contiguous(self) -> bool:
        """No other producer's record lies between ours (then the local position may skip over them)."""
        return self.last - self.first + 1 == self.count


def backoff(attempt: int, base_s: float = 0.2) -> float:
    return min(MAX_BACKOFF_S, base_s * 2 ** min(attempt, 16))


#: (topic, partition or None for the default partitioner, key, value)
Record = tuple[str, int | None, bytes, bytes]


class AckedProducer:
    """Produces records and blocks until the broker acknowledged every one, retrying failures with backoff.

    Used for the changelog rows and the dead letters of a batch: the batch's input offsets are committed
    only after this returns, so a broker outage stalls the worker instead of losing a row or a letter.
    """

    def __init__(self, settings: Settings, stopping: threading.Event) -> None:
        self.changelog = topic_name(WINDOW_CHANGELOG, settings.kafka.topic_prefix)
        self.stopping = stopping
        self.producer = Producer(
            {
                **settings.kafka.confluent_config(),
                "acks": "all",
                # no idempotence: a batch holds each key once and is flushed before the next, so retries cannot
                # reorder a key, and a duplicate row is harmless; while Tansu (s3://) acknowledges a retried
                # idempotent batch as a duplicate after a SIGKILL without having stored it (test_worker_faults)
                "enable.idempotence": False,
                "linger.ms": 5,
                "message.timeout.ms": 30_000,  # a delivery failure comes back and is retried here, not lost
                "queue.buffering.max.messages": 1_000_000,
                "message.max.bytes": max(settings.kafka.max_message_bytes * 4, 1_048_576),
            }
        )

    def write(self, records: Sequence[Record]) -> dict[tuple[str, int], Written]:
        """Produce `records`; returns where they landed per (topic, partition) once all are acknowledged."""
        pending = list(records)
        offsets: dict[tuple[str, int], list[int]] = {}
        failed: list[Record] = []
        errors: list[str] = []

        def delivered(err: KafkaError | None, msg: Message, record: Record) -> None:
            if err is not None:
                failed.append(record)
                errors.append(str(err))
            else:
                offsets.setdefault((msg.topic(), msg.partition()), []).append(msg.offset())

        attempt = 0
        while pending:
            failed.clear()
            errors.clear()
            for record in pending:
                self._produce(record, lambda err, msg, r=record: delivered(err, msg, r))
            self._flush()
            pending = list(failed)
            if pending:
                delay = backoff(attempt)
                attempt += 1
                log.warning("%d records not acknowledged (%s); retrying in %.1fs", len(pending), errors[0], delay)
                if self.stopping.wait(delay):
                    raise Stopping("shutting down while the broker was unreachable")
        return {tp: Written(min(o), max(o), len(o)) for tp, o in offsets.items()}

    def marker(self, partition: int) -> int:
        """Append a marker to changelog `partition` and return its offset: the partition's end as of now."""
        return self.write([(self.changelog, partition, MARKER_KEY, uuid.uuid4().hex.encode())])[
            (self.changelog, partition)
        ].first

    def _produce(self, record: Record, callback: Callable[[KafkaError | None, Message], None]) -> None:
        topic, partition, key, value = record
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=callback, **extra)
                return
            except BufferError:  # local queue full: serve delivery reports and try again
                self.producer.poll(0.1)

    def _flush(self) -> None:
        while self.producer.flush(1.0) > 0:
            if self.stopping.is_set():
                raise Stopping("records still unacknowledged at shutdown")

    def close(self) -> None:
        self.producer.flush(5.0)


class ChangelogRestorer:
    """Brings a partition's local rows up to the changelog's end before its input is consumed."""

    def __init__(self, settings: Settings, store: WindowStore, writer: AckedProducer) -> None:
        self.topic = writer.changelog
        self.store = store
        self.writer = writer
        self.consumer = Consumer(
            {
                **settings.kafka.consumer_config(),
                "group.id": f"{settings.worker.app_id}-windows-restore",  # assign() only: never joins, never commits
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )

    def restore(self, partition: int) -> int:
        """Read the changelog from the local position to a fresh marker; returns the rows restored."""
        start = self.store.position(partition)
        end = self.writer.marker(partition)
        if start > end:
            # the changelog holds less than we already restored: the broker lost it (e.g. memory:// storage)
            log.error(
                "changelog %s[%d] ends at %d but local state was at %d: the broker lost it; re-publishing local rows",
                self.topic,
                partition,
                end,
                start,
            )
            return self._republish(partition)
        restored = 0
        if start < end:
            restored = self._read(partition, start, end)
        self.store.write(partition, (), position=end + 1)
        return restored

    def _read(self, partition: int, start: int, end: int) -> int:
        self.consumer.assign([TopicPartition(self.topic, partition, start)])
        restored, last_report = 0, time.monotonic()
        try:
            while True:
                rows: list[tuple[bytes, bytes]] = []
                done = False
                for msg in self.consumer.consume(RESTORE_BATCH, 1.0):
                    if msg.error() is not None:
                        log.warning("changelog restore %s[%d]: %s", self.topic, partition, msg.error())
                        continue
                    if msg.offset() >= end:
                        done = True
                        break
                    key, value = msg.key(), msg.value()
                    if key and value is not None and not key.startswith(CONTROL_PREFIX):
                        rows.append((key, value))
                if rows:
                    self.store.write(partition, rows, position=None)
                    restored += len(rows)
                if done:
                    return restored
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    log.warning("changelog restore %s[%d]: still reading towards offset %d", self.topic, partition, end)
                if self.writer.stopping.is_set():
                    raise Stopping("shutting down during a changelog restore")
        finally:
            self.consumer.unassign()

    def _republish(self, partition: int) -> int:
        rows = list(self.store.rows(partition))
        if rows:
            self.writer.write([(self.topic, partition, user, row) for user, row in rows])
        self.store.write(partition, (), position=self.writer.marker(partition) + 1)
        return len(rows)

    def close(self) -> None:
        self.consumer.close()
