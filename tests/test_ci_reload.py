"""Hot reload of the search path's CI model in a real `adgen worker` under a steady query stream: the worker
switches from v1 to v2 with every query answered and none failed, refuses a corrupted v3 while v2 keeps
serving, and `adgen model rollback --kind ci` takes it back to v1.

Harness: tests/reliability/stack.py (seeded world, built index, untrained LEADRE checkpoint, dedicated Tansu
and redis-server, `adgen` subprocesses); the CI build and both CI models are tests/ci_builds.py's, trained in
seconds. Queries arrive on the search-queries topic (answers in Redis) and on the worker's `GET /search`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # the shared harness

from ci_builds import CIS, T0, train_lab_ci_model, write_ci_build
from stack import ADGEN, Stack, build_assets, wait_for

from adgen.model.registry import ModelRegistry
from adgen.processors.query_retrieval import SearchResult
from adgen.search.ci_index import load_latest_snapshot
from adgen.streams.events import SearchQuery

pytestmark = pytest.mark.integration

QUERIES = [*CIS, "Glass Beakers!", "nitrile gloves box", "a digital multimeter"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ci-reload")
    assets = build_assets(root / "assets", users=10, ads=30)
    write_ci_build(assets.root / "var" / "index" / "ci")
    s = Stack.start(
        assets,
        root / "stack",
        ADGEN_MODEL__CI_REGISTRY=str(root / "ci-registry"),
        ADGEN_MODEL__RELOAD_INTERVAL_S="1",
        ADGEN_WORKER__SNAPSHOT_INTERVAL_S="3",
    )
    try:
        yield s
    finally:
        s.stop()


def run_adgen_model(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ADGEN, "model", *args], env=stack.env, capture_output=True, text=True, timeout=600, check=False
    )


def adgen_model(stack: Stack, *args: str) -> dict[str, object]:
    proc = run_adgen_model(stack, *args)
    assert proc.returncode == 0, f"adgen model {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serving(stack: Stack) -> str | None:
    """The label the worker's adgen_ci_model_version gauge marks as served."""
    metrics = stack.workers["w1"].metrics()
    served = [k for k, v in metrics.items() if k.startswith("adgen_ci_model_version{") and v == 1]
    return served[0].split('version="')[1].split('"')[0] if len(served) == 1 else None


def wait_serving(stack: Stack, version: str) -> str:
    wait_for(lambda: (serving(stack) or "").startswith(f"{version}-"), 180, f"the worker to serve CI model {version}")
    return serving(stack) or ""


class QueryLoad:
    """Queries on the topic (3 every half second, unique ids) and on GET /search (1 every half second)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sent: list[str] = []
        self.http: list[tuple[int, str]] = []  # (status, model_version)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        port = self.stack.workers["w1"].web_port
        while not self.stop.is_set():
            n = len(self.sent)
            batch = [
                SearchQuery(event_id=f"e-q{n + i}", event_time=T0, query_id=f"q{n + i}", text=QUERIES[(n + i) % 6])
                for i in range(3)
            ]
            self.stack.produce(batch)
            self.sent += [q.query_id for q in batch]
            url = f"http://127.0.0.1:{port}/search?" + urllib.parse.urlencode({"q": QUERIES[n % 6]})
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    self.http.append((resp.status, json.loads(resp.read())["model_version"]))
            except urllib.error.HTTPError as exc:
                self.http.append((exc.code, ""))
            time.sleep(0.5)

    def __enter__(self) -> QueryLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_under_a_query_stream_the_worker_swaps_ci_models_refuses_a_corrupt_one_and_rolls_back(
    stack: Stack, tmp_path: Path
) -> None:
    registry = ModelRegistry(Path(stack.env["ADGEN_MODEL__CI_REGISTRY"]))
    ci_root = stack.assets.root / "var" / "index" / "ci"
    assert adgen_model(stack, "publish", "--kind", "ci", str(ci_root / "model"))["published"] == "v0001"
    v2_dir = train_lab_ci_model(tmp_path / "v2-train", seed=1).save(tmp_path / "v2")
    corrupt_dir = shutil.copytree(v2_dir, tmp_path / "corrupt")  # a flipped bit before publishing: sha256s agree
    weights = corrupt_dir / "lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    stack.start_worker("w1")
    v1 = wait_serving(stack, "v0001")  # the registry's current version, not the build's own model

    with QueryLoad(stack) as load:
        time.sleep(3)
        assert adgen_model(stack, "publish", "--kind", "ci", str(v2_dir))["published"] == "v0002"
        v2 = wait_serving(stack, "v0002")
        time.sleep(3)
        refused = run_adgen_model(stack, "publish", "--kind", "ci", str(corrupt_dir))
        assert refused.returncode == 2 and "sha256" in " ".join(refused.stderr.split())  # the CLI loads it first
        # a publisher that skipped that check: the registry's own sha256s agree, the LM's checksums do not
        assert registry.publish(corrupt_dir, {"kind": "ci", "source": "corrupt"}).version == "v0003"
        wait_for(
            lambda: stack.workers["w1"].metrics().get('adgen_ci_model_reloads_total{outcome="refused"}', 0) >= 1,
            120,
            "the corrupt CI model refused",
        )
        time.sleep(2)
    assert not load.thread.is_alive()

    r, keys = stack.redis(), stack.keys

    def answered() -> list[SearchResult]:
        raw = [r.hget(keys.search_result(q), "data") for q in load.sent]
        return [SearchResult.model_validate_json(x) for x in raw if x is not None]

    wait_for(lambda: len(answered()) == len(load.sent), 180, "every query of the stream answered")
    results = answered()
    assert len(load.sent) > 30 and len(results) == len(load.sent)
    assert all(res.ads and res.cis for res in results)
    assert {res.model_version for res in results} == {v1, v2}  # answered by v1, then v2, never by v3
    assert [res.model_version for res in results[-9:]] == [v2] * 9  # after the refusal: still v2
    assert load.http and all(status == 200 for status, _ in load.http), load.http
    assert {version for _, version in load.http} == {v1, v2}
    metrics = stack.workers["w1"].metrics()
    assert metrics.get('adgen_dead_letters_total{topic="search-queries"}', 0) == 0
    assert metrics.get('adgen_ci_model_reloads_total{outcome="loaded"}') == 1
    log = stack.workers["w1"].log_path.read_text(errors="replace")
    refusal = log.split("CI model version v0003 refused: ")
    assert len(refusal) == 2 and "sha256" in refusal[1].splitlines()[0] and "still serving v0002" in refusal[1]
    assert serving(stack) == v2 and "Traceback" not in log
    snapshots = ci_root / "snapshots"
    wait_for(lambda: load_latest_snapshot(snapshots).manifest.model_version == v2, 60, "a CI snapshot by v2")

    assert adgen_model(stack, "rollback", "--kind", "ci")["serving"] == "v0002"  # past the refused v3
    assert adgen_model(stack, "rollback", "--kind", "ci")["serving"] == "v0001"
    assert registry.current() == "v0001" and wait_serving(stack, "v0001") == v1
    stack.produce([SearchQuery(event_id="e-last", event_time=T0, query_id="q-last", text="glass beakers")])
    wait_for(lambda: r.hget(keys.search_result("q-last"), "data") is not None, 120, "the query after the rollback")
    assert SearchResult.model_validate_json(r.hget(keys.search_result("q-last"), "data")).model_version == v1
