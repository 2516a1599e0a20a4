"""`adgen produce`: a world's three event files merged by event_time, sent keyed, bad lines reported."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from typer.testing import CliRunner

from adgen.cli import app as cli
from adgen.commands.produce import Pacer, iter_world_lines
from adgen.core.config import Settings
from adgen.runtime.tansu_quirks import kafka_env
from adgen.streams.codec import decode_event
from adgen.streams.events import AdClick, AdUpsert, ContentPlay, SearchQuery
from adgen.streams.topics import INPUT_TOPICS, topic_name

T0 = datetime(2026, 11, 1, tzinfo=UTC)
BAD_LINES = {
    "user-behavior": [b"{broken", b'{"type": "ad_click", "event_id": "x1", "user_id": "u1"}'],
    "ad-updates": [b'{"type": "ad_upsert", "event_id": "x2", "event_time": "2026-11-01T00:00:00", "ad_id": "a"}'],
    "search-queries": [],
}


def write_world(root: Path, n_users: int = 20, n_ads: int = 10, n_queries: int = 30, with_bad: bool = True) -> dict:  # type: ignore[type-arg]
    """A tiny world in the generator's format; returns {topic: [event_id, ...]} of the valid lines in file order."""
    files: dict[str, list[tuple[datetime, bytes]]] = defaultdict(list)
    for i in range(n_ads):
        ad = AdUpsert(
            event_id=f"ad{i}",
            event_time=T0 + timedelta(minutes=i),
            ad_id=f"a{i}",
            name=f"Ad {i}",
            category_path=["Lab"],
        )
        files["ad-updates"].append((ad.event_time, ad.model_dump_json().encode()))
    for i in range(n_users * 5):
        when = T0 + timedelta(minutes=i * 0.7)
        user = f"u{i % n_users}"
        ev = (AdClick(event_id=f"b{i}", event_time=when, user_id=user, ad_id=f"a{i % n_ads}") if i % 3 else
              ContentPlay(event_id=f"b{i}", event_time=when, user_id=user, content_id=f"c{i}"))  # fmt: skip
        files["user-behavior"].append((when, ev.model_dump_json().encode()))
    for i in range(n_queries):
        q = SearchQuery(event_id=f"q{i}", event_time=T0 + timedelta(minutes=i * 2.3), query_id=f"q{i}", text="pipette")
        files["search-queries"].append((q.event_time, q.model_dump_json().encode()))
    valid = {
        name: [json.loads(raw)["event_id"] for _, raw in sorted(rows, key=lambda r: r[0])]
        for name, rows in files.items()
    }
    (root / "events").mkdir(parents=True)
    for name, rows in files.items():
        lines = [raw for _, raw in sorted(rows, key=lambda r: r[0])]
        if with_bad:
            for offset, bad in enumerate(BAD_LINES[name]):
                lines.insert(3 + 2 * offset, bad)
        (root / "events" / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return valid


def test_world_lines_merge_by_event_time_across_files_keeping_bad_lines_in_place(tmp_path: Path) -> None:
    write_world(tmp_path)
    lines = list(iter_world_lines(tmp_path))
    assert len(lines) == 100 + 10 + 30 + 3
    stamps = [line.timestamp for line in lines]
    assert stamps == sorted(stamps)
    assert {line.spec.name for line in lines} == {spec.name for spec in INPUT_TOPICS}
    broken = [line for line in lines if line.raw == b"{broken"]
    assert len(broken) == 1 and broken[0].line_no == 4


def test_a_directory_without_event_files_is_refused_with_the_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"ad-updates\.jsonl"):
        list(iter_world_lines(tmp_path))
    result = CliRunner().invoke(cli, ["produce", str(tmp_path)])
    assert result.exit_code == 1 and "not a world directory" in result.output


def test_pacer_spaces_events_at_the_requested_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.wait()
    assert now[0] == pytest.approx(1.0)  # events due at 0, .25, .5, .75, 1.0
    unpaced = Pacer(0.0, clock=lambda: now[0], sleep=sleep)
    before = len(slept)
    for _ in range(100):
        unpaced.wait()
    assert len(slept) == before


@pytest.mark.integration
def test_adgen_produce_sends_every_valid_line_keyed_and_reports_the_bad_ones(
    stream_settings: Settings, tmp_path: Path
) -> None:
    valid = write_world(tmp_path / "world")
    prefix = stream_settings.kafka.topic_prefix
    env = {
        **kafka_env(stream_settings.kafka),
        "ADGEN_KAFKA__TOPIC_PREFIX": prefix,
    }
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli, ["produce", str(tmp_path / "world"), "--report", str(report_path), "--strict"], env=env
    )
    assert result.exit_code == 2, result.output  # --strict: invalid lines make it fail, after sending the rest
    report = json.loads(report_path.read_text())
    assert report["sent"] == {name: len(ids) for name, ids in valid.items()}
    assert report["invalid"] == {"malformed_json": 1, "schema_violation": 2}
    assert {(e["file"], e["line"]) for e in report["examples"]} == {
        ("user-behavior.jsonl", 4), ("user-behavior.jsonl", 6), ("ad-updates.jsonl", 4)
    }  # fmt: skip

    total = sum(len(ids) for ids in valid.values())
    consumer = Consumer(
        {
            **stream_settings.kafka.consumer_config(),
            "group.id": f"produce-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic_name(spec, prefix) for spec in INPUT_TOPICS])
    got: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + 60
    seen = 0
    while seen < total and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=500, timeout=0.5):
            event = decode_event(message.topic(), message.value(), key=message.key(), prefix=prefix)
            got[message.topic()[len(prefix) :]].append(event.event_id)  # type: ignore[attr-defined]
            seen += 1
    consumer.close()
    assert {name: sorted(ids) for name, ids in got.items()} == {name: sorted(ids) for name, ids in valid.items()}


def test_producers_to_the_embedded_broker_run_without_idempotence_and_real_kafka_keeps_it() -> None:
    """Tansu quirk 7: an idempotent retry after a broker SIGKILL is acknowledged but not stored."""
    from adgen.runtime.tansu_quirks import embedded_kafka_settings

    embedded = embedded_kafka_settings(Settings().kafka, bootstrap="127.0.0.1:1")
    conf = embedded.producer_config(**{"enable.idempotence": True})
    assert conf["enable.idempotence"] is False and conf["max.in.flight.requests.per.connection"] == 1
    assert Settings().kafka.producer_config(**{"enable.idempotence": True})["enable.idempotence"] is True
