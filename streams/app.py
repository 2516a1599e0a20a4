"""The Faust app and the decode-or-dead-letter pattern every consumer in processors/ uses (per event in a
Faust agent: `decoded_stream`; per confluent-kafka batch: `decode_batch`).

Topics are declared with raw serializers so bytes reach *our* codec: a bad event becomes a DeadLetter
with its reason instead of an exception that kills the agent.

    app = create_app(settings)
    topics = declare_topics(app, settings)

    @app.agent(topics.user_behavior)
    async def behavior_windows(stream):
        async for event in decoded_stream(stream, partial(send_dead_letter, topics.dead_letter), settings):
            ...  # only valid, correctly keyed events arrive here
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
from confluent_kafka import Message
from faust.types import StreamT, TopicT
from pydantic import BaseModel

from adgen.core.config import KafkaSettings, Settings
from adgen.streams.codec import EventDecodeError, try_decode_event
from adgen.streams.dlq import DeadLetter, DeadLetterLog, dead_letter_topic
from adgen.streams.topics import AD_UPDATES, DEAD_LETTER, SEARCH_QUERIES, USER_BEHAVIOR, TopicSpec, topic_name

log = logging.getLogger(__name__)


def broker_urls(kafka: KafkaSettings) -> list[str]:
    """Faust broker URLs from a comma-separated bootstrap list."""
    return [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",") if server.strip()]


def broker_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | ssl.SSLContext | None:
    """Faust `broker_credentials` for the configured security protocol (None for PLAINTEXT)."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol in {"SSL", "SASL_SSL"}:
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH, cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
        if kafka.ssl_certfile:
            context.load_cert_chain(
                str(kafka.ssl_certfile), keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
            )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if not kafka.sasl_mechanism or not kafka.sasl_username:
        raise ValueError(f"security_protocol {protocol} needs kafka.sasl_mechanism and kafka.sasl_username")
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        mechanism=kafka.sasl_mechanism,
        ssl_context=context,
    )


def create_app(
    settings: Settings, *, app_id: str | None = None, web_enabled: bool = False, **overrides: Any
) -> faust.App:
    """A Faust app configured from settings (broker + credentials, store, partitions, session timeout).

    The broker's `kafka.client_overrides.faust` (e.g. the embedded Tansu's quirks) come next; `overrides` win.
    """
    kafka = settings.kafka
    datadir = settings.paths.state / "faust"
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    conf: dict[str, Any] = {
        "broker": broker_urls(kafka),
        "broker_credentials": broker_credentials(kafka),
        "topic_partitions": kafka.default_partitions,
        "topic_replication_factor": kafka.replication_factor,
        "broker_session_timeout": kafka.session_timeout_ms / 1000,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": web_enabled,
        "web_host": settings.worker.web_host,
        "web_port": settings.worker.web_port,
        "datadir": str(datadir),
        "producer_max_request_size": max(kafka.max_message_bytes * 2, 1_048_576),
    }
    conf.update(kafka.client_overrides.faust)
    conf.update(overrides)
    return faust.App(app_id or settings.worker.app_id, **conf)


@dataclass(frozen=True)
class AppTopics:
    """The input topics and the dead-letter topic, declared on one app with raw serializers."""

    user_behavior: TopicT
    ad_updates: TopicT
    search_queries: TopicT
    dead_letter: TopicT


def raw_topic(app: faust.App, spec: TopicSpec, settings: Settings) -> TopicT:
    """A topic of `spec` whose keys and values stay bytes (decoding is the codec's job)."""
    return app.topic(
        topic_name(spec, settings.kafka.topic_prefix),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
    )


def declare_topics(app: faust.App, settings: Settings) -> AppTopics:
    return AppTopics(
        user_behavior=raw_topic(app, USER_BEHAVIOR, settings),
        ad_updates=raw_topic(app, AD_UPDATES, settings),
        search_queries=raw_topic(app, SEARCH_QUERIES, settings),
        dead_letter=raw_topic(app, DEAD_LETTER, settings),
    )


async def send_dead_letter(dead_letters: TopicT, letter: DeadLetter) -> None:
    """Hand a DeadLetter to Faust's producer (from inside an agent). Not acknowledged yet when this returns:
    Faust flushes its producer before it commits input offsets, and `DeadLetters.send_batch` flushes it."""
    await dead_letters.send(key=letter.kafka_key(), value=letter.to_bytes())


#: One for the process: every consumer's letters share the rate limit (a flood is one story, told once).
DEAD_LETTER_LOG = DeadLetterLog(log)


def decode_or_dead_letter(
    settings: Settings,
    *,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    partition: int | None = None,
    offset: int | None = None,
) -> BaseModel | DeadLetter:
    """The event, or the DeadLetter saying why not. Never raises for a bad message.

    Even a bug in the codec (any exception, not just EventDecodeError) becomes a `decoder_error` dead
    letter: one poisonous event must not stop a partition. Logging is rate limited (`DeadLetterLog`: the
    first of each kind per period in full, a codec crash with its traceback), since a flood of bad input
    must not cost a log line per event.
    """
    result = _decode(settings, topic, value if value is not None else b"", key, partition, offset, None)
    if isinstance(result, DeadLetter):
        DEAD_LETTER_LOG.record([result])
    return result


@dataclass
class DecodedBatch:
    """A consumed batch in one pass: good events with their (partition, offset), letters in input order."""

    events: list[tuple[BaseModel, int, int]] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    #: partition -> the offset after the last message of the batch (good, bad or a broker error)
    next_offsets: dict[int, int] = field(default_factory=dict)

    def kinds(self) -> Counter[str]:
        """Dead letters per error kind (for `adgen_dead_letter_reasons_total`)."""
        return Counter(letter.error_kind for letter in self.letters)


def decode_batch(settings: Settings, messages: Sequence[Message]) -> DecodedBatch:
    """Decode a confluent-kafka batch: every message becomes an event or a dead letter (never an exception),
    with one clock read for the batch's letters and one rate-limited log call for all of them."""
    batch = DecodedBatch()
    failed_at = datetime.now(UTC)
    for msg in messages:
        if msg.error() is not None:
            log.warning("%s consumer: %s", msg.topic(), msg.error())
            continue
        partition, offset = msg.partition(), msg.offset()
        batch.next_offsets[partition] = offset + 1
        value = msg.value() or b""
        result = _decode(settings, msg.topic(), value, msg.key(), partition, offset, failed_at)
        if isinstance(result, DeadLetter):
            batch.letters.append(result)
        else:
            batch.events.append((result, partition, offset))
    DEAD_LETTER_LOG.record(batch.letters)
    return batch


def _decode(
    settings: Settings,
    topic: str,
    value: bytes,
    key: bytes | None,
    partition: int | None,
    offset: int | None,
    failed_at: datetime | None,
) -> BaseModel | DeadLetter:
    kafka = settings.kafka
    try:
        result = try_decode_event(
            topic, value, key=key, prefix=kafka.topic_prefix, max_message_bytes=kafka.max_message_bytes
        )
    except Exception as exc:
        result = EventDecodeError("decoder_error", f"the codec raised {type(exc).__name__}: {exc} (a bug; report it)")
        if DEAD_LETTER_LOG.claim(topic, result.kind):
            log.exception("codec crashed on %s[%s]@%s; dead-lettered", topic, partition, offset)
    if not isinstance(result, EventDecodeError):
        return result
    return DeadLetter.from_error(
        result, source_topic=topic, value=value, key=key, partition=partition, offset=offset, failed_at=failed_at
    )


async def decoded_stream(
    stream: StreamT, dead_letters: Callable[[DeadLetter], Awaitable[None]], settings: Settings
) -> AsyncIterator[BaseModel]:
    """Yield decoded events from a raw stream; hand each bad one to `dead_letters` (which sends it to the
    dead-letter topic, e.g. `functools.partial(send_dead_letter, topic)`, and may count it) and go on."""
    async for raw in stream.events():
        message = raw.message
        result = decode_or_dead_letter(
            settings,
            topic=message.topic,
            value=raw.value,
            key=raw.key,
            partition=message.partition,
            offset=message.offset,
        )
        if isinstance(result, DeadLetter):
            await dead_letters(result)
            continue
        yield result


__all__ = [
    "DEAD_LETTER_LOG",
    "AppTopics",
    "DecodedBatch",
    "broker_credentials",
    "broker_urls",
    "create_app",
    "dead_letter_topic",
    "declare_topics",
    "decode_batch",
    "decode_or_dead_letter",
    "decoded_stream",
    "raw_topic",
    "send_dead_letter",
]
