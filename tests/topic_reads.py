"""Reading back what a worker wrote: one helper for the integration tests that check a topic's contents."""

from __future__ import annotations

import subprocess
import time

from confluent_kafka import Consumer

from adgen.core.config import Settings


def read_topic(
    settings: Settings, topic: str, expected: int, timeout_s: float, worker: subprocess.Popen[bytes] | None = None
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of up to `expected` messages from the start of `topic`, with a fresh consumer group;
    stops early at the timeout or when `worker` (if given) has exited."""
    consumer = Consumer(
        {
            **settings.kafka.confluent_config(),
            "group.id": f"check-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": settings.kafka.session_timeout_ms,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline and (worker is None or worker.poll() is None):
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                got.append((message.key(), message.value() or b""))
    finally:
        consumer.close()
    return got
