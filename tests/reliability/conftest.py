"""Fixtures for the fault tests: the world, index and checkpoint are built once per session; `fault_facts`
holds what a test measured, recorded with its outcome when the run records results (tests/conftest.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import stack` (also how bench/soak.py loads it)

from stack import Assets, build_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return build_assets(tmp_path_factory.mktemp("reliability-assets"))


@pytest.fixture
def fault_facts(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with what it measured (kills, re-deliveries, ...)."""
    facts: dict[str, Any] = {"load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    request.node.user_properties.append(("facts", facts))
    yield facts
    facts["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
