"""Shared fixtures: one embedded runtime (Tansu + redis-server) per test session, used by every
integration test in the project.

- `runtime`: Settings pointed at the session's EmbeddedRuntime (free ports, tmp data dir); do not mutate
  them, derive with `model_copy`. `runtime_settings` is the same object under a more explicit name.
- `embedded_runtime`: the started EmbeddedRuntime itself (PIDs, ports, start-up timings).
- `stream_settings`: per test, a fresh topic prefix (all topics created) and app id, so tests never
  read each other's events or share consumer groups on the one broker.
- `redis_client`: a client on the runtime's redis-server, db flushed before each test.
Mark tests that use them `@pytest.mark.integration` (they run in the default suite).

Every skip must name its reason (one without becomes a failure) and the run ends with the list of skips.
With `ADGEN_RECORD_RESULTS=FILE.json` the outcome, duration and measured facts (`fault_facts`) of every
test run are merged into FILE by test id; docs/reliability.md renders its table from
docs/data/reliability/results.json that way.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


# -- no silent skips ---------------------------------------------------------------------------------------
_skips: list[tuple[str, str]] = []


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped:").strip()
    return ""


RECORD_ENV = "ADGEN_RECORD_RESULTS"
_recorded: dict[str, dict[str, Any]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A skip must say why: one without a reason becomes a failure; every skip is listed at the end.
    Outcomes are kept for ADGEN_RECORD_RESULTS."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not reason:
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid} skipped without a reason: give pytest.skip() one"
        else:
            _skips.append((item.nodeid, reason))
    if report.when == "call" or report.outcome != "passed":
        entry = _recorded.setdefault(item.nodeid, {"duration_s": 0.0})
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 1)
        if report.when == "call" or entry.get("outcome", "passed") == "passed":
            entry["outcome"] = report.outcome
        entry["slow"] = item.get_closest_marker("slow") is not None
        entry["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        if report.failed and report.longrepr is not None:
            entry["error"] = str(report.longrepr).strip().splitlines()[-1][:300]
        elif report.skipped:
            entry["reason"] = _skip_reason(report)
        entry["facts"] = dict(item.user_properties).get("facts", {})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section(f"skipped: {len(_skips)}", sep="-", bold=bool(_skips))
    for nodeid, reason in _skips:
        terminalreporter.line(f"{nodeid}: {reason}")
    path = os.environ.get(RECORD_ENV)
    if path and _recorded:
        out = Path(path)
        recorded = json.loads(out.read_text()) if out.exists() else {"tests": {}}
        recorded["tests"].update(_recorded)
        recorded["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        terminalreporter.line(f"recorded {len(_recorded)} test results in {out}")
