"""Worker-level faults on a real Tansu broker, a real redis-server and real `adgen worker` subprocesses.

Each test ends with the same check: Redis holds exactly what the good events imply (every user's window
size, ARPU and the window fingerprint of their newest ad list), and nothing good was dead-lettered.
At-least-once delivery plus idempotent, event-time-guarded writes is what makes that hold after a kill.

Default run: one worker SIGKILLed twice, once while a behaviour batch is in flight (proven from the broker)
and once at a random point; every kill waits until the (restarted) worker has committed, so none falls in
its start-up by accident. Slow (`pytest -m slow tests/reliability`): 20 kills (3 mid-batch; about 1 in 4
followed by a deliberate kill during the next start-up), two workers in one group with one killed, Redis
SIGKILLed and restarted, the broker SIGKILLed and restarted on durable storage 20 times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from stack import REDELIVERY_BOUND, Assets, KillCheck, Stack, wait_for

from adgen.runtime.redis_server import redis_binary
from adgen.streams.events import AdClick, AdRequest

pytestmark = pytest.mark.integration


def _kill_loop(stack: Stack, kills: int, seed: int, rate: float, startup_kills: float, aimed: int) -> dict[str, Any]:
    """Replay the world while SIGKILLing the worker. Before every kill the worker must have committed its
    first behaviour batch (`Stack.wait_committing`), so no kill falls in its start-up by accident; the first
    `aimed` kills then wait for a batch in flight (`Stack.kill_mid_batch`), the rest land at random moments.
    Start-up kills are separate and deliberate (`startup_kills`: the restarted worker also dies before it
    has joined the group). Every kill is checked against the broker right after it: which folded events it
    left uncommitted (each is delivered again on restart)."""
    rng = random.Random(seed)
    stack.start_worker("w1")
    producer = stack.produce_world(rate)
    checks: list[KillCheck] = []
    during_startup = 0
    for i in range(kills):
        stack.wait_committing(stack.workers["w1"])
        time.sleep(rng.uniform(0.3, 3.0))
        if i < aimed:
            checks.append(stack.kill_mid_batch("w1"))
        else:
            checks.append(stack.kill_check(stack.kill("w1", signal.SIGKILL)))
        print(f"\n[faults] kill {i}: {'mid-batch' if checks[-1].landed_in_batch else 'between batches'}, "
              f"{len(checks[-1].in_flight)} of its folded events uncommitted, {checks[-1].redeliveries} in all",
              flush=True)  # fmt: skip
        if rng.random() < startup_kills:  # also die before the restarted worker has even joined the group
            during_startup += 1
            stack.start_worker("w1", wait=False)
            time.sleep(rng.uniform(1.0, 4.0))
            stack.kill("w1", signal.SIGKILL)
        stack.start_worker("w1")
    assert producer.wait(timeout=600) == 0
    # ids nobody has seen: a click on an ad the index never had, a brand-new user; both are valid events
    at = datetime(2030, 6, 1, tzinfo=UTC)
    stack.produce(
        [
            AdClick(event_id="ghost-click", event_time=at, user_id="u00000001", ad_id="no-such-ad"),
            AdClick(event_id="ghost-user", event_time=at, user_id="never-seen-user", ad_id="no-such-ad-2"),
            AdRequest(event_id="ghost-rq", event_time=at + timedelta(seconds=1), user_id="never-seen-user"),
        ]
    )
    converge_s = stack.converge()
    return {
        "kills": kills,
        "kills_aimed_mid_batch": aimed,
        "kills_during_startup": during_startup,
        "kills_landed_mid_batch": sum(c.landed_in_batch for c in checks),
        "in_flight_marker_per_kill": [c.in_flight_marker for c in checks],
        "redeliveries_per_kill": [c.redeliveries for c in checks],
        "redelivery_bound": REDELIVERY_BOUND,
        "converge_s": round(converge_s, 1),
        "_checks": checks,
    }


def _run_kill_test(
    assets: Assets, root: Path, facts: dict[str, Any], kills: int, rate: float, startup_kills: float, aimed: int
) -> None:
    stack = Stack.start(assets, root)
    try:
        result = _kill_loop(stack, kills, seed=kills, rate=rate, startup_kills=startup_kills, aimed=aimed)
        checks: list[KillCheck] = result.pop("_checks")
        facts.update(result)
        print(f"\n[faults] worker SIGKILL x{kills}: {result}")
        for i, check in enumerate(checks):
            assert min(check.committed.values()) >= 0, (
                f"kill {i} fell in start-up (a partition without a commit): {check.committed}"
            )
        for i, check in enumerate(checks[:aimed]):
            assert check.landed_in_batch, f"aimed kill {i} found no uncommitted folded event: {check.committed}"
        for i, check in enumerate(checks):
            assert check.redeliveries <= REDELIVERY_BOUND, f"kill {i} left {check.redeliveries} uncommitted events"
        assert stack.mismatches(require_lists=True) == []
        assert stack.dead_letters() == [], "a good event was dead-lettered"
        facts["state_exact"] = True
    finally:
        stack.stop()


@pytest.mark.timeout(1200)  # the session's world/index/checkpoint build (1-3 min) counts against the first test
def test_worker_sigkilled_twice_one_kill_mid_batch_ends_with_every_event_applied_once(
    assets: Assets, tmp_path: Path, fault_facts: dict[str, Any]
) -> None:
    _run_kill_test(assets, tmp_path, fault_facts, kills=2, rate=200, startup_kills=0.0, aimed=1)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 20+ worker start-ups; each is 20-40 s on a busy 2-core machine
def test_worker_sigkilled_20_times_at_random_points_ends_with_every_event_applied_once(
    assets: Assets, tmp_path: Path, fault_facts: dict[str, Any]
) -> None:
    _run_kill_test(assets, tmp_path, fault_facts, kills=20, rate=8, startup_kills=0.25, aimed=3)


BEHAVIOUR_EVENTS = 'adgen_events_total{topic="user-behavior"}'


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_workers_in_one_group_one_killed_the_survivor_takes_over_and_nothing_is_lost(
    assets: Assets, tmp_path: Path, fault_facts: dict[str, Any]
) -> None:
    """Re-deliveries are counted on user-behavior only (every worker reads all of ad-updates by design):
    behaviour events handled by both workers minus those produced. The survivor replays what the victim
    had processed but not committed, at most one batch (REDELIVERY_BOUND)."""
    stack = Stack.start(assets, tmp_path)
    try:
        stack.start_worker("w1")
        stack.start_worker("w2")
        producer = stack.produce_world(100)
        wait_for(lambda: stack.workers["w2"].metrics().get(BEHAVIOUR_EVENTS, 0) > 50, 120, "w2 to take a share")
        killed = stack.kill("w2", signal.SIGKILL)
        check = stack.kill_check(killed)
        assert producer.wait(timeout=600) == 0
        stack.converge()
        assert stack.mismatches(require_lists=True) == []
        assert stack.dead_letters() == []
        survivor = stack.workers["w1"].metrics().get(BEHAVIOUR_EVENTS, 0)
        victim = killed.last_metrics.get(BEHAVIOUR_EVENTS, 0)
        produced = sum(len(v) for v in stack.world_user_events().values()) + sum(
            len(v) for v in stack.extra_events.values()
        )
        redeliveries = survivor + victim - produced
        fault_facts.update(
            behaviour_events_produced=produced,
            handled_by_survivor=survivor,
            handled_by_victim_before_kill=victim,
            redeliveries=redeliveries,
            uncommitted_folded_at_kill=check.redeliveries,
            redelivery_bound=REDELIVERY_BOUND,
            state_exact=True,
        )
        print(f"\n[faults] rebalance: {fault_facts}")
        assert survivor > 0
        # the victim's last scrape precedes the kill by milliseconds, so a small negative count is possible
        assert -50 <= redeliveries <= REDELIVERY_BOUND
    finally:
        stack.stop()


class PersistentRedis:
    """redis-server with append-only fsync-always persistence (the production setting for the store)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        with open(self.data_dir / "redis.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        import redis

        wait_for(lambda: redis.Redis(port=self.port).ping(), 30, "redis-server start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_redis_sigkilled_and_restarted_mid_run_the_worker_retries_and_loses_nothing(
    assets: Assets, tmp_path: Path
) -> None:
    from adgen.runtime.processes import free_port

    port = free_port()
    store = PersistentRedis(tmp_path / "redis-aof", port)
    store.start()
    stack = Stack.start(assets, tmp_path / "stack", ADGEN_REDIS__URL=f"redis://127.0.0.1:{port}/0")
    try:
        stack.start_worker("w1")
        producer = stack.produce_world(150)
        wait_for(lambda: stack.workers["w1"].metrics().get("adgen_events_total", 0) > 200, 120, "mid-stream")
        store.kill()
        time.sleep(5)
        store.start()
        assert producer.wait(timeout=600) == 0
        stack.converge()
        assert stack.mismatches(require_lists=True) == []
        retries = stack.workers["w1"].metrics().get("adgen_redis_retries_total", 0)
        print(f"\n[faults] redis SIGKILL + restart: {retries:.0f} write retries, state exact")
        assert retries > 0, "the outage must have been seen (else the test did not test it)"
    finally:
        stack.stop()
        store.kill()


@pytest.mark.slow
def test_broker_sigkilled_on_s3_storage_keeps_every_acknowledged_record_and_committed_offset(tmp_path: Path) -> None:
    """The broker side of a restart: records acknowledged before, during and after a SIGKILL + restart are
    all readable afterwards, and a committed group offset survives."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from adgen.runtime.s3 import LocalS3, TansuS3Broker

    with LocalS3(tmp_path / "s3") as s3:
        broker = TansuS3Broker(tmp_path / "tansu.log", s3)
        broker.start()
        try:
            bootstrap = {"bootstrap.servers": broker.bootstrap}
            admin = AdminClient(bootstrap)  # keep a reference until the futures resolve
            for future in admin.create_topics([NewTopic("t", 2, 1)]).values():
                future.result(10)
            acked: list[str] = []
            producer = Producer({**bootstrap, "linger.ms": 5})

            def send(lo: int, hi: int) -> None:
                for i in range(lo, hi):
                    producer.produce(
                        "t",
                        key=str(i % 7).encode(),
                        value=f"m{i}".encode(),
                        on_delivery=lambda err, msg: err is None and acked.append(msg.value().decode()),
                    )
                producer.flush(60)

            send(0, 300)
            group = Consumer({**bootstrap, "group.id": "g", "enable.auto.commit": False})
            group.assign([TopicPartition("t", 0, 0)])
            group.poll(5)
            group.commit(offsets=[TopicPartition("t", 0, 5)], asynchronous=False)
            group.close()
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait(timeout=30)
            for i in range(300, 400):  # produced while the broker is down: queued and retried by librdkafka
                producer.produce(
                    "t",
                    key=str(i % 7).encode(),
                    value=f"m{i}".encode(),
                    on_delivery=lambda err, msg: err is None and acked.append(msg.value().decode()),
                )
            broker.start()
            producer.flush(120)
            send(400, 500)
            reader = Consumer({**bootstrap, "group.id": "g", "auto.offset.reset": "earliest"})
            assert reader.committed([TopicPartition("t", 0)], timeout=10)[0].offset == 5
            reader.assign([TopicPartition("t", p, 0) for p in (0, 1)])
            seen: set[str] = set()
            idle = 0
            while idle < 8:
                msg = reader.poll(1)
                if msg is None:
                    idle += 1
                elif msg.error() is None:
                    seen.add(msg.value().decode())
            reader.close()
            assert len(acked) == 500 and set(acked) <= seen
        finally:
            broker.stop()


#: Runs of the broker SIGKILL-and-restart test in a slow run (ADGEN_BROKER_RESTART_RUNS overrides).
BROKER_RESTART_RUNS = int(os.environ.get("ADGEN_BROKER_RESTART_RUNS", "20"))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("run", range(BROKER_RESTART_RUNS))
def test_broker_sigkilled_and_restarted_on_s3_storage_the_worker_resumes_and_loses_nothing(
    assets: Assets, tmp_path: Path, fault_facts: dict[str, Any], run: int
) -> None:
    """Tansu keeps topics, records and committed offsets in s3:// (a local moto server), so a broker
    SIGKILL + restart on the same port is survivable; with the default memory:// storage it is not.

    Zero loss, no escape: every good event must be on the broker afterwards (acknowledged records survive;
    producers to the embedded broker run without idempotence, tansu_quirks 7) and the worker must end
    exact against all of them. Each run kills the broker at a different point of the replay."""
    from adgen.runtime.s3 import LocalS3, TansuS3Broker

    with LocalS3(tmp_path / "s3") as s3:
        stack = Stack.start(assets, tmp_path / "stack", broker=lambda log: TansuS3Broker(log, s3))
        try:
            stack.start_worker("w1")
            producer = stack.produce_world(150)
            threshold = 100 + 50 * (run % 8)  # spread the kill over the replay
            wait_for(lambda: stack.workers["w1"].metrics().get(BEHAVIOUR_EVENTS, 0) > threshold, 120, "mid-stream")
            broker = stack.runtime.broker
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait(timeout=30)
            time.sleep(3)
            broker.start()  # same port, same bucket
            assert producer.wait(timeout=600) == 0
            lost, _held = stack.broker_lost_events()
            fault_facts.update(run=run, killed_after_events=threshold, broker_lost_events=len(lost))
            assert lost == [], f"the broker lost {len(lost)} acknowledged events: {lost[:5]}"
            fault_facts["converge_s"] = round(stack.converge(timeout_s=300), 1)
            assert stack.mismatches(require_lists=True) == []
            assert stack.dead_letters() == []
            assert stack.workers["w1"].alive(), "the worker must ride out the broker restart"
            fault_facts["state_exact"] = True
            print(f"\n[faults] broker SIGKILL + restart on s3:// storage, run {run}: {fault_facts}")
        finally:
            stack.stop()


@pytest.mark.slow
def test_snapshot_disk_full_in_a_running_worker_keeps_it_serving_and_keeps_the_previous_snapshot(
    assets: Assets, tmp_path: Path
) -> None:
    """The hourly snapshot timer hits ENOSPC (a full 1 MiB tmpfs holds the index): the worker must log it
    and keep processing; the snapshot it started from stays the newest valid one."""
    import shutil

    from adgen.index.snapshot import INDEX_KIND, SnapshotStore

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copytree(assets.root / "var" / "index", disk / "index")
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave (almost) no space
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        before = SnapshotStore(disk / "index", INDEX_KIND).latest().version
        stack = Stack.start(
            assets, tmp_path / "stack", ADGEN_PATHS__INDEX=str(disk / "index"), ADGEN_WORKER__SNAPSHOT_INTERVAL_S="2"
        )
        try:
            worker = stack.start_worker("w1")
            stack.produce_world(0).wait()
            time.sleep(8)  # several snapshot attempts
            assert worker.alive(), f"the worker died on a full disk: {worker.log_path.read_text()[-2000:]}"
            stack.converge()
            assert stack.mismatches(require_lists=True) == []
            assert SnapshotStore(disk / "index", INDEX_KIND).latest().version == before
            assert "snapshot" in worker.log_path.read_text().lower()
        finally:
            stack.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
