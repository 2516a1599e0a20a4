"""Disk faults and corrupt files: a failed snapshot write says why and leaves the previous snapshot serving;
a corrupt snapshot or model file is refused, never half-loaded.

Disk full is real: a 512 KiB tmpfs is mounted for the test (root only; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from adgen.index.snapshot import LiveSnapshot, SnapshotError, SnapshotStore

KIND = "sid-index"


def _write(store: SnapshotStore, rows: int, tag: str) -> int:
    arrays = {"sids": np.arange(rows * 4, dtype=np.int32).reshape(rows, 4)}
    return store.write(model_version=tag, arrays=arrays, documents={"items": [f"ad{i}" for i in range(3)]}).version


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem that fills up: tmpfs of 512 KiB."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_a_snapshot_is_a_clear_error_and_the_previous_snapshot_still_serves(small_disk: Path) -> None:
    store = SnapshotStore(small_disk / "snapshots", KIND)
    first = _write(store, rows=100, tag="m1")
    live = LiveSnapshot(store)
    assert live.refresh() and live.current is not None and live.current.version == first

    with pytest.raises(SnapshotError) as info:
        _write(store, rows=200_000, tag="m2")  # 3.2 MB of int32 on a 512 KiB disk
    assert str(store.root) in str(info.value) and "bytes free" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)

    assert store.versions() == [first]
    assert not list(store.root.glob(".tmp-*")), "a failed write must not leave its temp directory behind"
    assert store.latest().version == first
    assert not live.refresh() and live.current.version == first
    # once space is back, the next snapshot goes through
    assert _write(store, rows=100, tag="m3") == first + 1


def test_unwritable_snapshot_directory_is_a_clear_error_and_the_previous_snapshot_is_kept(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots", KIND)
    first = _write(store, rows=10, tag="m1")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the snapshot root should be")
    with pytest.raises(OSError) as info:
        _write(SnapshotStore(blocker, KIND), rows=10, tag="m2")
    assert str(blocker) in str(info.value)
    if os.geteuid() != 0:  # root ignores permission bits; the file-as-root case above covers root
        store.root.chmod(0o500)
        try:
            with pytest.raises(PermissionError):
                _write(store, rows=10, tag="m2")
        finally:
            store.root.chmod(0o700)
    assert store.latest().version == first


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "extra_file", "bad_manifest"])
def test_a_corrupt_snapshot_is_refused_and_readers_keep_the_previous_version(tmp_path: Path, damage: str) -> None:
    store = SnapshotStore(tmp_path / "snapshots", KIND)
    good = _write(store, rows=50, tag="m1")
    live = LiveSnapshot(store)
    live.refresh()
    bad = _write(store, rows=50, tag="m2")
    target = store.path_of(bad) / "sids.npy"
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[-7] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete_file":
        target.unlink()
    elif damage == "extra_file":
        (store.path_of(bad) / "injected.npy").write_bytes(b"\x93NUMPY")
    else:
        (store.path_of(bad) / "manifest.json").write_text('{"format": 1, "kind": ')

    with pytest.raises(SnapshotError) as info:
        store.open(bad)
    assert f"v{bad:08d}" in str(info.value)
    assert store.latest().version == good
    assert not live.refresh()
    assert live.current is not None and live.current.version == good and live.last_error


def test_a_snapshot_never_unpickles_an_object_array(tmp_path: Path) -> None:
    """Even with a matching checksum, an object array (which would need pickle) is refused on read."""
    store = SnapshotStore(tmp_path / "snapshots", KIND)
    version = _write(store, rows=5, tag="m1")
    path = store.path_of(version)
    np.save(path / "sids.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib

    manifest["files"]["sids.npy"] = {
        "sha256": hashlib.sha256((path / "sids.npy").read_bytes()).hexdigest(),
        "bytes": (path / "sids.npy").stat().st_size,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    snap = store.open(version)
    with pytest.raises(ValueError, match="pickle"):
        snap.array("sids")


# --- model files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rqvae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adgen.index.rqvae import RQVAE, RQVAEConfig, save_rqvae

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("rqvae")
    config = RQVAEConfig(input_dim=16, hidden_dims=(16,), latent_dim=8, num_levels=2, codebook_size=4)
    save_rqvae(RQVAE(config), directory)
    return directory


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "flip_weight_byte"])
def test_a_corrupt_rqvae_file_is_refused(rqvae_dir: Path, tmp_path: Path, damage: str) -> None:
    from adgen.index.rqvae import CONFIG_FILE, WEIGHTS_FILE, RQVAEError, load_rqvae

    directory = tmp_path / "m"
    shutil.copytree(rqvae_dir, directory)
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage_header":
        weights.write_bytes(b"\xff" * 8 + bytes(data[8:]))
    else:  # a bit flip inside the tensor data: the header still parses, only the checksum can tell
        data[-3] ^= 0x10
        weights.write_bytes(bytes(data))
    assert json.loads((directory / CONFIG_FILE).read_text())["version"]
    with pytest.raises(RQVAEError, match="corrupt") as info:
        load_rqvae(directory)
    assert str(weights) in str(info.value)


def test_a_truncated_lm_checkpoint_is_refused(tmp_path: Path) -> None:
    from adgen.model.lm import LMConfig, build_lm, load_lm, save_lm

    directory = save_lm(build_lm(LMConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2)), tmp_path / "lm")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(Exception, match=r"(?i)safetensor|header|incomplete|deserializ|metadata"):
        load_lm(directory)


def test_an_lm_checkpoint_with_a_flipped_bit_in_a_tensor_is_refused(tmp_path: Path) -> None:
    from adgen.model.lm import LMConfig, LMError, build_lm, load_lm, save_lm

    directory = save_lm(build_lm(LMConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2)), tmp_path / "lm")
    load_lm(directory)  # intact: loads
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) - 100] ^= 0x01  # inside the tensor bytes: the safetensors header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(LMError, match="does not match its recorded sha256"):
        load_lm(directory)
