"""The event examples in docs/producers.md are real: each one decodes through the codec on its topic."""

import json
import re
from pathlib import Path

import pytest

from adgen.streams.codec import decode_event
from adgen.streams.dlq import DeadLetter
from adgen.streams.topics import AD_UPDATES, SEARCH_QUERIES, USER_BEHAVIOR

DOC = Path(__file__).resolve().parents[1] / "docs" / "producers.md"
TOPIC_OF_TYPE = {
    **dict.fromkeys(
        [
            "ad_click",
            "ad_conversion",
            "content_play",
            "content_complete",
            "content_search",
            "ad_request",
            "profile_update",
        ],
        USER_BEHAVIOR,
    ),
    "ad_upsert": AD_UPDATES,
    "ad_delete": AD_UPDATES,
    "search_query": SEARCH_QUERIES,
}


def _json_blocks() -> list[dict]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", DOC.read_text(), flags=re.S)]


def test_every_event_type_has_a_documented_example() -> None:
    documented = {block.get("type") for block in _json_blocks()}
    assert set(TOPIC_OF_TYPE) <= documented


@pytest.mark.parametrize("example", [b for b in _json_blocks() if "type" in b], ids=lambda b: b["type"])
def test_documented_example_decodes_on_its_topic_with_its_key(example: dict) -> None:
    spec = TOPIC_OF_TYPE[example["type"]]
    event = decode_event(spec.name, json.dumps(example).encode(), key=example[spec.key_field])
    assert event.type == example["type"]


def test_documented_dead_letter_matches_the_record() -> None:
    letters = [b for b in _json_blocks() if "error_kind" in b]
    assert len(letters) == 1
    DeadLetter.model_validate(letters[0])
