"""Fixtures for the fault tests: the world, index and checkpoint are built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import stack` (also how bench/soak.py loads it)

from stack import Assets, build_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return build_assets(tmp_path_factory.mktemp("reliability-assets"))
