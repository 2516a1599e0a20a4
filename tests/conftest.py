"""Shared fixtures: one embedded runtime (Tansu + redis-server) per test session, used by every
integration test in the project.

- `runtime`: Settings pointed at the session's EmbeddedRuntime (free ports, tmp data dir); do not mutate
  them, derive with `model_copy`. `runtime_settings` is the same object under a more explicit name.
- `embedded_runtime`: the started EmbeddedRuntime itself (PIDs, ports, start-up timings).
- `stream_settings`: per test, a fresh topic prefix (all topics created) and app id, so tests never
  read each other's events or share consumer groups on the one broker.
- `redis_client`: a client on the runtime's redis-server, db flushed before each test.
Mark tests that use them `@pytest.mark.integration` (they run in the default suite).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adgen.core.config import Settings
from adgen.runtime import EmbeddedRuntime
from adgen.streams.admin import ensure_topics


@pytest.fixture(scope="session")
def embedded_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRuntime]:
    data_dir: Path = tmp_path_factory.mktemp("runtime")
    base = Settings(paths={"state": data_dir / "state"})
    embedded = EmbeddedRuntime(base, data_dir)
    with embedded:
        yield embedded


@pytest.fixture(scope="session")
def runtime(embedded_runtime: EmbeddedRuntime) -> Settings:
    assert embedded_runtime.settings is not None
    return embedded_runtime.settings


@pytest.fixture(scope="session")
def runtime_settings(runtime: Settings) -> Settings:
    return runtime


@pytest.fixture
def stream_settings(runtime_settings: Settings) -> Settings:
    """Runtime settings with a unique topic prefix (topics created) and a unique Faust app id."""
    tag = uuid.uuid4().hex[:10]
    kafka = runtime_settings.kafka.model_copy(update={"topic_prefix": f"t{tag}-"})
    worker = runtime_settings.worker.model_copy(update={"app_id": f"adgen-test-{tag}"})
    settings = runtime_settings.model_copy(update={"kafka": kafka, "worker": worker})
    ensure_topics(settings)
    return settings


@pytest.fixture
def redis_client(runtime_settings: Settings) -> Iterator[redis.Redis]:
    password = runtime_settings.redis.password
    client = redis.Redis.from_url(
        runtime_settings.redis.url, password=password.get_secret_value() if password else None
    )
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from 2 threads and lose a lot when the shared cores are busy; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
