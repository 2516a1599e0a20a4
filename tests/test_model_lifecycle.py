"""The model's life in production, end to end on a real broker, redis-server and `adgen` subprocesses:

1. `adgen init`, exactly as docker-compose.yml's `init` service runs it (smaller world, a tiny training
   config), makes a volume a worker starts from with no other step; a second run changes nothing;
2. a world replayed through that worker, then `adgen retrain` from what the worker stored (the window
   changelog and the live index; the world's files are out of reach) publishes a gated version with metrics;
3. the worker, under a steady stream of requests, swaps versions with no lost or failed request, refuses a
   corrupt version and an incompatible one while it keeps serving, and `adgen model rollback` takes it back.

The first version is trained by init; the retraining test warm-starts from an untrained model with the same
recipe, so "the candidate beats its parent on the hold-out" is a real learning signal the gate must see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # the shared worker harness

from stack import ADGEN, Assets, Stack, wait_for

from adgen.index.semantic_ids import sid_vocabulary
from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot
from adgen.model.checkpoint_layout import CheckpointLayout
from adgen.model.lm import LMConfig, build_lm, save_lm
from adgen.model.recipe import load_recipe, save_recipe
from adgen.model.registry import ModelRegistry
from adgen.model.tokenizer import load_tokenizer, save_tokenizer, token_offset
from adgen.processors.feature_store import UserAds
from adgen.processors.generation import write_untrained_checkpoint
from adgen.streams.events import AdClick, AdRequest, AdUpsert

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
USERS, ADS = 150, 80
TINY_TRAINING = {  # the compose init trains configs/demo.yaml; the same stages, sized for a test
    "name": "init-test",
    "out_dir": "unused",
    "seed": 0,
    "data": {"source": "world", "path": "unused"},
    "tokenizer": {"vocab_size": 512},
    "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_positions": 256},
    "prompts": {"layout": "sequence", "max_prompt_tokens": 224},
    "tasks": {"curriculum": "ex+main"},
    "train": {"stage_epochs": {"ex+main": 2}, "batch_size": 32, "torch_threads": 1, "valid_users": 20, "lr": 0.003},
    "eval": {"max_users": 20, "beams": 5, "baselines": []},
    "dpo": {"enabled": False},
}


@dataclass
class Volume:
    root: Path
    env: dict[str, str]  # the init service's environment, /app/var -> root/var
    init_argv: list[str]
    first_run: dict[str, Any]

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(Path(self.env["ADGEN_MODEL__REGISTRY"]))


def compose_service(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]


def on_volume(env: dict[str, Any], root: Path) -> dict[str, str]:
    return {k: str(v).replace("/app/var", str(root / "var")) for k, v in env.items()}


def with_options(argv: list[str], values: dict[str, str]) -> list[str]:
    """The compose command with the values of some of its options replaced (each must be there already)."""
    argv = list(argv)
    for option, value in values.items():
        argv[argv.index(option) + 1] = value
    return argv


def run_adgen(argv: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON document a command printed last (rich may wrap it over several lines)."""
    start = stdout.rfind("\n{")
    return json.loads(stdout[start + 1 :] if start >= 0 else stdout)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    root = tmp_path_factory.mktemp("volume")
    init = compose_service("init")
    env = {**os.environ, **on_volume(init["environment"], root), "ADGEN_MODEL__SEED": "0"}
    config = root / "tiny_training.yaml"
    config.write_text(yaml.safe_dump(TINY_TRAINING))
    command = with_options(init["command"], {"--users": str(USERS), "--ads": str(ADS), "--train-config": str(config)})
    assert command[:2] == ["adgen", "init"]
    argv = [ADGEN, *command[1:]]
    first = run_adgen(argv, env)
    return Volume(root, env, argv, json.loads(first.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def stack(volume: Volume) -> Iterator[Stack]:
    worker_env = on_volume(compose_service("worker")["environment"], volume.root)
    paths = {k: v for k, v in worker_env.items() if k.startswith(("ADGEN_PATHS__", "ADGEN_MODEL__"))}
    assets = Assets(volume.root, volume.root / "var" / "world", volume.root / "no-checkpoint")
    s = Stack.start(
        assets,
        volume.root / "stack",
        **paths,
        ADGEN_MODEL__RELOAD_INTERVAL_S="1",
        ADGEN_WORKER__SNAPSHOT_INTERVAL_S="5",  # the live index (ads added by the replay) reaches disk soon
        ADGEN_MODEL__TOP_K="10",
        ADGEN_MODEL__BEAMS="10",
    )
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def replayed(stack: Stack) -> None:
    """The world replayed through a running worker (started here unless an earlier test did), so each test that
    needs stored behaviour also runs alone (-k)."""
    if "w1" not in stack.workers:
        stack.start_worker("w1")
    assert stack.produce_world(0).wait(timeout=300) == 0


def serving(stack: Stack, name: str = "w1") -> str | None:
    """The version label the worker's adgen_model_version gauge marks as served."""
    metrics = stack.workers[name].metrics()
    served = [k for k, v in metrics.items() if k.startswith("adgen_model_version{") and v == 1]
    return served[0].split('version="')[1].split('"')[0] if len(served) == 1 else None


def worker_log(stack: Stack, name: str = "w1") -> str:
    return stack.workers[name].log_path.read_text(errors="replace")


def publish(stack: Stack, checkpoint: Path, *extra: str) -> str:
    proc = run_adgen([ADGEN, "model", "publish", str(checkpoint), *extra], stack.env)
    return json.loads(proc.stdout.strip().splitlines()[-1])["published"]


def untrained_like(volume: Volume, directory: Path, base: str, seed: int) -> Path:
    """A random-initialised model with the tokenizer and recipe of version `base` (so it fits the live index)."""
    layout = CheckpointLayout.of(volume.registry.path_of(base))
    tokenizer = load_tokenizer(layout.tokenizer_dir)
    size = TINY_TRAINING["model"]
    config = LMConfig(
        vocab_size=len(tokenizer),
        hidden_size=size["hidden_size"],
        num_layers=size["num_layers"],
        num_heads=size["num_heads"],
        max_positions=size["max_positions"],
        seed=seed,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    save_lm(build_lm(config), directory)
    save_tokenizer(tokenizer, directory)
    assert layout.recipe_dir is not None
    save_recipe(load_recipe(layout.recipe_dir), directory)
    (directory / "UNTRAINED").write_text("random initialisation\n")
    return directory


def other_tokenizer(volume: Volume, directory: Path) -> Path:
    """A model whose tokenizer holds every S-ID token, at another id than the live trie's (another corpus)."""
    index = read_index_snapshot(SnapshotStore(Path(volume.env["ADGEN_PATHS__INDEX"]), INDEX_KIND).latest())
    vocabulary = sid_vocabulary(index.sid_map.codebook_sizes)
    write_untrained_checkpoint(directory, vocabulary, ["a few words of another corpus"] * 3)
    served = load_tokenizer(CheckpointLayout.of(volume.registry.path_of("v0001")).tokenizer_dir)
    assert token_offset(load_tokenizer(directory / "tokenizer"), vocabulary) != token_offset(served, vocabulary)
    return directory


def test_the_compose_init_sequence_makes_a_volume_a_worker_serves_from(volume: Volume, stack: Stack) -> None:
    registry = volume.registry
    assert volume.first_run["published_now"] and volume.first_run["model_version"] == "v0001"
    info = registry.info("v0001")
    assert info.index is not None and info.index.live_ads >= ADS and not info.data["untrained"]
    assert info.recipe is not None and info.recipe["prompts"]["layout"] == "sequence"  # trained by init, not random
    again = json.loads(run_adgen(volume.init_argv, volume.env).stdout.strip().splitlines()[-1])
    assert again["published_now"] is False and registry.versions() == ["v0001"]  # a second `up` changes nothing
    stack.start_worker("w1")  # waits for the live index; the model comes from the registry alone
    assert (serving(stack) or "").startswith("v0001-")


def test_retrain_from_what_the_worker_stored_publishes_a_gated_version(
    volume: Volume, stack: Stack, replayed: None
) -> None:
    registry = volume.registry
    # the world's own added ads are in v0001 already (init trains on the world's whole catalogue), so the replay
    # brings ads no version has seen: copies of catalogue ads under new ids, as an advertiser's new campaign would
    known = registry.index_ads("v0001") or set()
    catalogue = [json.loads(line) for line in (volume.root / "var/world/catalogue/items.jsonl").open()]
    fresh = [
        AdUpsert(
            event_id=f"fresh-{n}",
            event_time=datetime.now(UTC),
            ad_id=f"fresh{n:03d}",
            name=f"{item['title']} (new campaign)",
            category_path=item["categories"] or ["Other"],
            brand=item.get("brand", ""),
            description=item.get("description", ""),
            ecpm=10.0,
        )
        for n, item in enumerate(catalogue[:3])
    ]
    assert not {a.ad_id for a in fresh} & known
    stack.produce(fresh)
    wait_for(lambda: not stack.mismatches(require_lists=False), 240, "the replayed windows in Redis")
    replayed = datetime.now(UTC)
    snapshots = SnapshotStore(Path(volume.env["ADGEN_PATHS__INDEX"]), INDEX_KIND)
    wait_for(
        lambda: snapshots.latest().manifest.created_at > replayed + timedelta(seconds=1), 60, "a fresh worker snapshot"
    )
    live = read_index_snapshot(snapshots.latest())
    added = set(live.sid_map.items()) - (registry.index_ads("v0001") or set())
    assert added, "the replay adds ads to the live index: the retraining must see them"
    # parent: an untrained model with v0001's recipe, served by the running worker
    parent = publish(stack, untrained_like(volume, volume.root / "untrained", "v0001", seed=1))
    wait_for(lambda: (serving(stack) or "").startswith(f"{parent}-"), 120, f"the worker to serve {parent}")
    env = {**stack.env, "ADGEN_PATHS__WORLD": str(volume.root / "no-world-here")}  # only what the system stored
    # the gate demands a clear gain over the random parent (about 0.05 NDCG@10 on this world, sd ~0.02 over the
    # 96 hold-out users); 6 epochs gave +0.05 with training seeds 0 and 1 (one stack run)
    argv = [ADGEN, "retrain", "--epochs", "6", "--lr", "0.003", "--margin", "0.02", "--eval-users", "200"]
    proc = run_adgen([*argv, "--torch-threads", "1"], env)
    report = last_json(proc.stdout)
    assert report["parent"] == parent and report["gate"]["passed"], report  # the whole report: scores, losses
    version = report["published"]
    assert version == registry.current() and version != parent
    info = registry.info(version)
    assert info.parent == parent and info.source == "retrain" and info.gate is not None and info.gate.passed
    assert info.scores["candidate"]["ndcg@10"] > info.scores["parent"]["ndcg@10"]  # learned from stored behaviour
    assert info.gate.candidate == info.scores["candidate"]["ndcg@10"]
    assert info.data["windows"] == len(stack.expected_windows())  # every stored user, from the changelog
    assert info.data["users_with_holdout"] >= USERS // 2 and info.data["layout"] == "sequence"
    # each user's sequence keeps ad targets within the prompt budget (with a 96-token budget, 6 of the 96 hold-out
    # users' sequences did, and the "retrained" model learnt alignment alone)
    assert info.data["user_samples"] >= 0.9 * info.data["users_with_holdout"]
    assert info.data["alignment_examples"] > 0 and info.data["catalogue_entries"] >= ADS
    assert added <= (registry.index_ads(version) or set())  # trained against the live index, new ads included
    assert info.index is not None and info.index.rqvae_version == registry.info("v0001").index.rqvae_version
    assert info.recipe == registry.info(parent).recipe
    registry.verify(version)


def test_under_load_the_worker_swaps_versions_refuses_bad_ones_and_rolls_back(
    volume: Volume, stack: Stack, replayed: None
) -> None:
    registry = volume.registry
    start = registry.current()
    wait_for(lambda: (serving(stack) or "").startswith(f"{start}-"), 120, f"the worker to serve {start}")
    users = sorted(stack.expected_windows())
    ads = sorted(
        read_index_snapshot(SnapshotStore(Path(volume.env["ADGEN_PATHS__INDEX"]), INDEX_KIND).latest()).sid_map.items()
    )
    stop, sent = threading.Event(), [0]

    def load() -> None:  # every user clicks and requests again, round after round, ~30 requests/s
        at = datetime(2031, 6, 1, tzinfo=UTC)
        while not stop.is_set():
            batch = []
            for user in users[sent[0] % len(users) : sent[0] % len(users) + 15]:
                n = sent[0]
                batch.append(
                    AdClick(
                        event_id=f"load-c{n}",
                        event_time=at + timedelta(seconds=n),
                        user_id=user,
                        ad_id=ads[n % len(ads)],
                    )
                )
                batch.append(
                    AdRequest(event_id=f"load-r{n}", event_time=at + timedelta(seconds=n, milliseconds=1), user_id=user)
                )
                sent[0] += 1
            stack.produce(batch)
            time.sleep(0.5)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        time.sleep(3)
        generated_before = stack.workers["w1"].metrics().get("adgen_generations_total", 0)
        other = publish(stack, untrained_like(volume, volume.root / "other", start, seed=2))
        wait_for(lambda: (serving(stack) or "").startswith(f"{other}-"), 120, f"the swap to {other}")
        time.sleep(3)
        generated_after = stack.workers["w1"].metrics().get("adgen_generations_total", 0)

        corrupt_dir = untrained_like(volume, volume.root / "corrupt", start, seed=3)  # corrupted before publishing
        weights = corrupt_dir / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        corrupt = publish(stack, corrupt_dir)
        incompatible = publish(stack, other_tokenizer(volume, volume.root / "incompatible"))
        wait_for(
            lambda: stack.workers["w1"].metrics().get('adgen_model_reloads_total{outcome="refused"}', 0) >= 2,
            120,
            "the refusals",
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    log = worker_log(stack)
    assert (
        f"model version {corrupt} refused" in log and "sha256" in log.split(f"model version {corrupt} refused")[1][:400]
    )
    assert (
        f"model version {incompatible} refused" in log
        and "token" in log.split(f"model version {incompatible} refused")[1][:400]
    )
    assert (serving(stack) or "").startswith(f"{other}-")  # still serving the last good version
    assert sent[0] > 100 and generated_after > generated_before  # the swap happened while requests flowed
    # no lost or failed request: every user's newest list reflects the whole window, nothing was dropped
    stack.converge(240)
    metrics = stack.workers["w1"].metrics()
    assert metrics.get("adgen_generation_dropped_total", 0) == 0 and stack.workers["w1"].alive()
    assert "Traceback" not in worker_log(stack)
    r = stack.redis()
    labels = {UserAds.model_validate_json(r.hget(stack.keys.user_ads(u), "data")).model_version for u in users}
    assert labels == {serving(stack)}  # the newest lists all come from the version being served
    # rollback: the pointer walks back past the refused versions to `other`, then to `start`
    run_adgen([ADGEN, "model", "rollback"], stack.env)
    run_adgen([ADGEN, "model", "rollback"], stack.env)
    assert registry.current() == other
    run_adgen([ADGEN, "model", "rollback"], stack.env)
    assert registry.current() == start
    wait_for(lambda: (serving(stack) or "").startswith(f"{start}-"), 120, f"the rollback to {start}")
