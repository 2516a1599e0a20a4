"""Benchmark of the embedded runtime and stream plumbing (numbers + ratios vs a same-run baseline).

    .venv/bin/python bench/bench_runtime.py [--events 20000] [--out var/runs/bench/runtime.json]

1. start-up: EmbeddedRuntime (broker answers metadata, redis PING, topics created) and `adgen up` wall
   time (includes CLI import) and `python -m adgen.commands.runtime up` (imports only the runtime); target < 10 s.
2. produce: EventProducer (encode + validate + keyed produce) vs a raw confluent-kafka producer sending
   pre-encoded bytes (baseline).
3. decode: codec.decode_event (with key check) vs the bare TypeAdapter.validate_json (baseline).
4. consumer-group join on Tansu: first record with session.timeout.ms 6000 (quirk) vs librdkafka's 45000.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer

from adgen.core.config import Settings
from adgen.runtime import EmbeddedRuntime
from adgen.streams.codec import decode_event, encode_event
from adgen.streams.events import USER_BEHAVIOR_ADAPTER, AdClick
from adgen.streams.producer import EventProducer
from adgen.streams.topics import USER_BEHAVIOR

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def make_events(n: int) -> list[AdClick]:
    return [
        AdClick(event_id=f"e{i}", event_time=T0 + timedelta(seconds=i), user_id=f"u{i % 997}", ad_id=f"a{i % 101}")
        for i in range(n)
    ]


def bench_startup(runs: int, work: Path) -> dict:
    totals = []
    parts = []
    for i in range(runs):
        runtime = EmbeddedRuntime(Settings(), work / f"startup-{i}")
        with runtime:
            assert runtime.timings is not None
            parts.append(runtime.timings.model_dump())
            totals.append(runtime.timings.total_s)
    adgen = [str(Path(sys.executable).with_name("adgen"))]
    up_wall, up_servers = _time_up(adgen, work / "up-state")
    module_wall, _ = _time_up([sys.executable, "-m", "adgen.commands.runtime"], work / "module-up-state")
    return {
        "runtime_start_s_median": statistics.median(totals),
        "runtime_start_runs": parts,
        "adgen_up_wall_s": up_wall,
        "adgen_up_servers_s": up_servers,
        "python_m_adgen_runtime_up_wall_s": module_wall,
        "target_s": 10.0,
        "meets_target": up_wall < 10.0,
        "meets_target_python_m": module_wall < 10.0,
    }


def _time_up(command: list[str], state_dir: Path) -> tuple[float, float]:
    """Wall seconds of `<command> up` (process start to both servers answering) and the servers' share."""
    env = {**os.environ, "ADGEN_PATHS__STATE": str(state_dir)}
    started = time.monotonic()
    subprocess.run([*command, "up"], env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    servers = json.loads((state_dir / "runtime.json").read_text())["timings"]["total_s"]
    subprocess.run([*command, "down"], env=env, check=True, capture_output=True)
    return wall, servers


def _best_of(repeats: int, *runs: Callable[[], None]) -> list[float]:
    """Fastest wall time of each run over `repeats` rounds, interleaved so load drift hits all alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def bench_produce(settings: Settings, events: list[AdClick], repeats: int) -> dict:
    encoded = [encode_event(e) for e in events]
    topic = USER_BEHAVIOR.name
    raw = Producer({**settings.kafka.confluent_config(), "linger.ms": 10, "acks": "all", "enable.idempotence": True})

    def baseline() -> None:
        for key, value in encoded:
            while True:
                try:
                    raw.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    raw.poll(0.1)
            raw.poll(0)
        raw.flush(60)

    def ours() -> None:
        with EventProducer(settings) as producer:
            for event in events:
                producer.send(event)

    baseline_s, ours_s = _best_of(repeats, baseline, ours)
    n = len(events)
    return {
        "events": n,
        "repeats": repeats,
        "baseline_raw_producer_eps": n / baseline_s,
        "event_producer_eps": n / ours_s,
        "ratio_event_producer_vs_raw": baseline_s / ours_s,
    }


def bench_decode(events: list[AdClick], repeats: int) -> dict:
    encoded = [encode_event(e) for e in events]

    def baseline() -> None:
        for _key, value in encoded:
            USER_BEHAVIOR_ADAPTER.validate_json(value)

    def ours() -> None:
        for key, value in encoded:
            decode_event("user-behavior", value, key=key)

    baseline_s, ours_s = _best_of(repeats, baseline, ours)
    n = len(events)
    return {
        "repeats": repeats,
        "baseline_validate_json_eps": n / baseline_s,
        "decode_event_eps": n / ours_s,
        "ratio_decode_vs_validate_json": baseline_s / ours_s,
    }


def first_record_s(settings: Settings, session_timeout_ms: int) -> float:
    consumer = Consumer(
        {
            **settings.kafka.confluent_config(),
            "group.id": f"bench-join-{session_timeout_ms}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
        }
    )
    started = time.monotonic()
    consumer.subscribe([USER_BEHAVIOR.name])
    try:
        while time.monotonic() - started < 120:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                return time.monotonic() - started
        return float("nan")
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="Rounds for produce/decode (best of).")
    parser.add_argument("--out", type=Path, default=Path("var/runs/bench/runtime.json"))
    args = parser.parse_args()

    events = make_events(args.events)
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory(prefix="adgen-bench-") as tmp:
        work = Path(tmp)
        result["startup"] = bench_startup(args.startup_runs, work)
        st = result["startup"]
        print(f"startup: EmbeddedRuntime median {st['runtime_start_s_median']:.2f}s; `adgen up` wall "
              f"{st['adgen_up_wall_s']:.2f}s (servers {st['adgen_up_servers_s']:.2f}s, the rest is CLI import) "
              f"target < 10s: {'OK' if st['meets_target'] else 'MISSED'}; `python -m adgen.commands.runtime up` wall "
              f"{st['python_m_adgen_runtime_up_wall_s']:.2f}s: "
              f"{'OK' if st['meets_target_python_m'] else 'MISSED'}")  # fmt: skip
        result["decode"] = bench_decode(events, args.repeats)
        d = result["decode"]
        print(f"decode: decode_event {d['decode_event_eps']:.0f}/s vs validate_json "
              f"{d['baseline_validate_json_eps']:.0f}/s (ratio {d['ratio_decode_vs_validate_json']:.2f})")  # fmt: skip
        with EmbeddedRuntime(Settings(), work / "main") as settings:
            result["produce"] = bench_produce(settings, events, args.repeats)
            p = result["produce"]
            print(f"produce: EventProducer {p['event_producer_eps']:.0f}/s vs raw producer "
                  f"{p['baseline_raw_producer_eps']:.0f}/s (ratio {p['ratio_event_producer_vs_raw']:.2f})")  # fmt: skip
            quirk = first_record_s(settings, 6000)
            default = first_record_s(settings, 45000)
            result["group_join"] = {
                "first_record_s_session_6000": quirk,
                "first_record_s_session_45000": default,
                "speedup": default / quirk,
            }
            print(f"group join on Tansu: first record after {quirk:.1f}s (session 6 s) vs {default:.1f}s "
                  f"(session 45 s), {default / quirk:.1f}x faster")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
