"""Live ad index: upserts get S-IDs from the frozen RQ-VAE, deletes leave the trie at once, views are
immutable per version, replays and late events change nothing, snapshots carry the offsets they cover.

Uses the real offline MiniLM encoder and a small RQ-VAE trained on a 24-ad catalogue (a few seconds).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adgen.core.ad_text import ad_text
from adgen.datasets import item_from_upsert
from adgen.index.ad_index import AdIndex, build_ad_index
from adgen.index.rqvae import RQVAEConfig
from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot
from adgen.model.encoder import CachedEncoder, load_encoder
from adgen.processors.ad_indexer import LiveAdIndex
from adgen.processors.snapshots import write_snapshot
from adgen.streams.events import AdDelete, AdUpsert

T0 = datetime(2026, 5, 1, tzinfo=UTC)
CATEGORIES = ["Sports", "Music", "Garden", "Kitchen"]


def upsert(ad: str, minutes: float, name: str | None = None, status: str = "active") -> AdUpsert:
    i = int(ad[2:])
    return AdUpsert(
        event_id=f"{ad}-up-{minutes}",
        event_time=T0 + timedelta(minutes=minutes),
        ad_id=ad,
        name=name or f"{CATEGORIES[i % 4]} product number {i}",
        category_path=[CATEGORIES[i % 4], f"{CATEGORIES[i % 4]} gear"],
        status=status,
    )


def delete(ad: str, minutes: float) -> AdDelete:
    return AdDelete(event_id=f"{ad}-del-{minutes}", event_time=T0 + timedelta(minutes=minutes), ad_id=ad)


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SnapshotStore, CachedEncoder]]:
    root = tmp_path_factory.mktemp("live")
    encoder = CachedEncoder(load_encoder(), root / "cache")
    items = [item_from_upsert(upsert(f"ad{i:02d}", 0)) for i in range(24)]
    embeddings = encoder.encode([ad_text(i) for i in items], progress=False)
    config = RQVAEConfig(
        input_dim=encoder.dim, num_levels=2, codebook_size=8, epochs=5, hidden_dims=(64,), latent_dim=16
    )
    ad_index, _ = build_ad_index(items, embeddings, config, root / "rqvae", collision_size=32, progress=False)
    store = SnapshotStore(root / "index", INDEX_KIND)
    ad_index.snapshot(store)
    yield store, encoder


def load_live(store: SnapshotStore, encoder: CachedEncoder) -> LiveAdIndex:
    snap = store.latest()
    ad_index = AdIndex.from_snapshot(read_index_snapshot(snap), encoder)
    return LiveAdIndex.from_snapshot_meta(ad_index, token_offset=100, version=snap.version)


def test_upsert_assigns_an_sid_and_delete_removes_the_ad_from_the_next_view(base_index) -> None:
    live = load_live(*base_index)
    before = live.view
    records = live.apply([upsert("ad90", 1)])
    assert records[0].status == "active" and records[0].sid is not None
    assert "ad90" in live.view.live and "ad90" not in before.live  # the old view is untouched
    assert int(live.view.trie.child_token.min()) >= 100  # token ids start at the tokenizer's offset
    live.apply([delete("ad90", 2), delete("ad03", 2)])
    assert not {"ad90", "ad03"} & live.view.live
    assert "ad90" not in live.view.leaf_items and live.view.version != before.version
    assert live.view.sids["ad90"] == tuple(records[0].sid)  # kept so old clicks still render in prompts


def test_replayed_and_late_updates_change_nothing(base_index) -> None:
    live = load_live(*base_index)
    live.apply([upsert("ad91", 5), delete("ad91", 6)])
    version = live.view.version
    assert live.apply([upsert("ad91", 5), delete("ad91", 6)]) == []  # a replay
    assert live.apply([upsert("ad91", 4)]) == []  # older than the delete: a late event
    assert live.view.version == version and "ad91" not in live.view.live
    live.apply([upsert("ad91", 7)])  # re-created later on purpose
    assert "ad91" in live.view.live


def test_newest_event_per_ad_wins_within_a_batch_and_paused_ads_leave_the_trie(base_index) -> None:
    live = load_live(*base_index)
    live.apply([delete("ad92", 9), upsert("ad92", 8), upsert("ad05", 3, status="paused")])
    assert "ad92" not in live.view.live and "ad05" not in live.view.live
    assert live.items["ad05"].title == "Music product number 5"  # still known, for old behaviour in prompts


def test_unchanged_ad_keeps_its_sid_and_changed_text_is_recoded(base_index) -> None:
    live = load_live(*base_index)
    sid = live.view.sids["ad01"]
    live.apply([upsert("ad01", 1)])
    assert live.view.sids["ad01"] == sid
    live.apply([upsert("ad01", 2, name="Kitchen knife block with six stainless knives")])
    assert "ad01" in live.view.live


def test_snapshot_records_offsets_and_catalogue_and_a_restart_resumes_from_them(base_index, tmp_path: Path) -> None:
    store, encoder = base_index
    live = load_live(store, encoder)
    live.apply([upsert("ad93", 1), delete("ad02", 2)])
    live.offsets = {0: 17, 1: 5}
    notice = write_snapshot(live, store)
    assert notice.ad_updates_offsets == {"0": 17, "1": 5} and notice.version == store.latest().version
    restored = load_live(store, encoder)
    assert restored.offsets == {0: 17, 1: 5}
    assert "ad93" in restored.view.live and "ad02" not in restored.view.live
    assert restored.items["ad93"].title == live.items["ad93"].title
    assert restored.apply([upsert("ad93", 1)]) == []  # the snapshot remembers what it applied


def test_the_reload_probe_picks_a_live_ad_when_the_first_leaf_was_deleted(base_index) -> None:
    from adgen.processors.model_reload import probe_window

    live = load_live(*base_index)
    first = live.view.leaf_items[0]
    live.apply([delete(first, 1)])
    with pytest.raises(KeyError, match="leaf value 0 is no live ad"):
        live.view.leaf_items[0]  # the deleted ad's leaf stays empty in this index's later versions
    probe = probe_window(live)  # it once read leaf 0: every model version published after that was refused
    assert probe.events[0].ref in live.view.leaf_items and probe.events[0].ref != first
