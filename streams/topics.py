"""Every topic the system uses: name, key field and partition count, in one place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TopicSpec(BaseModel):
    """A topic's contract: `key_field` names the event field used as the Kafka key (ordering unit)."""

    model_config = ConfigDict(frozen=True)

    name: str
    key_field: str | None
    partitions: int
    description: str
    compacted: bool = False  # cleanup.policy=compact: the broker keeps the newest record per key


USER_BEHAVIOR = TopicSpec(
    name="user-behavior",
    key_field="user_id",
    partitions=4,
    description="Ad clicks/conversions, content play/complete/search, ad requests, profile updates.",
)
AD_UPDATES = TopicSpec(name="ad-updates", key_field="ad_id", partitions=2, description="Ad upserts and deletes.")
SEARCH_QUERIES = TopicSpec(
    name="search-queries", key_field="query_id", partitions=2, description="Search queries for RARE retrieval."
)
DEAD_LETTER = TopicSpec(
    name="dead-letter",
    key_field=None,
    partitions=1,
    description="Events that failed to decode or validate, with the reason and the original bytes.",
)
INDEX_SNAPSHOTS = TopicSpec(
    name="index-snapshots",
    key_field=None,
    partitions=1,
    description="Notices of newly written index snapshots (version, path, checksum).",
)

WINDOW_CHANGELOG = TopicSpec(
    name="user-windows-changelog",
    key_field=None,  # keyed by user id, but the values are window rows, not events
    partitions=USER_BEHAVIOR.partitions,  # row of a user in the partition of the user's events
    description="Every changed behaviour-window row (processors/window_changelog.py); the durable window state.",
    compacted=True,
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    USER_BEHAVIOR,
    AD_UPDATES,
    SEARCH_QUERIES,
    DEAD_LETTER,
    INDEX_SNAPSHOTS,
    WINDOW_CHANGELOG,
)
INPUT_TOPICS: tuple[TopicSpec, ...] = (USER_BEHAVIOR, AD_UPDATES, SEARCH_QUERIES)


def topic_name(spec: TopicSpec, prefix: str = "") -> str:
    """Physical topic name with the configured prefix (e.g. per environment)."""
    return f"{prefix}{spec.name}"
