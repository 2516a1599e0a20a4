"""Property-based fuzzing of every input topic's decoder and of the dead-letter record built from a failure.

The property: whatever bytes arrive, `decode_event` either returns a valid event of that topic (which
re-encodes to an equal event) or raises `EventDecodeError` with a stable kind and a non-empty reason; and a
`DeadLetter` built from that error fits the broker and gives back the original bytes. Nothing else
(no TypeError, RecursionError, UnicodeError...) may escape, because anything else would kill an agent.

Cases per test: `ADGEN_FUZZ_EXAMPLES` (default 200; the slow run uses 5000). The number of cases tried
is printed at the end of the module (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import typing
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adgen.streams.codec import ErrorKind, EventDecodeError, decode_event, encode_event, event_key
from adgen.streams.dlq import MAX_ORIGINAL_BYTES, DeadLetter
from adgen.streams.events import (
    AdClick,
    AdConversion,
    AdDelete,
    AdRequest,
    AdUpsert,
    ContentPlay,
    ContentSearch,
    ProfileUpdate,
    SearchQuery,
)
from adgen.streams.topics import INPUT_TOPICS

EXAMPLES = int(os.environ.get("ADGEN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # reproducible: the same cases every run (the seed is the test's name)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KINDS = set(typing.get_args(ErrorKind))
TOPICS = [spec.name for spec in INPUT_TOPICS]
MAX_BYTES = 64 * 1024
T0 = datetime(2026, 11, 1, tzinfo=UTC)

#: Cases tried per (test, outcome); printed when the module finishes.
TRIED: Counter[str] = Counter()

VALID = {
    "user-behavior": [
        AdClick(event_id="e1", event_time=T0, user_id="u1", ad_id="a1"),
        AdConversion(event_id="e2", event_time=T0, user_id="u1", ad_id="a1", value=3.5),
        ContentPlay(event_id="e3", event_time=T0, user_id="u2", content_id="c1", title="t", category="c"),
        ContentSearch(event_id="e4", event_time=T0, user_id="u2", query="pipettes"),
        AdRequest(event_id="e5", event_time=T0, user_id="u3"),
        ProfileUpdate(event_id="e6", event_time=T0, user_id="u3", age=40, arpu=1.5),
    ],
    "ad-updates": [
        AdUpsert(event_id="e7", event_time=T0, ad_id="a9", name="beaker", category_path=["Lab", "Glass"]),
        AdDelete(event_id="e8", event_time=T0, ad_id="a9"),
    ],
    "search-queries": [SearchQuery(event_id="e9", event_time=T0, query_id="q1", text="nitrile gloves")],
}

# Unicode edge cases: lone surrogates (only representable escaped in JSON), BOM, RTL override, zero-width,
# combining marks, astral plane, NUL, and a JSON-escape heavy string.
UNICODE_EDGES = [
    "\ud800",
    "\udfff",
    "\ufeff",
    "\u202e",
    "\u200b",
    "e\u0301" * 40,
    "\U0001f600" * 10,
    "\x00",
    '\\"\\u0000',
    "ſ",
    "ﬃ",
]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(UNICODE_EDGES),
    st.integers(min_value=1, max_value=200_000).map(lambda n: "x" * n),  # huge strings
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.text(max_size=12), children, max_size=6),
        st.integers(min_value=33, max_value=20_000).map(lambda n: ["a"] * n),  # huge arrays
    ),
    max_leaves=12,
)
timestamps = st.one_of(
    st.sampled_from(
        [
            "1969-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-11-01T00:00:00",  # naive
            "2026-13-01T00:00:00Z",
            "2026-11-01T25:00:00Z",
            "-1",
            "",
            "now",
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63),  # negative and far-future epoch numbers
    st.floats(allow_nan=True),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)


def _check_outcome(topic: str, raw: bytes, key: bytes | None, test: str) -> None:
    """The property itself; records the outcome for the count."""
    try:
        event = decode_event(topic, raw, key=key, max_message_bytes=MAX_BYTES)
    except EventDecodeError as err:
        assert err.kind in KINDS, err.kind
        assert err.reason.strip(), "a dead letter needs a reason"
        letter = DeadLetter.from_error(err, source_topic=topic, value=raw, key=key, partition=0, offset=1)
        record = letter.to_bytes()
        assert len(record) < 1_048_576, "the dead-letter record itself must fit the broker"
        assert DeadLetter.model_validate_json(record).original() == raw[:MAX_ORIGINAL_BYTES]
        TRIED[f"{test}:dead-lettered:{err.kind}"] += 1
        return
    # accepted: it must be a real event of this topic that survives a round trip
    new_key, value = encode_event(event)
    assert decode_event(topic, value, key=new_key) == event
    if key is not None:
        assert event_key(event) == key
    TRIED[f"{test}:accepted"] += 1


@FUZZ
@given(topic=st.sampled_from(TOPICS), raw=st.binary(max_size=2048), key=st.none() | st.binary(max_size=40))
def test_random_bytes_are_dead_lettered_with_a_reason(topic: str, raw: bytes, key: bytes | None) -> None:
    _check_outcome(topic, raw, key, "random_bytes")


@FUZZ
@given(data=st.data())
def test_truncated_json_of_valid_events_is_dead_lettered(data: st.DataObject) -> None:
    topic = data.draw(st.sampled_from(TOPICS))
    event = data.draw(st.sampled_from(VALID[topic]))
    key, value = encode_event(event)
    cut = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
    _check_outcome(topic, value[:cut], key, "truncated_json")


@FUZZ
@given(data=st.data())
def test_wrong_types_huge_values_and_unicode_in_any_field_never_escape_the_codec(data: st.DataObject) -> None:
    topic = data.draw(st.sampled_from(TOPICS))
    event = data.draw(st.sampled_from(VALID[topic]))
    obj = json.loads(event.model_dump_json())
    fields = [*sorted(obj), "unexpected_field"]
    for name in data.draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        action = data.draw(st.sampled_from(["replace", "delete"]))
        if action == "delete":
            obj.pop(name, None)
        else:
            obj[name] = data.draw(json_values)
    raw = json.dumps(obj, ensure_ascii=data.draw(st.booleans())).encode("utf-8", errors="surrogatepass")
    _check_outcome(topic, raw, event_key(event), "mutated_fields")


@FUZZ
@given(data=st.data(), when=timestamps)
def test_negative_future_and_naive_timestamps_are_accepted_only_when_aware(data: st.DataObject, when: object) -> None:
    topic = data.draw(st.sampled_from(TOPICS))
    event = data.draw(st.sampled_from(VALID[topic]))
    obj = json.loads(event.model_dump_json())
    obj["event_time"] = when
    raw = json.dumps(obj).encode()
    _check_outcome(topic, raw, event_key(event), "timestamps")
    if isinstance(when, str) and len(when) >= 19 and when[10:11] == "T" and not when.endswith(("Z", "+00:00")):
        with pytest.raises(EventDecodeError, match=r"timezone|event_time"):
            decode_event(topic, raw, key=event_key(event))


@FUZZ
@given(
    user=st.from_regex(r"\A[A-Za-z0-9_.:\-]{1,128}\Z"),
    ad=st.from_regex(r"\A[A-Za-z0-9_.:\-]{1,128}\Z"),
    seconds=st.integers(min_value=-(10**10), max_value=10**10),
)
def test_unknown_user_and_ad_ids_decode_as_events_for_the_processors(user: str, ad: str, seconds: int) -> None:
    """Ids are opaque to the codec: an ad id the index has never seen is the window agent's business."""
    when = T0 + timedelta(seconds=seconds)
    event = AdClick(event_id="x", event_time=when, user_id=user, ad_id=ad)
    key, value = encode_event(event)
    assert decode_event("user-behavior", value, key=key) == event
    TRIED["unknown_ids:accepted"] += 1


@FUZZ
@given(topic=st.sampled_from(TOPICS), size=st.integers(min_value=MAX_BYTES + 1, max_value=4 * MAX_BYTES))
def test_oversized_payloads_are_refused_before_parsing(topic: str, size: int) -> None:
    raw = b'{"type": "' + b"a" * size + b'"}'
    with pytest.raises(EventDecodeError) as info:
        decode_event(topic, raw, max_message_bytes=MAX_BYTES)
    assert info.value.kind == "oversized" and str(MAX_BYTES) in info.value.reason
    letter = DeadLetter.from_error(info.value, source_topic=topic, value=raw)
    assert letter.truncated and letter.original_size == len(raw)
    TRIED["oversized:dead-lettered"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_case_count() -> typing.Iterator[None]:
    yield
    total = sum(TRIED.values())
    by_test = Counter()
    for name, n in TRIED.items():
        by_test[name.split(":")[0]] += n
    print(f"\n[fuzz] decoder cases tried: {total} {dict(by_test)}")
    print(f"[fuzz] outcomes: {dict(sorted(TRIED.items()))}")
