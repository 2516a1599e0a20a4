"""The dead letters of a consumed batch, produced in one go and acknowledged before the batch is committed.

    deliveries = dlq.send(batch.letters)    # produce() each letter, poll(0): librdkafka batches them
    ...                                     # the batch's other work runs meanwhile
    if not dlq.wait(deliveries):            # every letter acknowledged (failures re-produced with backoff)
        raise ...                           # shutting down: the batch must not be committed
    consumer.commit(...)

A flood of bad input then costs one produce() call per letter and one round trip per batch, not one per
letter. A letter that fails to deliver is produced again until the broker takes it, and the caller commits
the input offsets only after `wait` returned True: a crash at any point re-delivers the batch, so its
letters reach the topic at least once (never zero times).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from adgen.core.config import Settings
from adgen.streams.dlq import DeadLetter, dead_letter_topic

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


@dataclass
class Deliveries:
    """Delivery reports of one batch's letters: how many are outstanding, and the failed ones' bytes."""

    outstanding: int = 0
    failed: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    attempts: int = 0

    def report(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's on_delivery (one bound method per batch, not a closure per letter)."""
        self.outstanding -= 1
        if err is not None:
            self.failed.append((msg.key(), msg.value() or b""))
            if len(self.errors) < 5:
                self.errors.append(str(err))


class DeadLetterProducer:
    """One confluent-kafka producer for a consumer's dead letters (use from one thread)."""

    def __init__(
        self,
        settings: Settings,
        stopping: threading.Event,
        *,
        topic: str | None = None,
        on_retry: Callable[[int], None] | None = None,
        **config: Any,
    ) -> None:
        """`on_retry(n)`: n letters failed and are produced again (e.g. a metric); `config`: librdkafka
        options over the defaults below."""
        self.topic = topic or dead_letter_topic(settings)
        self.stopping = stopping
        self.on_retry = on_retry
        self.failures = 0  # delivery reports with an error (each letter is produced again)
        self.producer = Producer(
            settings.kafka.producer_config(
                **{
                    "acks": "all",
                    "linger.ms": 20,  # flushed at the batch's end anyway: the linger only fills requests
                    "batch.num.messages": 10_000,
                    "queue.buffering.max.messages": 1_000_000,
                    "message.timeout.ms": 30_000,  # a failure comes back to `wait` and is retried, not lost
                    "message.max.bytes": max(settings.kafka.max_message_bytes * 4, 1_048_576),
                    **config,
                }
            )
        )

    def send(self, letters: Sequence[DeadLetter]) -> Deliveries:
        """Produce `letters` without waiting; `wait` on the result before committing their input offsets."""
        deliveries = Deliveries()
        self._produce([(letter.kafka_key(), letter.to_bytes()) for letter in letters], deliveries)
        return deliveries

    def wait(self, deliveries: Deliveries) -> bool:
        """Block until every letter of `deliveries` is acknowledged, producing failed ones again with
        backoff (a broker outage stalls the consumer; it loses nothing). False if stopped meanwhile."""
        while True:
            while deliveries.outstanding > 0:
                self.producer.flush(0.5)
                if deliveries.outstanding > 0 and self.stopping.is_set():
                    return False
            if not deliveries.failed:
                return True
            failed, deliveries.failed = deliveries.failed, []
            self.failures += len(failed)
            if self.on_retry is not None:
                self.on_retry(len(failed))
            delay = min(MAX_BACKOFF_S, 0.2 * 2 ** min(deliveries.attempts, 16))
            deliveries.attempts += 1
            log.warning(
                "%d dead letters not acknowledged by %s (%s); producing them again in %.1fs",
                len(failed),
                self.topic,
                "; ".join(deliveries.errors),
                delay,
            )
            deliveries.errors.clear()
            if self.stopping.wait(delay):
                return False
            self._produce(failed, deliveries)

    def _produce(self, records: Sequence[tuple[bytes | None, bytes]], deliveries: Deliveries) -> None:
        report, produce, topic = deliveries.report, self.producer.produce, self.topic
        for key, value in records:
            while True:
                try:
                    produce(topic, value, key, on_delivery=report)
                    break
                except BufferError:  # local queue full: serve delivery reports, then try again
                    self.producer.poll(0.1)
            deliveries.outstanding += 1
        self.producer.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self.producer.flush(timeout_s)
