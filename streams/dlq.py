"""The dead-letter topic: every event we could not decode, with the reason and the original bytes.

Nothing bad is dropped silently and nothing bad stops a stream: a consumer turns the failure into a
`DeadLetter`, sends it here and moves on. Replaying a fixed event means re-producing `original()`.
Senders: `EventProducer.send_dead_letter` (sync, confluent-kafka) and `decoded_stream` in streams/app.py
(inside Faust agents).
"""

from __future__ import annotations

import base64
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
    ) -> DeadLetter:
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
