"""The model registry: immutable, checksummed, numbered checkpoint versions and a pointer to the one to serve.

Why a registry instead of one checkpoint path: a model that is retrained every day must be published
without stopping the workers, gated against the one it replaces, and taken back when it misbehaves. So
every version is a directory that never changes once published, the pointer names the version workers
serve, and the pointer's history is what `rollback` walks back.

    <root>/v0001/            the checkpoint's files (weights, config, tokenizer, recipe, any layout) plus
                             version.json: parent, gate result and both scores, data counts, recipe, index
                             it was trained against, sha256 of every file
    <root>/v0002/ ...
    <root>/current.json      {"version": "v0002", "history": ["v0001", "v0002"]}
    <root>/rejected/         reports of candidates the gate refused (no weights)

Publishing copies into a hidden temp directory, fsyncs, and renames it to the next number; the pointer is
replaced atomically the same way, so a worker polling it never reads half a version or half a pointer.
A file lock serialises publishers (e.g. a scheduled retrain and an operator's rollback).
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from adgen.core.checksums import file_sha256
from adgen.core.fsync import fsync_dir, fsync_file

VERSION_FILE = "version.json"
INDEX_ADS_FILE = "index_ads.txt"  # the live ads of the index a version was trained against, one id a line
POINTER_FILE = "current.json"
LOCK_FILE = ".lock"
REJECTED_DIR = "rejected"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done, or a version that is missing, partial or corrupt."""


class GateResult(BaseModel):
    """Whether a candidate was allowed to replace its parent, and the scores that decided it."""

    passed: bool
    metric: str
    candidate: float | None = None
    parent: float | None = None
    margin: float = Field(0.0, description="Published only if candidate >= parent + margin.")
    reason: str


class IndexRef(BaseModel):
    """The S-ID index a version's tokenizer and training data belong to (a worker refuses a version whose
    RQ-VAE differs from its live index's: the same S-ID would name different ads)."""

    rqvae_version: str
    codebook_sizes: list[int]
    snapshot_version: int | None = None
    live_ads: int | None = None


class VersionInfo(BaseModel):
    """version.json: what a version is, where it came from and why it was published."""

    version: str
    kind: Literal["leadre", "ci"] = Field("leadre", description="The model kind: LEADRE's LM or RARE's CI model.")
    created_at: datetime
    parent: str | None = None
    source: str = Field(description="'retrain', or the path a checkpoint was imported from.")
    gate: GateResult | None = None
    scores: dict[str, dict[str, float]] = Field(default_factory=dict, description="'parent'/'candidate' -> metrics.")
    data: dict[str, Any] = Field(default_factory=dict, description="Counts of what the version was trained on.")
    recipe: dict[str, Any] | None = None
    index: IndexRef | None = None
    files: dict[str, str] = Field(default_factory=dict, description="Relative path -> sha256 of every file.")


class Pointer(BaseModel):
    """current.json: the version workers serve and the order versions were served in (for rollback)."""

    version: str
    history: list[str]
    updated_at: datetime


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fsync_file(path)
    fsync_dir(root)


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != VERSION_FILE
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    fsync_file(tmp)
    tmp.replace(path)
    fsync_dir(path.parent)


class ModelRegistry:
    """Versions of one model kind under `root`; every method is safe to call while workers poll it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ------------------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        if not self.root.is_dir():
            return []
        found = [
            (int(m.group(1)), p.name) for p in self.root.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name))
        ]
        return [name for _, name in sorted(found)]

    def path_of(self, version: str) -> Path:
        if not _VERSION_DIR.match(version):
            raise RegistryError(f"{version!r} is not a version name (expected v0001, v0002, ...)")
        return self.root / version

    def info(self, version: str) -> VersionInfo:
        path = self.path_of(version) / VERSION_FILE
        if not path.is_file():
            raise RegistryError(f"version {version} has no {VERSION_FILE} in {self.root}: not a published version")
        return VersionInfo.model_validate_json(path.read_text())

    def index_ads(self, version: str) -> set[str] | None:
        """The live ad ids a version was trained against (None if it did not record them)."""
        path = self.path_of(version) / INDEX_ADS_FILE
        return set(path.read_text().split()) if path.is_file() else None

    def pointer(self) -> Pointer | None:
        path = self.root / POINTER_FILE
        if not path.is_file():
            return None
        return Pointer.model_validate_json(path.read_text())

    def current(self) -> str | None:
        """The version workers should serve (None before the first publish)."""
        pointer = self.pointer()
        return pointer.version if pointer else None

    def verify(self, version: str) -> Path:
        """The version's directory once every file matches its recorded sha256; RegistryError otherwise."""
        info = self.info(version)
        root = self.path_of(version)
        if not info.files:
            raise RegistryError(f"version {version} records no files: refusing an unverifiable checkpoint")
        for name, digest in info.files.items():
            path = root / name
            if not path.is_file():
                raise RegistryError(f"version {version} lacks {name}, listed in its {VERSION_FILE}")
            if file_sha256(path) != digest:
                raise RegistryError(
                    f"version {version}: {name} does not match its recorded sha256 (corrupt or modified)"
                )
        extra = set(_checksums(root)) - set(info.files)
        if extra:
            raise RegistryError(f"version {version} holds files it does not record: {sorted(extra)[:3]}")
        return root

    # -- writing ------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(
        self,
        checkpoint: Path,
        info: dict[str, Any],
        make_current: bool = True,
        extra: dict[str, str] | None = None,
    ) -> VersionInfo:
        """Copy `checkpoint` in as the next version with `info` (VersionInfo fields besides version, files,
        created_at) and the text files `extra` (name -> content); point workers at it unless `make_current`
        is False."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise RegistryError(f"no checkpoint directory at {checkpoint}")
        with self._locked():
            existing = self.versions()
            number = int(existing[-1][1:]) + 1 if existing else 1
            version = f"v{number:04d}"
            tmp = self.root / f".{version}.{uuid.uuid4().hex}.tmp"
            try:
                shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns(VERSION_FILE))
                for name, text in (extra or {}).items():
                    (tmp / name).write_text(text)
                record = VersionInfo.model_validate(
                    {**info, "version": version, "created_at": datetime.now(UTC), "files": _checksums(tmp)}
                )
                (tmp / VERSION_FILE).write_text(record.model_dump_json(indent=1))
                _fsync_tree(tmp)
                tmp.rename(self.root / version)
                fsync_dir(self.root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if make_current:
                self._point(version)
            return record

    def use(self, version: str) -> Pointer:
        """Serve `version` (after verifying it); it joins the pointer's history."""
        with self._locked():
            self.verify(version)
            return self._point(version)

    def rollback(self) -> Pointer:
        """Serve the version served before the current one again; the current one leaves the history."""
        with self._locked():
            pointer = self.pointer()
            if pointer is None or len(pointer.history) < 2:
                raise RegistryError(f"nothing to roll back to in {self.root}: fewer than two versions were served")
            history = pointer.history[:-1]
            self.verify(history[-1])
            new = Pointer(version=history[-1], history=history, updated_at=datetime.now(UTC))
            _write_atomic(self.root / POINTER_FILE, new.model_dump_json(indent=1))
            return new

    def _point(self, version: str) -> Pointer:
        pointer = self.pointer()
        history = [v for v in (pointer.history if pointer else []) if v != version] + [version]
        new = Pointer(version=version, history=history, updated_at=datetime.now(UTC))
        _write_atomic(self.root / POINTER_FILE, new.model_dump_json(indent=1))
        return new

    def reject(self, report: dict[str, Any]) -> Path:
        """Keep the report of a candidate the gate refused (for ops; it is never served)."""
        folder = self.root / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}.json"
        _write_atomic(path, json.dumps(report, indent=1, default=str))
        return path
