"""Swapping the search path's CI model: one serving state per batch, the reloader's checks, the restart path.

Real parts throughout: CI models trained in seconds (tests/ci_builds.py), a real registry on disk, the
reloader's own `check()` and the worker's own `load_search`; no server is needed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from ci_builds import CIS, train_lab_ci_model, write_ci_build
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from typer.testing import CliRunner

from adgen.cli import app
from adgen.core.config import ModelSettings, PathSettings, Settings
from adgen.model.lm import LMConfig, build_lm
from adgen.model.registry import ModelRegistry
from adgen.processors.ci_reload import CIModelReloader
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.query_retrieval import SearchService, ServingState
from adgen.processors.worker_app import WorkerSetupError, load_search
from adgen.search.ci_index import load_latest_snapshot
from adgen.search.ci_model import CIModel, CIModelConfig
from adgen.search.ci_serving import CIQueryMapper

HEAD = {"nitrile gloves": 5, "glass beakers": 3}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    """<root>/index/ci: the build (v1's model, a snapshot whose head cache v1 answered); <root>/v2: another
    model of the same tokenizer; <root>/unknown_words: a model whose tokenizer cannot write 'glass beakers'."""
    root = tmp_path_factory.mktemp("ci-swap")
    ci_root = root / "index" / "ci"
    write_ci_build(ci_root)
    service = SearchService.from_build(ci_root)
    service.build_head_cache(HEAD, size=len(HEAD))
    service.save_snapshot(ci_root / "snapshots")
    train_lab_ci_model(root / "v2-train", seed=1).save(root / "v2")
    return {"root": root, "ci": ci_root, "v2": root / "v2", "unknown_words": unknown_words_model(root / "unknown")}


def unknown_words_model(out: Path) -> Path:
    """A CI model with a word-level tokenizer that lacks 'beakers' (an <unk> in the CI 'glass beakers')."""
    words = ["<pad>", "<s>", "</s>", "<unk>", "nitrile", "gloves", "glass", "digital", "multimeter", "intent", ":"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    lm = build_lm(LMConfig(vocab_size=len(words), hidden_size=32, num_layers=1, num_heads=2, max_positions=160))
    return CIModel(tokenizer, lm, CIModelConfig(vocab_size=320)).save(out)


@pytest.fixture
def service(built: dict[str, Path]) -> SearchService:
    """The build served by its own model, head cache included (a fresh one per test)."""
    return SearchService.from_build(built["ci"])


@pytest.fixture
def registry(tmp_path: Path, built: dict[str, Path]) -> ModelRegistry:
    """A CI registry whose v0001 is the build's model (served, like a worker that started on it)."""
    registry = ModelRegistry(tmp_path / "ci-registry")
    registry.publish(built["ci"] / "model", {"kind": "ci", "source": "build"})
    return registry


def reloader_for(registry: ModelRegistry, service: SearchService, metrics: WorkerMetrics) -> CIModelReloader:
    return CIModelReloader(registry, registry.current(), service, CIModel.load, metrics, interval_s=1.0)


def fresh_answers(model: CIModel, service: SearchService, queries: list[str]) -> dict[str, dict[int, float]]:
    """What `model` answers for `queries` over the service's CI set, computed independently of any state."""
    mapper = CIQueryMapper(model, model.ci_trie(service.index.ci_set), service.index.ci_set, service.config)
    return dict(zip(queries, mapper(queries), strict=True))


def metric(metrics: WorkerMetrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_batch_reads_the_state_once_so_a_swap_never_mixes_two_models(service: SearchService, built) -> None:
    v1 = service.state
    v2 = service.state_for(CIModel.load(built["v2"]))
    entered, release = threading.Event(), threading.Event()

    class Blocking(CIQueryMapper):  # v1's decoding of a miss, held until the swap has happened
        def __call__(self, normalised: Any) -> list[dict[int, float]]:
            entered.set()
            assert release.wait(30)
            return super().__call__(normalised)

    held = Blocking(v1.model, v1.trie, service.index.ci_set, service.config)
    service.swap_model(ServingState(v1.model, v1.trie, held, v1.head_cache))
    results: list[Any] = []
    batch = threading.Thread(
        target=lambda: results.extend(service.search_batch(["digital multimeter", "nitrile gloves"]))
    )
    batch.start()
    assert entered.wait(30)
    service.swap_model(v2)  # between the batch's read of the state and its answers
    release.set()
    batch.join(30)
    assert [r.source for r in results] == ["model", "cache"]
    assert {r.model_version for r in results} == {v1.model.model_version}  # the whole batch is v1's
    assert {c.ci_id: c.prob for c in results[1].cis} == v1.head_cache["nitrile gloves"]  # v1's cached answer
    assert v1.head_cache["nitrile gloves"] != v2.head_cache["nitrile gloves"]  # ... which v2's is not
    after = service.search("digital multimeter")
    assert after.model_version == v2.model.model_version != v1.model.model_version
    assert service.model is v2.model and service.trie is v2.trie and service.mapper is v2.mapper


def test_a_good_version_is_swapped_in_with_a_head_cache_it_answered_and_snapshots_record_it(
    service: SearchService, registry: ModelRegistry, built, tmp_path: Path
) -> None:
    metrics = WorkerMetrics()
    reloader = reloader_for(registry, service, metrics)
    v1_label = service.model_version
    assert v1_label.startswith("model-") and set(service.head_cache) == set(HEAD)
    registry.publish(built["v2"], {"kind": "ci", "source": "v2"})
    assert asyncio.run(reloader.check()) == "v0002"
    v2 = service.model
    assert service.model_version.startswith("v0002-") and v2.fingerprint() == CIModel.load(built["v2"]).fingerprint()
    assert service.head_cache == fresh_answers(v2, service, list(HEAD))  # answered again, by v2
    hit = service.search("Nitrile Gloves")
    assert hit.source == "cache" and hit.model_version == service.model_version
    assert metric(metrics, "adgen_ci_model_version", {"version": service.model_version}) == 1
    assert metric(metrics, "adgen_ci_model_version", {"version": v1_label}) == 0
    assert metric(metrics, "adgen_ci_model_reloads_total", {"outcome": "loaded"}) == 1
    assert metric(metrics, "adgen_model_reloads_total", {"outcome": "loaded"}) is None  # LEADRE's stay apart
    snapshot = load_latest_snapshot(service.save_snapshot(tmp_path / "snapshots").parent)
    assert snapshot.manifest.model_version == service.model_version
    assert snapshot.manifest.tokenizer_fingerprint == v2.fingerprint()
    assert snapshot.head_cache == {q: {str(ci): p for ci, p in cis.items()} for q, cis in service.head_cache.items()}
    registry.rollback()
    assert asyncio.run(reloader.check()) == "v0001" and service.model_version.startswith("v0001-")
    assert asyncio.run(reloader.check()) is None  # nothing new: no reload


def test_a_corrupted_version_is_refused_by_sha256_once_and_the_current_one_keeps_serving(
    service: SearchService, registry: ModelRegistry, built, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = WorkerMetrics()
    reloader = reloader_for(registry, service, metrics)
    before = service.state
    bad = registry.publish(built["v2"], {"kind": "ci", "source": "v2"}).version
    weights = registry.path_of(bad) / "lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(reloader.check()) is None
        assert asyncio.run(reloader.check()) is None  # refused once, not retried while the pointer stays
    assert "sha256" in reloader.refused[bad]
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert (
        len(lines) == 1
        and lines[0].startswith(f"CI model version {bad} refused: ")
        and "still serving v0001" in lines[0]
    )
    assert service.state is before and service.search("glass beakers").model_version == before.model.model_version
    assert metric(metrics, "adgen_ci_model_reloads_total", {"outcome": "refused"}) == 1


def test_a_model_whose_tokenizer_cannot_write_a_live_ci_is_refused_with_the_ci_named(
    service: SearchService, registry: ModelRegistry, built
) -> None:
    reloader = reloader_for(registry, service, WorkerMetrics())
    before = service.state
    bad = registry.publish(built["unknown_words"], {"kind": "ci", "source": "unknown words"}).version
    assert asyncio.run(reloader.check()) is None
    reason = reloader.refused[bad]
    assert "cannot represent the live CI set" in reason and "'glass beakers'" in reason, reason
    assert service.state is before


def test_a_version_of_another_kind_is_refused_by_the_ci_reloader(
    service: SearchService, registry: ModelRegistry, built
) -> None:
    reloader = reloader_for(registry, service, WorkerMetrics())
    before = service.state
    wrong = registry.publish(built["v2"], {"source": "v2 published as a LEADRE model"}).version  # kind: leadre
    assert asyncio.run(reloader.check()) is None
    assert "it is a leadre model, this registry serves ci models" in reloader.refused[wrong]
    assert service.state is before


def test_a_restarted_worker_serves_the_ci_registrys_current_version_or_refuses_to_start(
    registry: ModelRegistry, built
) -> None:
    def settings(ci_registry: Path | None) -> Settings:
        return Settings(paths=PathSettings(index=built["root"] / "index"), model=ModelSettings(ci_registry=ci_registry))

    own = load_search(settings(None))
    assert own is not None and own.model_version.startswith("model-")
    assert own.head_cache == fresh_answers(own.model, own, list(HEAD))  # the build's cache, v1's answers
    registry.publish(built["v2"], {"kind": "ci", "source": "v2"})
    restarted = load_search(settings(registry.root))
    assert restarted is not None and restarted.model_version.startswith("v0002-")
    # the snapshot's head cache was v1's: the restarted worker's comes from the version it serves
    assert restarted.head_cache == fresh_answers(restarted.model, restarted, list(HEAD))
    registry.publish(built["unknown_words"], {"kind": "ci", "source": "unknown words"})
    with pytest.raises(WorkerSetupError, match=r"'glass beakers'.*adgen model rollback --kind ci"):
        load_search(settings(registry.root))


def test_adgen_model_publishes_lists_and_rolls_back_ci_versions(built, tmp_path: Path) -> None:
    env = {"ADGEN_PATHS__INDEX": str(built["root"] / "index"), "ADGEN_PATHS__MODELS": str(tmp_path / "models")}
    runner = CliRunner()

    def adgen(*args: str) -> Any:
        return runner.invoke(app, ["model", *args], env=env)

    assert adgen("publish", "--kind", "ci", str(built["ci"] / "model")).exit_code == 0
    assert adgen("publish", "--kind", "ci", str(built["v2"])).exit_code == 0
    refused = adgen("publish", "--kind", "ci", str(built["unknown_words"]))
    assert refused.exit_code == 2 and "'glass beakers'" in " ".join(refused.output.split())  # rich wraps lines
    registry = ModelRegistry(tmp_path / "models" / "ci-registry")  # the default next to <paths.models>/registry
    assert registry.versions() == ["v0001", "v0002"] and registry.current() == "v0002"
    info = registry.info("v0002")
    v2 = CIModel.load(built["v2"])
    assert info.kind == "ci" and info.data == {
        "tokenizer_fingerprint": v2.fingerprint(),
        "ci_version": "restart-test",
        "num_cis": len(CIS),
    }
    listed = adgen("list", "--kind", "ci")
    assert listed.exit_code == 0 and "CI model registry" in listed.output and "v0002" in listed.output
    assert adgen("rollback", "--kind", "ci").exit_code == 0 and registry.current() == "v0001"
    assert not (tmp_path / "models" / "registry").exists()  # the LEADRE registry untouched
