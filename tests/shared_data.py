"""Where the tests find the shared datasets: `ADGEN_SHARED_DATA` if set, else `shared/` next to the repo
checkout (`<repo>/../shared`, where the project keeps it). Tests that need it skip, naming the path they
looked in and how to point them elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ENV = "ADGEN_SHARED_DATA"


def shared_data() -> Path:
    return Path(os.environ.get(SHARED_ENV) or REPO.parent / "shared")


def require_shared(relative: str) -> Path:
    """The shared-data path, or a skip that says where it looked and which variable to set."""
    path = shared_data() / relative
    if not path.exists():
        pytest.skip(f"needs the shared dataset {path} (set {SHARED_ENV} to the folder holding '{relative}')")
    return path
