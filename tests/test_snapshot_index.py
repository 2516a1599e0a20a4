import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adgen.index.rqvae import RQVAE, RQVAEConfig, load_rqvae, save_rqvae
from adgen.index.semantic_ids import SemanticIdMap, global_leaf_map
from adgen.index.snapshot import (
    INDEX_KIND,
    LiveSnapshot,
    SnapshotError,
    SnapshotStore,
    read_index_snapshot,
    read_model_files,
    write_index_snapshot,
)


def _store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snaps", kind="test")


def test_written_snapshot_round_trips_arrays_documents_and_files(tmp_path: Path) -> None:
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\x00\x01weights")
    snap = _store(tmp_path).write(
        model_version="m1",
        arrays={"codes": np.arange(6, dtype=np.int32).reshape(2, 3)},
        documents={"items": ["a", "b"]},
        files={"weights.bin": blob},
        meta={"source": "unit"},
    )
    loaded = _store(tmp_path).latest()
    assert loaded.version == snap.version == 1
    assert loaded.array("codes").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded.document("items") == ["a", "b"]
    assert loaded.file("weights.bin").read_bytes() == b"\x00\x01weights"
    manifest = json.loads((loaded.path / "manifest.json").read_text())
    assert manifest["model_version"] == "m1" and manifest["meta"] == {"source": "unit"}
    assert set(manifest["files"]) == {"codes.npy", "items.json", "weights.bin"}
    assert not list((tmp_path / "snaps").glob(".tmp-*"))


def test_versions_increase_and_latest_is_the_newest(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for n in range(3):
        store.write(model_version="m", documents={"n": n})
    assert store.versions() == [1, 2, 3]
    assert store.latest().document("n") == 2
    assert store.prune(keep=1) == [1, 2] and store.versions() == [3]


def test_corrupt_snapshot_is_refused_and_the_previous_stays_in_use(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write(model_version="m", arrays={"x": np.zeros(4)})
    live = LiveSnapshot(store)
    assert live.refresh() and live.current is not None and live.current.version == 1
    bad = store.write(model_version="m", arrays={"x": np.ones(4)})
    with (bad.path / "x.npy").open("r+b") as fh:  # flip a byte in the data
        fh.seek(-1, 2)
        fh.write(b"\x07")
    assert not live.refresh()
    assert live.current.version == 1 and live.current.array("x").tolist() == [0.0] * 4
    assert live.last_error is not None and "x.npy is corrupt" in live.last_error
    with pytest.raises(SnapshotError, match="corrupt"):
        store.open(2)
    assert store.latest().version == 1  # a fresh reader also skips the bad one


def test_partial_snapshot_without_manifest_or_with_missing_file_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write(model_version="m", documents={"ok": True})
    partial = store.path_of(2)
    partial.mkdir()
    (partial / "items.json").write_text("[]")
    with pytest.raises(SnapshotError, match="partial"):
        store.open(2)
    missing = store.write(model_version="m", arrays={"a": np.zeros(2), "b": np.zeros(2)})
    (missing.path / "b.npy").unlink()
    with pytest.raises(SnapshotError, match="do not match the manifest"):
        store.open(missing.version)
    assert store.latest().document("ok") is True


def test_wrong_kind_is_refused(tmp_path: Path) -> None:
    SnapshotStore(tmp_path / "snaps", kind="ci-index").write(model_version="m")
    with pytest.raises(SnapshotError, match="kind 'ci-index'"):
        _store(tmp_path).open(1)


def test_index_snapshot_restores_map_trie_and_frozen_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RQVAE(RQVAEConfig(input_dim=8, hidden_dims=(8,), latent_dim=4, num_levels=2, codebook_size=4))
    version = save_rqvae(model, tmp_path / "model")
    sid_map = SemanticIdMap.build(["a", "b", "c"], np.array([[0, 1], [0, 1], [2, 3]]), (4, 4, 8))
    store = SnapshotStore(tmp_path / "index", kind=INDEX_KIND)
    snap = write_index_snapshot(store, sid_map, read_model_files(tmp_path / "model"), version, {"source": "unit"})
    restored = read_index_snapshot(store.latest())
    assert restored.snapshot.version == snap.version
    assert {i: restored.sid_map.sid_of(i) for i in "abc"} == {i: sid_map.sid_of(i) for i in "abc"}
    trie, leaf_items = sid_map.trie_arrays(50)
    shifted = restored.trie_with_offset(50)
    assert torch.equal(shifted.child_token, trie.child_token) and restored.leaf_items == leaf_items
    frozen, frozen_version = load_rqvae(restored.model_dir)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    assert frozen_version == version and np.array_equal(frozen.codes(x), model.codes(x))
    assert restored.sid_map.leaf_scope == "prefix"
    write_index_snapshot(store, global_leaf_map(sid_map), read_model_files(tmp_path / "model"), version, {})
    leaves = read_index_snapshot(store.latest()).sid_map
    assert leaves.leaf_scope == "global" and leaves.add("d", (0, 1)) == (0, 1, 3)  # a worker restarts global


def test_live_index_keeps_publishing_after_its_source_snapshot_is_pruned(tmp_path: Path) -> None:
    from adgen.index.ad_index import AdIndex

    model = RQVAE(RQVAEConfig(input_dim=8, hidden_dims=(8,), latent_dim=4, num_levels=2, codebook_size=4))
    version = save_rqvae(model, tmp_path / "model")
    store = SnapshotStore(tmp_path / "index", kind=INDEX_KIND)
    sid_map = SemanticIdMap.build(["a"], np.array([[0, 1]]), (4, 4, 8))
    write_index_snapshot(store, sid_map, read_model_files(tmp_path / "model"), version, {})
    live = AdIndex.load_latest(store)
    for n in range(3):
        live.add_embedding(f"ad{n}", np.full(8, n, dtype=np.float32))
        live.snapshot(store)
        store.prune(keep=1)  # deletes the snapshot the live index was loaded from
    assert store.latest().version == 4 and len(read_index_snapshot(store.latest()).sid_map) == 4
