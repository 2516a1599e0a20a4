"""The model registry: numbered immutable versions, a verified pointer, rollback, the retraining gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adgen.model.registry import INDEX_ADS_FILE, ModelRegistry, RegistryError
from adgen.model.retrain import RetrainError, judge


def checkpoint(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    return root


def test_versions_are_numbered_copies_with_checksums_and_the_pointer_follows_publishes(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.versions() == [] and registry.current() is None
    first = registry.publish(
        checkpoint(tmp_path / "a", b"weights-a"), {"source": "a"}, extra={INDEX_ADS_FILE: "ad1\nad2\n"}
    )
    second = registry.publish(checkpoint(tmp_path / "b", b"weights-b"), {"source": "retrain", "parent": "v0001"})
    assert (first.version, second.version) == ("v0001", "v0002")
    assert registry.versions() == ["v0001", "v0002"] and registry.current() == "v0002"
    assert set(first.files) == {"model.safetensors", "config.json", "tokenizer/tokenizer.json", INDEX_ADS_FILE}
    assert registry.index_ads("v0001") == {"ad1", "ad2"} and registry.index_ads("v0002") is None
    assert registry.verify("v0002") == tmp_path / "registry" / "v0002"
    assert registry.info("v0002").parent == "v0001"
    (tmp_path / "b" / "model.safetensors").write_bytes(b"changed after publishing")  # the source, not the copy
    registry.verify("v0002")
    assert not [p for p in (tmp_path / "registry").iterdir() if p.name.endswith(".tmp")]  # no half-published leftovers


def test_a_corrupt_a_truncated_and_a_smuggled_file_are_each_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish(checkpoint(tmp_path / "a", b"weights-a" * 100), {"source": "a"})
    root = registry.path_of("v0001")
    data = bytearray((root / "model.safetensors").read_bytes())
    data[10] ^= 0xFF
    (root / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=r"model\.safetensors does not match"):
        registry.verify("v0001")
    (root / "model.safetensors").write_bytes(b"weights-a" * 100)
    registry.verify("v0001")
    (root / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(RegistryError, match=r"lacks tokenizer/tokenizer\.json"):
        registry.verify("v0001")
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    (root / "extra.bin").write_bytes(b"?")
    with pytest.raises(RegistryError, match="does not record"):
        registry.verify("v0001")


def test_rollback_walks_back_the_served_history_and_use_pins_a_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for name in "abc":
        registry.publish(checkpoint(tmp_path / name, name.encode()), {"source": name})
    assert registry.pointer().history == ["v0001", "v0002", "v0003"]
    assert registry.rollback().version == "v0002"
    assert registry.current() == "v0002" and registry.pointer().history == ["v0001", "v0002"]
    assert registry.use("v0003").history == ["v0001", "v0002", "v0003"]
    assert registry.use("v0001").history == ["v0002", "v0003", "v0001"]  # a version appears once, last = served
    registry.rollback()
    registry.rollback()
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    with pytest.raises(RegistryError, match="not a version name"):
        registry.use("latest")
    pointer = json.loads((tmp_path / "registry" / "current.json").read_text())
    assert pointer["version"] == "v0002"


def test_rollback_refuses_to_point_at_a_corrupt_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish(checkpoint(tmp_path / "a", b"a"), {"source": "a"})
    registry.publish(checkpoint(tmp_path / "b", b"b"), {"source": "b"})
    (registry.path_of("v0001") / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match=r"config\.json does not match"):
        registry.rollback()
    assert registry.current() == "v0002"


def test_publishing_without_making_it_current_leaves_workers_where_they_are(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish(checkpoint(tmp_path / "a", b"a"), {"source": "a"})
    registry.publish(checkpoint(tmp_path / "b", b"b"), {"source": "b"}, make_current=False)
    assert registry.current() == "v0001" and registry.versions() == ["v0001", "v0002"]


def test_the_gate_publishes_only_a_candidate_that_is_not_worse() -> None:
    parent, same, better, worse = {"ndcg@10": 0.30}, {"ndcg@10": 0.30}, {"ndcg@10": 0.31}, {"ndcg@10": 0.2999}
    assert judge(parent, same, "ndcg@10", 0.0).passed
    assert judge(parent, better, "ndcg@10", 0.0).passed
    assert not judge(parent, worse, "ndcg@10", 0.0).passed
    assert not judge(parent, better, "ndcg@10", 0.05).passed  # a margin asks for a real improvement
    gate = judge(parent, worse, "ndcg@10", 0.0)
    assert (gate.parent, gate.candidate) == (0.30, 0.2999) and "worse than" in gate.reason
    with pytest.raises(RetrainError, match="was not computed"):
        judge(parent, better, "map@10", 0.0)
