"""File checksums shared by everything that writes or verifies files on disk (snapshots, CI index, LM)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large weight files need no memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_label(name: str, weight_files: Iterable[Path]) -> str:
    """`name-<12 hex>`: a served checkpoint's label, its name (e.g. the registry version) and a digest of its
    weight files, so two checkpoints under one name still read differently in every output they label."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted(weight_files):
        digest.update(Path(path).read_bytes())
    return f"{name}-{digest.hexdigest()}"
