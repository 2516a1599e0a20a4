"""The ad-updates reader on the real embedded broker: every event comes back decoded or dead-lettered, and a
bug in the codec dead-letters the event instead of killing the ad index (as on every other input path)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from adgen.core.config import Settings
from adgen.processors.ad_updates import AdUpdatesReader
from adgen.streams import app as streams_app
from adgen.streams.dlq import DeadLetter
from adgen.streams.events import AdUpsert
from adgen.streams.producer import EventProducer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 3, tzinfo=UTC)


def upsert(ad_id: str) -> AdUpsert:
    return AdUpsert(event_id=f"e-{ad_id}", event_time=T0, ad_id=ad_id, name=f"ad {ad_id}", category_path=["Lab"])


def read_all(reader: AdUpdatesReader, expected: int) -> tuple[list, list[DeadLetter]]:
    good: list = []
    bad: list[DeadLetter] = []
    deadline = time.monotonic() + 60
    while len(good) + len(bad) < expected and time.monotonic() < deadline:
        g, b = reader.poll(timeout_s=0.5)
        good += g
        bad += b
    return good, bad


def test_a_codec_bug_dead_letters_the_ad_update_instead_of_killing_the_reader(
    stream_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EventProducer(stream_settings) as producer:
        for ad_id in ("ad-ok", "ad-poison", "ad-ok-2"):
            producer.send(upsert(ad_id))
    real = streams_app.try_decode_event

    def buggy(topic: str, raw: bytes, **kw: object) -> object:
        if b"ad-poison" in raw:
            raise KeyError("a bug inside the codec")
        return real(topic, raw, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(streams_app, "try_decode_event", buggy)
    reader = AdUpdatesReader(stream_settings, {})
    try:
        good, bad = read_all(reader, expected=3)
    finally:
        reader.close()
    assert sorted(event.ad_id for event, _, _ in good) == ["ad-ok", "ad-ok-2"]
    assert [letter.error_kind for letter in bad] == ["decoder_error"]
    assert "KeyError" in bad[0].error and bad[0].offset is not None
