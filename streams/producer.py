"""A keyed, validating confluent-kafka producer for events (and dead letters).

Why a wrapper: every send goes through the same contract as consumers use (`decode_event`), keys come
from `streams/topics.py` (never from the caller), and delivery failures are collected and raised at
`flush()` instead of vanishing in a callback.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pydantic import BaseModel

from adgen.core.config import Settings
from adgen.streams.codec import decode_event, encode_event, topic_for
from adgen.streams.dlq import DeadLetter, dead_letter_topic
from adgen.streams.topics import topic_name

#: librdkafka batching: wait up to this long to fill a batch (throughput vs latency).
DEFAULT_LINGER_MS = 10
_MAX_ERRORS_KEPT = 100


class DeliveryError(RuntimeError):
    """Some messages were not acknowledged by the broker; `failures` holds the first few reasons."""

    def __init__(self, failures: list[str], undelivered: int, broker_error: str | None = None) -> None:
        self.failures = failures
        self.undelivered = undelivered
        self.broker_error = broker_error
        shown = "; ".join(failures[:5])
        why = f" (last broker connection error: {broker_error})" if broker_error and undelivered else ""
        super().__init__(f"{len(failures)} delivery failures, {undelivered} still queued{why}: {shown}")


class EventProducer:
    """Validate, key by the topic's key field, batch, and surface delivery errors on `flush()`."""

    def __init__(self, settings: Settings, *, linger_ms: int = DEFAULT_LINGER_MS, **config: Any) -> None:
        self.settings = settings
        conf: dict[str, Any] = settings.kafka.producer_config(  # the embedded Tansu turns idempotence off (quirk 7)
            **{
                "acks": "all",
                "enable.idempotence": True,  # retries never reorder or duplicate a key's events
                "linger.ms": linger_ms,
                "message.max.bytes": max(settings.kafka.max_message_bytes * 2, 1_000_000),
            }
        )
        conf.update(config)
        conf.setdefault("error_cb", self._on_error)
        self.broker_error: str | None = None
        self._producer = Producer(conf)
        self.sent = 0
        self.delivered = 0
        self.failures: list[str] = []
        self.failed = 0

    def send(self, event: BaseModel) -> None:
        """Send an event to its topic, keyed by the topic's key field; validated as a consumer would."""
        spec = topic_for(event)
        key, value = encode_event(event)
        topic = topic_name(spec, self.settings.kafka.topic_prefix)
        decode_event(
            topic,
            value,
            key=key,
            prefix=self.settings.kafka.topic_prefix,
            max_message_bytes=self.settings.kafka.max_message_bytes,
        )
        self._produce(topic, key, value)

    def send_dead_letter(self, letter: DeadLetter) -> None:
        """Send a DeadLetter record to the dead-letter topic."""
        self._produce(dead_letter_topic(self.settings), letter.kafka_key(), letter.to_bytes())

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send bytes unvalidated. Only for tests and tools that must put bad data on a topic on purpose."""
        self._produce(topic, key, value)

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka send a batch, then retry
                self._producer.poll(0.1)
        self.sent += 1
        self._producer.poll(0)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.failures) < _MAX_ERRORS_KEPT:
            self.failures.append(f"{message.topic()}[key={message.key()!r}]: {error.str()}")

    def _on_error(self, error: KafkaError) -> None:
        """Connection-level errors (TLS handshake, SASL) never reach a delivery callback: keep the last one
        so `flush()` can say why messages are still queued instead of only how many."""
        self.broker_error = error.str()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued message; raise DeliveryError if any failed or is still queued."""
        undelivered = self._producer.flush(timeout_s)
        if self.failures or undelivered:
            failures, self.failures = self.failures, []
            raise DeliveryError(failures, undelivered, self.broker_error)

    def close(self) -> None:
        """Release the client's connections (after `flush()`; anything still queued is purged)."""
        self._producer.purge()
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
            else:
                self._producer.flush(5.0)
        finally:
            self.close()
