"""The search path in a real `adgen worker`: new ads get CIs, the documented `ci:*` keys and `AdRecord.cis`
are written, and the CIs survive a restart through the snapshots (not by re-reading the ad's event).

Harness: tests/reliability/stack.py (seeded world, built index, untrained LEADRE checkpoint, dedicated Tansu
and redis-server); the CI build under <paths.index>/ci is tests/ci_builds.py's tiny CI model, trained in seconds.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # the shared harness

from ci_builds import CIS, T0, VERSION, lab_ad, write_ci_build
from stack import Stack, build_assets, wait_for

from adgen.index.snapshot import INDEX_KIND, SnapshotStore
from adgen.processors.query_retrieval import SearchResult
from adgen.search.ci_index import load_latest_snapshot
from adgen.streams.events import SearchQuery

pytestmark = pytest.mark.integration

NEW_AD = "ad-new-beakers"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("search-restart")
    assets = build_assets(root / "assets", users=10, ads=30)
    write_ci_build(assets.root / "var" / "index" / "ci")
    s = Stack.start(assets, root / "stack", ADGEN_WORKER__SNAPSHOT_INTERVAL_S="2")
    try:
        yield s
    finally:
        s.stop()


def answer(stack: Stack, query_id: str, text: str) -> SearchResult:
    stack.produce([SearchQuery(event_id=f"e-{query_id}", event_time=T0, query_id=query_id, text=text)])
    r, key = stack.redis(), stack.keys.search_result(query_id)
    wait_for(lambda: r.hget(key, "data") is not None, 120, f"the answer to {text!r}")
    return SearchResult.model_validate_json(r.hget(key, "data"))


def test_a_new_ads_cis_are_written_snapshotted_and_still_answer_after_a_restart(stack: Stack) -> None:
    r, keys = stack.redis(), stack.keys
    stack.start_worker("w1")
    wait_for(lambda: r.get(keys.ci_current()) == VERSION.encode(), 180, "the CI index published on start")
    assert r.hgetall(keys.ad_cis(VERSION, "seed-1")) == {b"1": b"1.0"}

    stack.produce([lab_ad(NEW_AD, "glass beakers")])
    wait_for(lambda: bool(r.hgetall(keys.ad_cis(VERSION, NEW_AD))), 120, "the new ad's CIs in Redis")
    beakers = str(CIS.index("glass beakers")).encode()
    assert beakers in r.hgetall(keys.ad_cis(VERSION, NEW_AD))
    assert NEW_AD.encode() in r.hgetall(keys.ci_ads(VERSION, CIS.index("glass beakers")))
    # the record is written before any CI key names the ad (CIAssigner: assign, write records, then publish_ads),
    # so a reader who found the ad through a CI finds its record at once; before that order a read here once
    # landed in the gap (CI, under load)
    data = r.hget(keys.ad(NEW_AD), "data")
    assert data is not None, "a CI key named the new ad before its record was written"
    record = json.loads(data)
    assert record["status"] == "active" and record["cis"][0] == "glass beakers"

    ci_root = stack.assets.root / "var" / "index" / "ci" / "snapshots"
    sid_store = SnapshotStore(stack.assets.root / "var" / "index", INDEX_KIND)

    def both_snapshotted() -> bool:
        catalogue = sid_store.latest().manifest.meta.get("catalogue", [])
        return NEW_AD in load_latest_snapshot(ci_root).ad_cis and any(d["item_id"] == NEW_AD for d in catalogue)

    wait_for(both_snapshotted, 180, "S-ID and CI snapshots holding the new ad")
    stack.kill("w1", signal.SIGTERM)

    for key in r.scan_iter(f"{keys.prefix}:ci:*"):  # nothing left in Redis to fall back on
        r.delete(key)
    w2 = stack.start_worker("w2")
    wait_for(lambda: bool(r.hgetall(keys.ad_cis(VERSION, NEW_AD))), 180, "the restored CIs republished")
    result = answer(stack, "q-after-restart", "glass beakers")
    assert NEW_AD in {a.ad_id for a in result.ads}, result
    # restored from the snapshots: the restarted worker resumed after the ad's event and never re-read it
    assert w2.metrics().get('adgen_events_total{topic="ad-updates"}', 0.0) == 0
