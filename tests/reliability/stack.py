"""A whole adgen stack for fault injection and soak runs: a seeded world, a built index, an untrained
(valid-but-meaningless) checkpoint, a dedicated Tansu broker + redis-server, and `adgen worker`
subprocesses that can be killed, restarted and run two at a time in one consumer group.

The oracle is the events themselves: `expected_windows()` replays every good event through the pure
window logic, and `mismatches()` compares each user's Redis features (and newest ad list) with it. A lost
event shows as a short window, a double-applied one as a wrong count or fingerprint.
Also used by bench/soak.py (imported by path), so it holds no pytest code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition

from adgen.core.config import Settings
from adgen.index.semantic_ids import sid_vocabulary
from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot
from adgen.processors.feature_store import UserAds
from adgen.processors.generation import write_untrained_checkpoint
from adgen.processors.redis_keys import RedisKeys
from adgen.processors.window_changelog import CONTROL_PREFIX
from adgen.processors.window_consumer import BATCH_SIZE, group_id
from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
from adgen.runtime import EmbeddedRuntime, runtime_env
from adgen.runtime.processes import free_port
from adgen.streams.events import USER_BEHAVIOR_ADAPTER, AdClick, AdRequest, ContentPlay
from adgen.streams.producer import EventProducer
from adgen.streams.topics import USER_BEHAVIOR, WINDOW_CHANGELOG, topic_name

ADGEN = str(Path(sys.executable).with_name("adgen"))


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> float:
    """Seconds until `check()` held; AssertionError naming `what` on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if check():
                return time.monotonic() - started
        except (OSError, ValueError, redis.RedisError):
            pass
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def scrape(port: int) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (summed per name under 'name')."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        out[name_labels] += float(value)
        out[name_labels.split("{", 1)[0]] += float(value)
    return dict(out)


@dataclass
class Assets:
    """What a worker needs on disk (built once, reused by every stack)."""

    root: Path
    world: Path
    checkpoint: Path

    def env(self) -> dict[str, str]:
        var = self.root / "var"
        return {
            "ADGEN_PATHS__INDEX": str(var / "index"),
            "ADGEN_PATHS__MODELS": str(var / "models"),
            "ADGEN_PATHS__EMBEDDING_CACHE": str(var / "cache"),
            "ADGEN_MODEL__CHECKPOINT": str(self.checkpoint),
            "HF_HUB_OFFLINE": "1",
        }


def build_assets(root: Path, users: int = 20, ads: int = 40, seed: int = 7) -> Assets:
    """World -> index -> untrained checkpoint (about a minute on a busy 2-core box)."""
    root.mkdir(parents=True, exist_ok=True)
    world = root / "world"
    assets = Assets(root, world, root / "ckpt")
    env = {**os.environ, **assets.env()}
    generate = ["world", "generate", "--users", str(users), "--ads", str(ads), "--queries", "5", "--seed", str(seed)]
    subprocess.run(
        [ADGEN, *generate, "--out", str(world)],
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        [ADGEN, "index", "build", "--world", str(world), "--epochs", "20"], env=env, check=True, capture_output=True
    )
    snap = read_index_snapshot(SnapshotStore(root / "var" / "index", INDEX_KIND).latest())
    with open(world / "catalogue/items.jsonl") as f:
        titles = [json.loads(line)["title"] for line in f]
    write_untrained_checkpoint(assets.checkpoint, sid_vocabulary(snap.sid_map.codebook_sizes), titles * 3)
    return assets


def read_topic(bootstrap: str, topic: str, partitions: int, idle_polls: int = 6) -> list[Any]:
    """Every record of `topic` from offset 0 (a fresh reader, no group offsets), until it is idle."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Any] = []
    idle, deadline = 0, time.monotonic() + 60
    while (idle < idle_polls or not records) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error() is not None:
            idle += 1
            continue
        idle = 0
        records.append(msg)
    consumer.close()
    return records


@dataclass(frozen=True)
class KillCheck:
    """What a SIGKILL interrupted, read from the broker right after it (the worker can no longer commit).

    `uncommitted` are events folded into window rows acknowledged on the changelog, at input offsets at or
    past the group's committed offset: processed but not committed, so delivered again on restart.
    `in_flight` are those produced after the killed worker started, so folded by it: its batch had passed
    decode, fold and the changelog, and the kill landed before its commit. `in_flight_marker` is what the
    worker itself reported in flight (`adgen_window_uncommitted_events`) in its last scrape before the kill.
    """

    committed: dict[int, int]
    uncommitted: list[str]
    in_flight: list[str]
    in_flight_marker: float = 0.0

    @property
    def landed_in_batch(self) -> bool:
        return bool(self.in_flight)

    @property
    def redeliveries(self) -> int:
        return len(self.uncommitted)


#: The worker's batch markers (processors/window_consumer.py): commits so far, and the good events of the batch
#: in flight (on the changelog, offsets not committed yet).
WINDOW_COMMITS = "adgen_window_commits_total"
IN_FLIGHT = "adgen_window_uncommitted_events"

#: Re-deliveries after one kill are bounded by what one worker has processed but not committed: every batch
#: commits at its end (a failed commit is retried with the next), so at most one batch of this many events.
REDELIVERY_BOUND = BATCH_SIZE


@dataclass
class WorkerProc:
    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    web_port: int = 0
    started_at: float = field(default_factory=time.time)
    last_metrics: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        self.last_metrics = scrape(self.metrics_port)
        return self.last_metrics

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Stack:
    """One broker + one redis-server (dedicated to this stack) and any number of workers."""

    assets: Assets
    root: Path
    runtime: EmbeddedRuntime
    settings: Settings
    env: dict[str, str]
    workers: dict[str, WorkerProc] = field(default_factory=dict)
    extra_events: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    runs: int = 0
    converges: int = 0
    #: when set, the oracle folds only these event ids (the ones the broker still holds; see broker_lost_events)
    only_events: set[str] | None = None

    @classmethod
    def start(cls, assets: Assets, root: Path, broker: Callable[[Path], Any] | None = None, **env: str) -> Stack:
        """`broker(log_path)` replaces the in-memory Tansu (e.g. adgen.runtime.s3.TansuS3Broker)."""
        root.mkdir(parents=True, exist_ok=True)
        runtime = EmbeddedRuntime(Settings(), root / "runtime")
        if broker is not None:
            runtime.broker = broker(root / "runtime" / "tansu.log")
        settings = runtime.start()
        full_env = {
            **os.environ,
            **assets.env(),
            **runtime_env(settings),
            "ADGEN_REDIS__RETRY_BACKOFF_S": "0.1",
            "ADGEN_MODEL__TOP_K": "5",
            "ADGEN_MODEL__BEAMS": "5",
            "ADGEN_WORKER__LOG_LEVEL": "WARNING",
            "ADGEN_BUDGET__MIN_REGEN_INTERVAL_S": "0",
            **env,
        }
        return cls(assets, root, runtime, settings, full_env)

    def stop(self) -> None:
        for name in list(self.workers):
            self.kill(name, signal.SIGTERM)
        self.runtime.stop()

    # -- workers -------------------------------------------------------------------------------------------
    def start_worker(self, name: str = "w1", wait: bool = True, **env: str) -> WorkerProc:
        """`adgen worker` with its own state dir (RocksDB) and metrics port; waits until its index is live."""
        self.runs += 1
        port, web_port = free_port(), free_port()
        log_path = self.root / f"worker-{name}-{self.runs}.log"
        worker_env = {
            **self.env,
            "ADGEN_PATHS__STATE": str(self.root / f"state-{name}"),
            "ADGEN_WORKER__METRICS_PORT": str(port),
            "ADGEN_WORKER__WEB_PORT": str(web_port),
            **env,
        }
        with open(log_path, "wb") as log:
            process = subprocess.Popen([ADGEN, "worker"], env=worker_env, stdout=log, stderr=log)
        worker = WorkerProc(name, process, port, log_path, web_port)
        self.workers[name] = worker
        if wait:
            self.wait_started(worker)
        return worker

    def wait_started(self, worker: WorkerProc, timeout_s: float = 600) -> None:
        """Until the worker's live index holds ads (it serves from then on); fails if the worker exits.
        Generous: a niced worker on a 2-core box shared with un-niced training took over 4 minutes."""

        def up() -> bool:
            if not worker.alive():
                raise AssertionError(f"worker {worker.name} exited: {worker.log_path.read_text()[-3000:]}")
            return worker.metrics().get("adgen_index_live_ads", 0) > 0

        wait_for(up, timeout_s, f"worker {worker.name} start-up")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> WorkerProc:
        worker = self.workers.pop(name)
        if worker.alive():
            with contextlib.suppress(OSError):  # keep its last counters for the report
                worker.metrics()
            worker.process.send_signal(sig)
            try:
                worker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a stuck shutdown must not leave the worker behind
                worker.process.kill()
                worker.process.wait(timeout=30)
        return worker

    # -- events --------------------------------------------------------------------------------------------
    def produce_world(self, rate: float) -> subprocess.Popen[bytes]:
        """Replay the world's topics at `rate` events/s in the background (`adgen produce`)."""
        return subprocess.Popen(
            [ADGEN, "produce", str(self.assets.world), "--rate", str(rate)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def produce(self, events: Iterable[Any]) -> None:
        events = list(events)
        with EventProducer(self.settings) as producer:
            for event in events:
                producer.send(event)
        for event in events:
            if hasattr(event, "user_id"):
                self.extra_events[event.user_id].append(event)

    def world_user_events(self) -> dict[str, list[Any]]:
        by_user: dict[str, list[Any]] = defaultdict(list)
        with open(self.assets.world / "events/user-behavior.jsonl", "rb") as f:
            for line in f:
                event = USER_BEHAVIOR_ADAPTER.validate_json(line)
                by_user[event.user_id].append(event)
        return by_user

    def good_event_count(self) -> int:
        total = sum(len(v) for v in self.extra_events.values())
        for path in (self.assets.world / "events").glob("*.jsonl"):
            with open(path, "rb") as f:
                total += sum(1 for _ in f)
        return total

    # -- the oracle ----------------------------------------------------------------------------------------
    def expected_windows(self) -> dict[str, UserWindow]:
        by_user = self.world_user_events()
        limits = WindowLimits(days=self.settings.window.days, max_events=self.settings.window.max_events)
        users = set(by_user) | set(self.extra_events)
        only = self.only_events
        return {
            u: apply_events(
                UserWindow(user_id=u),
                [e for e in [*by_user[u], *self.extra_events[u]] if only is None or e.event_id in only],
                limits,
            )
            for u in users
        }

    def broker_lost_events(self) -> tuple[list[str], set[str]]:
        """(good event ids missing from the user-behavior topic, every event id the topic holds).

        A worker can only reflect what the broker kept: this separates a broker that lost acknowledged
        records from a worker that skipped some.
        """
        topic = self.settings.kafka.topic_prefix + "user-behavior"
        consumer = Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap_servers, "group.id": f"held-{time.time_ns()}"}
        )
        consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
        held: set[str] = set()
        idle, deadline = 0, time.monotonic() + 60
        while (idle < 6 or not held) and time.monotonic() < deadline:  # a just-restarted broker answers late
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                idle += 1
                continue
            idle = 0
            with contextlib.suppress(ValueError):
                held.add(USER_BEHAVIOR_ADAPTER.validate_json(msg.value()).event_id)
        consumer.close()
        every = (*self.world_user_events().values(), *self.extra_events.values())
        return sorted({e.event_id for events in every for e in events} - held), held

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys.of(self.settings.redis)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["ADGEN_REDIS__URL"], socket_timeout=5)

    def mismatches(self, require_lists: bool) -> list[str]:
        """Users whose Redis state differs from what the events imply (empty list: exact)."""
        r = self.redis()
        bad = []
        try:
            for user, window in sorted(self.expected_windows().items()):
                raw = r.hget(self.keys.user_window(user), "data")
                if raw is None:
                    bad.append(f"{user}: no window features")
                    continue
                features = json.loads(raw)
                if features["window_events"] != len(window.events) or features["arpu"] != window.profile.arpu:
                    bad.append(f"{user}: window {features['window_events']} != {len(window.events)} events")
                    continue
                if require_lists:
                    ads = r.hget(self.keys.user_ads(user), "data")
                    if ads is None:
                        bad.append(f"{user}: no ad list")
                    elif UserAds.model_validate_json(ads).window_fingerprint != window.fingerprint:
                        bad.append(f"{user}: ad list built from a different window")
        finally:
            r.close()
        return bad

    def request_all(self, tag: str, at: datetime) -> None:
        """One ad request per user after everything else, so each newest list must reflect the whole window."""
        users = sorted(self.expected_windows())
        self.produce(
            AdRequest(event_id=f"{tag}-{u}", event_time=at + timedelta(milliseconds=i), user_id=u)
            for i, u in enumerate(users)
        )

    def converge(self, timeout_s: float = 300) -> float:
        """Seconds until Redis holds exactly the state the events imply, lists included."""
        try:
            t1 = wait_for(lambda: not self.mismatches(require_lists=False), timeout_s, "windows to converge")
            self.converges += 1
            at = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(hours=self.converges)
            self.request_all(f"final{self.converges}", at)
            t2 = wait_for(lambda: not self.mismatches(require_lists=True), timeout_s, "every list to match its window")
        except AssertionError as exc:
            for worker in self.workers.values():
                with contextlib.suppress(OSError):
                    worker.metrics()
            state = {n: {k: v for k, v in w.last_metrics.items() if "{" not in k} for n, w in self.workers.items()}
            wrong = self.mismatches(require_lists=True)[:8]
            raise AssertionError(f"{exc}; still wrong: {wrong}; workers: {state}") from None
        return t1 + t2

    # -- what a kill interrupted ---------------------------------------------------------------------------
    def committed_offsets(self) -> dict[int, int]:
        """The window consumer group's committed offsets on user-behavior, per partition (-1: none yet)."""
        topic = topic_name(USER_BEHAVIOR, self.settings.kafka.topic_prefix)
        consumer = Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap_servers, "group.id": group_id(self.settings)}
        )
        try:
            parts = [TopicPartition(topic, p) for p in range(USER_BEHAVIOR.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        finally:
            consumer.close()

    def event_offsets(self) -> dict[str, tuple[int, int, float]]:
        """event id -> (partition, lowest offset, its record timestamp in epoch s) of every good event on
        user-behavior."""
        topic = topic_name(USER_BEHAVIOR, self.settings.kafka.topic_prefix)
        offsets: dict[str, tuple[int, int, float]] = {}
        for msg in read_topic(self.settings.kafka.bootstrap_servers, topic, USER_BEHAVIOR.partitions):
            try:
                event_id = USER_BEHAVIOR_ADAPTER.validate_json(msg.value()).event_id
            except ValueError:
                continue
            where = (msg.partition(), msg.offset(), msg.timestamp()[1] / 1000)
            offsets[event_id] = min(offsets.get(event_id, where), where)
        return offsets

    def changelog_event_ids(self) -> set[str]:
        """Every event id folded into a window row on the changelog (events, profile update, ad request)."""
        topic = topic_name(WINDOW_CHANGELOG, self.settings.kafka.topic_prefix)
        ids: set[str] = set()
        for msg in read_topic(self.settings.kafka.bootstrap_servers, topic, WINDOW_CHANGELOG.partitions):
            if not msg.key() or msg.key().startswith(CONTROL_PREFIX):
                continue
            window = UserWindow.from_bytes(msg.value())
            ids.update(e.event_id for e in window.events)
            ids.update(i for i in (window.profile_key[1], window.last_request_id) if i)
        return ids

    def kill_check(self, killed: WorkerProc) -> KillCheck:
        """Call right after a SIGKILL, before the restart: which folded events the kill left uncommitted.

        Events produced after the killed worker started can only have been folded by it (one worker at a
        time in the kill loop), so those among the uncommitted ones prove its batch was in flight."""
        committed = self.committed_offsets()
        offsets = self.event_offsets()

        def uncommitted(event_id: str) -> bool:
            partition, offset, _ = offsets[event_id]
            mark = committed.get(partition, -1)
            return mark < 0 or offset >= mark  # no commit yet on that partition: nothing of it is committed

        left = sorted(e for e in self.changelog_event_ids() if e in offsets and uncommitted(e))
        in_flight = [e for e in left if offsets[e][2] >= killed.started_at]
        return KillCheck(committed, left, in_flight, killed.last_metrics.get(IN_FLIGHT, 0.0))

    def wait_committing(self, worker: WorkerProc, timeout_s: float = 600) -> float:
        """Seconds until this worker process has committed a behaviour batch and the group has a committed
        offset on every partition: its start-up (group join, changelog restore) is over, so a kill from now
        on lands in its steady state, not in start-up. One valid event per world user is produced first, so
        there is a batch to commit even once the replay is over (the oracle folds them like every event)."""
        at = datetime.now(UTC)
        self.produce(
            ContentPlay(event_id=f"warm-{self.runs}-{u}", event_time=at, user_id=u, content_id="warm", title="warm")
            for u in sorted(self.world_user_events())
        )

        def committing() -> bool:
            if not worker.alive():
                raise AssertionError(f"worker {worker.name} exited: {worker.log_path.read_text()[-3000:]}")
            return worker.metrics().get(WINDOW_COMMITS, 0) >= 1 and min(self.committed_offsets().values()) >= 0

        return wait_for(committing, timeout_s, f"worker {worker.name}'s first behaviour commit")

    def kill_mid_batch(self, name: str, max_pause_s: float = 120.0) -> KillCheck:
        """SIGKILL a worker while a behaviour batch is in flight, and prove it from the broker afterwards.

        Redis writes are paused (`CLIENT PAUSE ... WRITE`, a stalled feature store) and a few events are
        produced: the worker's next batch folds them, gets its changelog rows acknowledged and then blocks
        on its Redis write, before its offset commit. The kill lands once the worker reports that batch in
        flight (`adgen_window_uncommitted_events` > 0, set after the changelog acknowledged it); `kill_check`
        must then find the batch's events on the changelog past the committed offsets (the caller asserts
        it). Call `wait_committing` first: a worker still starting has no batch to be caught in."""
        worker = self.workers[name]
        users = sorted(self.world_user_events())[:4]
        at = datetime.now(UTC)
        r = self.redis()
        try:
            r.execute_command("CLIENT", "PAUSE", str(int(max_pause_s * 1000)), "WRITE")
            self.produce(
                AdClick(event_id=f"mid-batch-{self.runs}-{i}", event_time=at, user_id=u, ad_id="mid-batch-ad")
                for i, u in enumerate(users)
            )
            wait_for(
                lambda: worker.metrics().get(IN_FLIGHT, 0) > 0,
                max_pause_s - 10,
                f"a behaviour batch in flight in worker {name} (folded, on the changelog, not committed)",
                poll_s=0.1,
            )
            killed = self.kill(name, signal.SIGKILL)
        finally:
            r.execute_command("CLIENT", "UNPAUSE")
            r.close()
        return self.kill_check(killed)

    def dead_letters(self) -> list[dict[str, Any]]:
        topic = self.settings.kafka.topic_prefix + "dead-letter"
        consumer = Consumer(
            {"bootstrap.servers": self.settings.kafka.bootstrap_servers, "group.id": f"dlq-{time.time_ns()}"}
        )
        consumer.assign([TopicPartition(topic, 0, 0)])
        letters, errors = [], []
        idle, deadline = 0, time.monotonic() + 60
        while idle < 4 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 1
            elif msg.error() is not None:
                errors.append(str(msg.error()))
                idle += 1
            else:
                idle = 0
                letters.append(json.loads(msg.value()))
        consumer.close()
        if errors and not letters:
            raise AssertionError(f"could not read the dead-letter topic {topic}: {errors[:3]}")
        return letters
