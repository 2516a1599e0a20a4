"""Bytes <-> events for every input topic, with one precise reason for every way a payload can be bad.

Good events take the fast path (one `validate_json`); only failures pay for the diagnosis that names
what was wrong (size, encoding, JSON, type, version, field + value, key), so the dead-letter topic
tells an operator what to fix.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

from adgen.core.config import Settings
from adgen.streams.events import (
    AD_UPDATE_ADAPTER,
    SEARCH_QUERY_ADAPTER,
    USER_BEHAVIOR_ADAPTER,
    AdUpdateEvent,
    SearchQuery,
    UserBehaviorEvent,
)
from adgen.streams.topics import AD_UPDATES, SEARCH_QUERIES, USER_BEHAVIOR, TopicSpec

Event = BaseModel  # every decoded event is one of the frozen pydantic models in streams/events.py

ErrorKind = Literal[
    "unknown_topic",
    "oversized",
    "not_utf8",
    "malformed_json",
    "not_object",
    "missing_type",
    "unknown_type",
    "unknown_schema_version",
    "schema_violation",
    "wrong_key",
    "decoder_error",  # the codec itself failed (a bug); the event still goes to the dead-letter topic
]

DEFAULT_MAX_MESSAGE_BYTES = Settings.model_fields["kafka"].default.max_message_bytes
_MAX_SHOWN_VALUE = 80


class EventDecodeError(ValueError):
    """A payload that is not a valid event for its topic; `kind` is a stable code, `reason` says why."""

    def __init__(self, kind: ErrorKind, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind: ErrorKind = kind
        self.reason = reason


class _TopicCodec:
    """What decoding needs to know about one input topic."""

    def __init__(self, spec: TopicSpec, adapter: TypeAdapter[Any], event_union: Any) -> None:
        self.spec = spec
        self.adapter = adapter
        self.models: dict[str, type[BaseModel]] = {_literal(m, "type"): m for m in _union_members(event_union)}
        self.versions: dict[str, tuple[int, ...]] = {
            name: get_args(model.model_fields["schema_version"].annotation) for name, model in self.models.items()
        }


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def _literal(model: type[BaseModel], field: str) -> str:
    return get_args(model.model_fields[field].annotation)[0]


_CODECS: dict[str, _TopicCodec] = {
    USER_BEHAVIOR.name: _TopicCodec(USER_BEHAVIOR, USER_BEHAVIOR_ADAPTER, UserBehaviorEvent),
    AD_UPDATES.name: _TopicCodec(AD_UPDATES, AD_UPDATE_ADAPTER, AdUpdateEvent),
    SEARCH_QUERIES.name: _TopicCodec(SEARCH_QUERIES, SEARCH_QUERY_ADAPTER, SearchQuery),
}
_SPEC_BY_MODEL: dict[type[BaseModel], TopicSpec] = {
    model: codec.spec for codec in _CODECS.values() for model in codec.models.values()
}


class _NoKeyCheck:
    """Sentinel: the caller has no Kafka key to compare (e.g. validating a file line)."""


NO_KEY_CHECK = _NoKeyCheck()


def topic_for(event: BaseModel) -> TopicSpec:
    """The topic an event belongs on (by its model class)."""
    try:
        return _SPEC_BY_MODEL[type(event)]
    except KeyError:
        raise TypeError(f"{type(event).__name__} is not an event of any input topic in streams/topics.py") from None


def event_key(event: BaseModel) -> bytes | None:
    """The Kafka key for an event: its topic's key field, UTF-8 (None for unkeyed topics)."""
    spec = topic_for(event)
    if spec.key_field is None:
        return None
    value = getattr(event, spec.key_field)
    return None if value is None else str(value).encode()


def encode_event(event: BaseModel) -> tuple[bytes | None, bytes]:
    """(Kafka key, JSON value) for an event, keyed by its topic's key field."""
    return event_key(event), event.model_dump_json().encode()


def decode_event(
    topic: str,
    raw: bytes,
    *,
    key: bytes | str | _NoKeyCheck | None = NO_KEY_CHECK,
    prefix: str = "",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> BaseModel:
    """Decode and validate one message of `topic` (physical name; `prefix` is stripped).

    Raises EventDecodeError naming what was wrong. Pass the message `key` to also check that it equals
    the event's key field (an event keyed wrongly would break per-user/per-ad ordering).
    """
    result = try_decode_event(topic, raw, key=key, prefix=prefix, max_message_bytes=max_message_bytes)
    if isinstance(result, EventDecodeError):
        raise result
    return result


def try_decode_event(
    topic: str,
    raw: bytes,
    *,
    key: bytes | str | _NoKeyCheck | None = NO_KEY_CHECK,
    prefix: str = "",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> BaseModel | EventDecodeError:
    """`decode_event` that returns the error instead of raising it: a flood of bad input then costs no
    raise/catch per message on the consumers' hot path (streams/app.py `decode_batch`)."""
    logical = topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic
    codec = _CODECS.get(logical)
    if codec is None:
        return EventDecodeError(
            "unknown_topic", f"topic {topic!r} carries no decodable events; inputs: {list(_CODECS)}"
        )
    if len(raw) > max_message_bytes:
        return EventDecodeError(
            "oversized", f"payload is {len(raw)} bytes, the limit is {max_message_bytes} (kafka.max_message_bytes)"
        )
    # the error leaves the except block unraised: raised inside it, it would keep pydantic's ValidationError
    # as its __context__, and that Rust object holds the validators' own exceptions whose frames lead back
    # to ours, a cycle the garbage collector cannot see through (it leaked ~2 KB per bad event)
    try:
        event = codec.adapter.validate_json(raw)
        error = None
    except ValidationError as exc:
        error = _diagnose(codec, raw, exc)
    if error is not None:
        return error
    if not isinstance(key, _NoKeyCheck):
        return _key_error(codec.spec, event, key) or event
    return event


def _key_error(spec: TopicSpec, event: BaseModel, key: bytes | str | None) -> EventDecodeError | None:
    if spec.key_field is None:
        return None
    expected = getattr(event, spec.key_field)
    got = key.decode(errors="backslashreplace") if isinstance(key, bytes) else key
    if got != expected:
        return EventDecodeError(
            "wrong_key",
            f"Kafka key {got!r} != event {spec.key_field} {expected!r} (topic {spec.name!r} is keyed by it)",
        )
    return None


def _diagnose(codec: _TopicCodec, raw: bytes, exc: ValidationError) -> EventDecodeError:
    """Turn a failed validation into the first, most useful reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return EventDecodeError(
            "not_utf8", f"payload is not UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r})"
        )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return EventDecodeError("malformed_json", f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}")
    if not isinstance(obj, dict):
        return EventDecodeError("not_object", f"event must be a JSON object, got {type(obj).__name__}")
    if "type" not in obj:
        return EventDecodeError("missing_type", f"no 'type' field; {codec.spec.name!r} accepts {sorted(codec.models)}")
    event_type = obj["type"]
    if not isinstance(event_type, str) or event_type not in codec.models:  # a list/dict type is unhashable
        return EventDecodeError(
            "unknown_type",
            f"type {_show(event_type)} is not an event of {codec.spec.name!r}; expected one of {sorted(codec.models)}",
        )
    versions = codec.versions[event_type]
    version = obj.get("schema_version", versions[0])
    if isinstance(version, bool) or version not in versions:
        return EventDecodeError(
            "unknown_schema_version",
            f"{event_type} schema_version {_show(version)} is not supported; this build reads {list(versions)}",
        )
    return EventDecodeError("schema_violation", _describe(event_type, exc))


def _describe(event_type: str, exc: ValidationError) -> str:
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc and loc[0] == event_type:  # the discriminated union puts the tag first
            loc = loc[1:]
        field = ".".join(str(part) for part in loc) or "<event>"
        if error["type"] == "missing":
            parts.append(f"field {field!r} is required")
        elif error["type"] == "extra_forbidden":
            parts.append(f"field {field!r} is not part of {event_type} (value {_show(error['input'])})")
        else:
            parts.append(f"field {field!r} = {_show(error['input'])}: {error['msg']}")
    return f"{event_type}: " + "; ".join(parts)


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN_VALUE else shown[: _MAX_SHOWN_VALUE - 3] + "..."
