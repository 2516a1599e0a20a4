"""Topic administration: create every topic of `streams/topics.py` idempotently (confluent-kafka)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from adgen.core.config import Settings
from adgen.streams.topics import ALL_TOPICS, TopicSpec, topic_name


class TopicAdminError(RuntimeError):
    """A topic could not be created, or exists with a different partition count."""


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka.confluent_config())


def ensure_topics(
    settings: Settings, specs: Iterable[TopicSpec] = ALL_TOPICS, *, timeout_s: float = 15.0
) -> dict[str, int]:
    """Create missing topics (partition counts, compaction as the spec says); return {name: partitions} as the
    broker has them.

    Existing topics are left alone, but a partition count that differs from the contract is an error:
    per-key ordering and Faust co-partitioning both depend on it.
    """
    specs = list(specs)
    admin = admin_client(settings)
    prefix = settings.kafka.topic_prefix
    wanted = {topic_name(spec, prefix): spec.partitions for spec in specs}
    compacted = {topic_name(spec, prefix) for spec in specs if spec.compacted}
    existing = _partition_counts(admin, timeout_s)
    missing = [name for name in wanted if name not in existing]
    if missing:
        new = [
            NewTopic(
                name,
                wanted[name],
                settings.kafka.replication_factor,
                config={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name in missing
        ]
        for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    raise TopicAdminError(f"creating topic {name!r} failed: {exc.args[0].str()}") from exc
        existing = _partition_counts(admin, timeout_s)
    out: dict[str, int] = {}
    for name, partitions in wanted.items():
        have = existing.get(name)
        if have is None:
            raise TopicAdminError(f"topic {name!r} still missing after create; check broker permissions")
        if have != partitions:
            raise TopicAdminError(
                f"topic {name!r} has {have} partitions, the contract in streams/topics.py says {partitions}; "
                "recreate it or fix the contract"
            )
        out[name] = have
    return out


def _partition_counts(admin: AdminClient, timeout_s: float) -> dict[str, int]:
    metadata = admin.list_topics(timeout=timeout_s)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if not name.startswith("__")}
