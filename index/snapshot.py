"""Versioned, checksummed, atomically written snapshot directories, and the index snapshot on top.

Layout: `<root>/v00000042/` with `manifest.json` (format, kind, version, created_at, model_version,
sha256 + size per file, free-form meta), arrays as `.npy`, documents as `.json`, and copied files (e.g.
the frozen RQ-VAE). A snapshot is assembled in a hidden temp directory, every file and the directory are
fsynced, and one rename publishes it, so a reader never sees half a snapshot. Readers verify every
checksum and refuse anything that does not match; `LiveSnapshot` keeps serving the previous version.
No pickle anywhere: `np.load(..., allow_pickle=False)`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from adgen.core.checksums import file_sha256
from adgen.core.fsync import fsync_dir, fsync_file
from adgen.index.semantic_ids import SemanticIdMap
from adgen.index.trie_arrays import TrieArrays

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
_DIR = re.compile(r"^v(\d{8})$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SnapshotError(RuntimeError):
    """A snapshot that is missing, partial, corrupt, or of an unexpected kind."""


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class SnapshotManifest(BaseModel):
    format: int = FORMAT
    kind: str
    version: int
    created_at: datetime
    model_version: str
    files: dict[str, FileEntry]
    meta: dict[str, Any] = {}


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot directory."""

    path: Path
    manifest: SnapshotManifest

    @property
    def version(self) -> int:
        return self.manifest.version

    def array(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", allow_pickle=False)

    def document(self, name: str) -> Any:
        return json.loads((self.path / f"{name}.json").read_text())

    def file(self, name: str) -> Path:
        return self.path / name


class SnapshotStore:
    """All snapshots of one kind under one root directory."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = Path(root)
        self.kind = kind

    def versions(self) -> list[int]:
        """Published versions (valid or not), ascending."""
        if not self.root.is_dir():
            return []
        found = (_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def path_of(self, version: int) -> Path:
        return self.root / f"v{version:08d}"

    def write(
        self,
        *,
        model_version: str,
        arrays: Mapping[str, np.ndarray] | None = None,
        documents: Mapping[str, Any] | None = None,
        files: Mapping[str, Path] | None = None,
        blobs: Mapping[str, bytes] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Publish a new version atomically (temp dir, fsync, rename); returns it verified."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name, arr in (arrays or {}).items():
                np.save(tmp / f"{self._checked(name)}.npy", np.ascontiguousarray(arr), allow_pickle=False)
            for name, doc in (documents or {}).items():
                (tmp / f"{self._checked(name)}.json").write_text(json.dumps(doc))
            for name, src in (files or {}).items():
                shutil.copyfile(src, tmp / self._checked(name))
            for name, data in (blobs or {}).items():
                (tmp / self._checked(name)).write_bytes(data)
            entries = {}
            for path in sorted(tmp.iterdir()):
                fsync_file(path)
                entries[path.name] = FileEntry(sha256=file_sha256(path), bytes=path.stat().st_size)
            while True:
                version = max(self.versions(), default=0) + 1
                manifest = SnapshotManifest(
                    kind=self.kind,
                    version=version,
                    created_at=datetime.now(UTC),
                    model_version=model_version,
                    files=entries,
                    meta=dict(meta or {}),
                )
                (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=1))
                fsync_file(tmp / MANIFEST)
                fsync_dir(tmp)
                try:
                    tmp.rename(self.path_of(version))  # fails if a concurrent writer took this version
                except OSError:
                    if self.path_of(version).exists():
                        continue
                    raise
                fsync_dir(self.root)
                return Snapshot(self.path_of(version), manifest)
        except OSError as exc:  # disk full, unwritable: say where, and that the published versions are intact
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(self.root).free
            raise SnapshotError(
                f"cannot write a {self.kind} snapshot under {self.root} ({free} bytes free there): {exc}; "
                f"nothing was published, the newest existing version stays in use"
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _checked(name: str) -> str:
        if not _NAME.match(name) or name == MANIFEST:
            raise SnapshotError(f"invalid snapshot file name {name!r}: use letters, digits, '_', '-', '.'")
        return name

    def open(self, version: int) -> Snapshot:
        """Open and fully verify one version; SnapshotError says exactly what is wrong."""
        path = self.path_of(version)
        where = f"snapshot {path}"
        if not (path / MANIFEST).is_file():
            raise SnapshotError(f"{where} is partial: it has no {MANIFEST}")
        try:
            manifest = SnapshotManifest.model_validate_json((path / MANIFEST).read_text())
        except (ValidationError, ValueError) as exc:
            raise SnapshotError(f"{where} has an unreadable manifest: {exc}") from exc
        if manifest.format != FORMAT or manifest.kind != self.kind or manifest.version != version:
            raise SnapshotError(
                f"{where}: manifest says format {manifest.format}, kind {manifest.kind!r}, version "
                f"{manifest.version}; expected format {FORMAT}, kind {self.kind!r}, version {version}"
            )
        present = {p.name for p in path.iterdir()} - {MANIFEST}
        if present != set(manifest.files):
            raise SnapshotError(
                f"{where}: files {sorted(present)} do not match the manifest's {sorted(manifest.files)}"
            )
        for name, entry in manifest.files.items():
            actual = file_sha256(path / name)
            if actual != entry.sha256:
                raise SnapshotError(
                    f"{where}: {name} is corrupt (sha256 {actual[:12]}…, manifest {entry.sha256[:12]}…)"
                )
        return Snapshot(path, manifest)

    def latest(self) -> Snapshot:
        """The newest valid version; invalid newer ones are logged and skipped."""
        problems = []
        for version in reversed(self.versions()):
            try:
                return self.open(version)
            except SnapshotError as exc:
                log.warning("skipping snapshot: %s", exc)
                problems.append(str(exc))
        detail = "; ".join(problems) if problems else "no snapshots written yet"
        raise SnapshotError(f"no valid {self.kind} snapshot under {self.root}: {detail}")

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` versions and stale temp dirs; returns the deleted versions."""
        if keep < 1:
            raise SnapshotError(f"keep must be >= 1, got {keep}")
        old = self.versions()[:-keep]
        for version in old:
            shutil.rmtree(self.path_of(version))
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        return old


@dataclass
class LiveSnapshot:
    """The snapshot a reader is serving; `refresh()` moves to a newer valid one or keeps the current."""

    store: SnapshotStore
    current: Snapshot | None = None
    last_error: str | None = field(default=None)

    def refresh(self) -> bool:
        """True if a newer valid version was loaded. Bad newer versions are refused (`last_error`, logged)
        and the current one stays in use."""
        floor = self.current.version if self.current is not None else 0
        errors = []
        for version in reversed([v for v in self.store.versions() if v > floor]):
            try:
                self.current = self.store.open(version)
            except SnapshotError as exc:
                errors.append(str(exc))
                log.error("refused %s; still serving v%s", exc, self.current.version if self.current else None)
                continue
            break
        else:
            if errors:
                self.last_error = "; ".join(errors)
            return False
        self.last_error = "; ".join(errors) or None
        return True


# -- the semantic-ID index snapshot -----------------------------------------------------------------
INDEX_KIND = "sid-index"
RQVAE_FILES = ("rqvae.safetensors", "rqvae.json")


def read_model_files(directory: Path) -> dict[str, bytes]:
    """The saved RQ-VAE's files, held in memory so a live index never depends on a directory that a
    later `prune` may delete."""
    return {name: (Path(directory) / name).read_bytes() for name in RQVAE_FILES}


def write_index_snapshot(
    store: SnapshotStore,
    sid_map: SemanticIdMap,
    model_files: Mapping[str, bytes],
    model_version: str,
    meta: Mapping[str, Any],
) -> Snapshot:
    """Publish the S-ID map, its trie (token offset 0) and the frozen RQ-VAE (`read_model_files`)."""
    if set(model_files) != set(RQVAE_FILES):
        raise SnapshotError(f"an index snapshot needs the RQ-VAE files {RQVAE_FILES}, got {sorted(model_files)}")
    sids, item_ids = sid_map.to_arrays()
    trie, _ = sid_map.trie_arrays(0)
    return store.write(
        model_version=model_version,
        arrays={
            "sids": sids,
            "trie_indptr": trie.indptr.numpy(),
            "trie_child_token": trie.child_token.numpy(),
            "trie_child_node": trie.child_node.numpy(),
            "trie_leaf_value": trie.leaf_value.numpy(),
        },
        documents={
            "items": item_ids,
            "index": {
                "codebook_sizes": list(sid_map.codebook_sizes),
                "leaf_scope": sid_map.leaf_scope,
                "max_depth": trie.max_depth,
                "max_children": trie.max_children,
                "map_version": sid_map.version,
            },
        },
        blobs=model_files,
        meta=dict(meta),
    )


@dataclass(frozen=True)
class IndexSnapshot:
    """What a snapshot restores: the live map, the trie (token offset 0) and where the RQ-VAE is."""

    snapshot: Snapshot
    sid_map: SemanticIdMap
    trie: TrieArrays
    leaf_items: list[str]

    @property
    def model_dir(self) -> Path:
        return self.snapshot.path

    def trie_with_offset(self, token_offset: int) -> TrieArrays:
        """The same trie over vocabulary ids that start at `token_offset`."""
        t = self.trie
        return TrieArrays(
            t.indptr, t.child_token + token_offset, t.child_node, t.leaf_value, t.max_depth, t.max_children
        )


def read_index_snapshot(snapshot: Snapshot) -> IndexSnapshot:
    info = snapshot.document("index")
    items = snapshot.document("items")
    sid_map = SemanticIdMap.from_arrays(
        snapshot.array("sids"), items, info["codebook_sizes"], info.get("leaf_scope", "prefix")
    )
    trie = TrieArrays(
        *(torch.from_numpy(snapshot.array(f"trie_{n}")) for n in ("indptr", "child_token", "child_node", "leaf_value")),
        int(info["max_depth"]),
        int(info["max_children"]),
    )
    return IndexSnapshot(snapshot, sid_map, trie, items)
