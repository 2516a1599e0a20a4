"""Benchmark of the nearline worker: behaviour events/s, users generated/s, request-to-features latency.

    .venv/bin/python bench/bench_worker.py [--events 40000] [--users 2000] [--out var/runs/bench/worker.json]

Part 1, behaviour windows (real Tansu broker + redis-server, each variant a subprocess with its own
consumer group on one topic of pre-produced events): events/s from its first batch to its last for
  - drain:       a Faust agent that only takes and counts raw events (Faust's own ceiling here),
  - naive:       a Faust agent, decode + one Faust-table (RocksDB + changelog) read/write per event,
  - naive_redis: naive + the window features written to Redis per event (same outputs as batched),
  - batched:     the worker's window path (processors/window_consumer.py): confluent-kafka batches in a
                 thread, one fold, RocksDB row and changelog record per user per batch, window features
                 to Redis in one guarded pipeline per batch, offsets committed after.
Batching saves table and Redis writes only when a user has several events in one batch: run it with
--users 2000 (~1 event per user per batch) and with --users 200 (a hot set of active users).
Part 2, generation (in-process, the real decoder over a random-init model of the built-in default size:
hidden 256, 4 layers; S-ID trie of --ads ads): users/s of the decoder alone on pre-built prompts vs the
full generation step (queue, budget, debounce read, prompts from windows, decode, guarded Redis write),
then p50/p99 request -> features latency with requests arriving at --rate users/s.
Targets on 2 cores: batched >= 20k events/s; generation >= 80% of the decoder's own rate.
The machine is shared: absolute numbers are noisy; the ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

T0 = datetime(2026, 11, 1, tzinfo=UTC)
VARIANTS = ("drain", "naive", "naive_redis", "batched")


# ---------------------------------------------------------------------------------------------------------
# part 1: behaviour windows
# ---------------------------------------------------------------------------------------------------------


def make_behaviour(n: int, users: int, seed: int = 0) -> list:
    from adgen.streams.events import AdClick, ContentComplete, ContentPlay, ContentSearch

    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = f"u{rng.randrange(users):06d}"
        at = T0 + timedelta(seconds=i)
        kind = rng.random()
        if kind < 0.3:
            out.append(AdClick(event_id=f"e{i}", event_time=at, user_id=user, ad_id=f"ad{rng.randrange(5000)}"))
        elif kind < 0.6:
            out.append(
                ContentComplete(
                    event_id=f"e{i}",
                    event_time=at,
                    user_id=user,
                    content_id=f"c{rng.randrange(5000)}",
                    title="a video",
                    category=f"cat{rng.randrange(20)}",
                )
            )
        elif kind < 0.9:
            out.append(ContentPlay(event_id=f"e{i}", event_time=at, user_id=user, content_id=f"c{rng.randrange(5000)}"))
        else:
            out.append(ContentSearch(event_id=f"e{i}", event_time=at, user_id=user, query="running shoes"))
    return out


class Counter:
    """Events/s of one variant from the arrival of its first batch to the end of its last one."""

    def __init__(self, variant: str, expected: int, result_path: Path, done: Callable[[], None]) -> None:
        self.variant, self.expected, self.result_path, self.done = variant, expected, result_path, done
        self.seen, self.first = 0, 0.0

    def arrived(self) -> None:
        if not self.first:
            self.first = time.perf_counter()

    def processed(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.expected:
            elapsed = time.perf_counter() - self.first
            result = {"variant": self.variant, "events": self.seen, "seconds": elapsed}
            self.result_path.write_text(json.dumps(result))
            self.done()


def child(variant: str, expected: int, result_path: Path) -> None:
    """One worker process running one variant until it has seen `expected` events."""
    if variant == "batched":
        asyncio.run(batched_child(expected, result_path))
    else:
        faust_child(variant, expected, result_path)


async def batched_child(expected: int, result_path: Path) -> None:
    """The worker's window path (processors/window_consumer.py), wired as processors/worker_app.py does."""
    from adgen.core.config import load_settings
    from adgen.processors.feature_store import FeatureStore
    from adgen.processors.metrics import WorkerMetrics
    from adgen.processors.window_consumer import WindowConsumer, loop_publisher, run_in_thread
    from adgen.processors.window_store import WindowStore

    settings = load_settings()
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"app_id": f"bench-batched-{os.getpid()}"})}
    )
    metrics = WorkerMetrics()
    store = FeatureStore(settings.redis, on_write=metrics.observe_redis_write)
    windows = WindowStore(settings.paths.state / "windows")
    loop = asyncio.get_running_loop()

    async def write(features: Any, updates: Any) -> None:
        await store.write_user_windows(features)

    consumer = WindowConsumer(settings, windows, metrics, lambda f, u: None)
    consumer.publish = loop_publisher(loop, write, consumer.stopping)
    counter = Counter("batched", expected, result_path, consumer.stop)
    process = consumer.process

    def timed(messages: Any) -> None:
        counter.arrived()
        process(messages)
        counter.processed(len(messages))

    consumer.process = timed  # type: ignore[method-assign]
    await run_in_thread(consumer)
    windows.close()
    await store.close()


def faust_child(variant: str, expected: int, result_path: Path) -> None:
    """The Faust baselines: a per-event agent over a RocksDB-backed Faust table, or one that only counts."""
    import weakref

    import faust
    from faust.streams import _current_event

    from adgen.core.config import load_settings
    from adgen.processors.behavior_windows import window_features
    from adgen.processors.feature_store import FeatureStore
    from adgen.processors.metrics import WorkerMetrics
    from adgen.processors.window_consumer import BATCH_SIZE, BATCH_WAIT_S
    from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
    from adgen.streams.app import create_app, declare_topics
    from adgen.streams.codec import decode_event

    settings = load_settings()
    # the naive baseline keeps its window table in RocksDB, as a Faust table with changelog would
    app = create_app(settings, app_id=f"bench-{variant}-{os.getpid()}", store="rocksdb://")
    topics = declare_topics(app, settings)
    table = app.Table("user-windows", default=None, key_type=bytes, value_type=bytes, partitions=4)
    table.key_serializer = table.value_serializer = "raw"
    metrics = WorkerMetrics()
    store = FeatureStore(settings.redis, on_write=metrics.observe_redis_write)
    limits = WindowLimits(days=settings.window.days, max_events=settings.window.max_events)
    counter = Counter(variant, expected, result_path, lambda: os.kill(os.getpid(), signal.SIGTERM))

    @app.agent(topics.user_behavior)
    async def agent(stream: faust.StreamT) -> None:
        if variant == "drain":
            async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WAIT_S):
                counter.arrived()
                counter.processed(len(batch))
            return
        async for raw in stream.events():
            counter.arrived()
            event = decode_event(raw.message.topic, raw.value, key=raw.key)
            key = event.user_id.encode()
            token = _current_event.set(weakref.ref(raw))  # the table writes to this event's partition
            try:
                row = table.get(key)
                window = UserWindow.from_bytes(row) if row else UserWindow(user_id=event.user_id)
                new = apply_events(window, [event], limits)
                table[key] = new.to_bytes()
            finally:
                _current_event.reset(token)
            if variant == "naive_redis":  # the same outputs as the batched path, one event at a time
                await store.write_user_windows([window_features(new)])
            counter.processed(1)

    faust.Worker(app, loglevel="ERROR", quiet=True).execute_from_commandline()


def bench_windows(args: argparse.Namespace, work: Path) -> dict:
    from adgen.core.config import Settings
    from adgen.runtime import EmbeddedRuntime, runtime_env
    from adgen.streams.producer import EventProducer

    runtime = EmbeddedRuntime(Settings(), work / "runtime")
    settings = runtime.start()
    try:
        events = make_behaviour(args.events, args.users)
        started = time.perf_counter()
        with EventProducer(settings) as producer:
            for e in events:
                producer.send(e)
        produce_s = time.perf_counter() - started
        env = {
            **os.environ,
            **runtime_env(settings),
        }
        results: dict[str, dict] = {"produce": {"events": len(events), "events_per_s": len(events) / produce_s}}
        for variant in VARIANTS:
            out = work / f"{variant}.json"
            state = work / f"state-{variant}"
            proc = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--events", str(args.events), "--result", str(out)],
                env={**env, "ADGEN_PATHS__STATE": str(state)},
                capture_output=True,
                timeout=args.timeout,
            )
            if not out.exists():
                raise RuntimeError(f"{variant} wrote no result: {proc.stderr.decode()[-2000:]}")
            r = json.loads(out.read_text())
            r["events_per_s"] = r["events"] / r["seconds"]
            results[variant] = r
            rate = r["events_per_s"]
            print(f"  {variant:8s} {r['events']:>7,d} events in {r['seconds']:6.2f}s = {rate:>9,.0f} events/s")
        results["batched_vs_naive"] = results["batched"]["events_per_s"] / results["naive"]["events_per_s"]
        results["batched_vs_naive_redis"] = results["batched"]["events_per_s"] / results["naive_redis"]["events_per_s"]
        results["batched_vs_drain"] = results["batched"]["events_per_s"] / results["drain"]["events_per_s"]
        return results
    finally:
        runtime.stop()


# ---------------------------------------------------------------------------------------------------------
# part 2: generation
# ---------------------------------------------------------------------------------------------------------


class _Live:
    def __init__(self, view: object) -> None:
        self.view = view


def bench_generation(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np
    import torch

    from adgen.core.catalogue import Item
    from adgen.core.config import BudgetSettings, ModelSettings, Settings, WindowSettings
    from adgen.index.semantic_ids import SemanticIdMap, sid_vocabulary
    from adgen.model.lm import LMConfig, build_lm, save_lm
    from adgen.model.prompts import fixed_texts
    from adgen.model.tokenizer import build_tokenizer, save_tokenizer
    from adgen.processors.ad_indexer import IndexView
    from adgen.processors.feature_store import FeatureStore
    from adgen.processors.generation import GenerationService, LeadreGenerator
    from adgen.processors.metrics import WorkerMetrics
    from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
    from adgen.runtime import RedisServer
    from adgen.streams.events import AdClick, AdRequest, ContentComplete, ProfileUpdate

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    sizes = (64, 64, 64, 16)
    codes = rng.integers(0, 64, size=(args.ads, 3))
    ad_ids = [f"ad{i:06d}" for i in range(args.ads)]
    sid_map = SemanticIdMap.build(ad_ids, codes, sizes)
    cats = [f"Category {i}" for i in range(20)]
    items = {
        a: Item(item_id=a, title=f"ad {i} for {cats[i % 20].lower()}", categories=(cats[i % 20],))
        for i, a in enumerate(ad_ids)
    }
    vocab = sid_vocabulary(sizes)
    tokenizer = build_tokenizer(
        [*fixed_texts(), *(it.title for it in items.values())] * 2, extra_tokens=vocab, vocab_size=1024
    )
    ckpt = work / "ckpt"
    save_lm(build_lm(LMConfig(vocab_size=len(tokenizer))), ckpt / "lm")  # default size: hidden 256, 4 layers
    save_tokenizer(tokenizer, ckpt / "tokenizer")
    generator = LeadreGenerator(ckpt, ModelSettings(top_k=20, beams=20, max_prompt_tokens=256), WindowSettings())
    offset = generator.token_offset(vocab)
    trie, leaf_items = sid_map.trie_arrays(offset)
    view = IndexView(
        version="bench",
        trie=trie,
        leaf_items=tuple(leaf_items),
        sids={a: sid_map.sid_of(a) for a in ad_ids},
        items=items,
        live=frozenset(leaf_items),
        watermark=None,
    )
    # users with realistic windows: profile + 30 positive behaviours + a request
    limits = WindowLimits()
    windows = []
    for u in range(args.gen_users):
        user = f"g{u:05d}"
        evs: list = [
            ProfileUpdate(event_id=f"{user}-p", event_time=T0, user_id=user, age=30 + u % 30, arpu=float(u % 97))
        ]
        for j in range(30):
            at = T0 + timedelta(hours=j + 1)
            if j % 2:
                evs.append(
                    AdClick(event_id=f"{user}-{j}", event_time=at, user_id=user, ad_id=ad_ids[(u * 7 + j) % args.ads])
                )
            else:
                evs.append(
                    ContentComplete(
                        event_id=f"{user}-{j}",
                        event_time=at,
                        user_id=user,
                        content_id=f"c{j}",
                        title="a video",
                        category=cats[j % 20],
                    )
                )
        evs.append(AdRequest(event_id=f"{user}-r", event_time=T0 + timedelta(days=2), user_id=user))
        windows.append(apply_events(UserWindow(user_id=user), evs, limits))
    batch = 16

    # (a) decoder alone on pre-built prompts, same batch size
    from adgen.model.prompts import PromptBuilder

    builder = PromptBuilder(
        tokenizer, items, view.sids.__getitem__, options=generator.options, ad_vocabulary=generator.ad_vocabulary
    )
    prompts = [builder.user_prompt(w.to_history().events, w.profile, now=w.last_request_ts).ids for w in windows]
    generator.backend.search.prefix_cache = None  # measure both without cross-request prefix reuse
    generator.backend.search.generate(prompts[:batch], trie, k=20, beams=20)  # warm-up

    def decoder_alone() -> float:
        started = time.perf_counter()
        for i in range(0, len(prompts), batch):
            generator.backend.search.generate(prompts[i : i + batch], trie, k=20, beams=20)
        return time.perf_counter() - started

    def in_thread(fn):  # the worker decodes in a worker thread (asyncio.to_thread): measure the same way
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(fn).result()

    main_thread_s = decoder_alone()
    decoder_runs = [in_thread(decoder_alone)]
    mean_prompt = sum(map(len, prompts)) / len(prompts)

    with RedisServer(work / "redis") as redis_server:
        settings = Settings().model_copy(
            update={"redis": Settings().redis.model_copy(update={"url": redis_server.url})}
        )
        budget = BudgetSettings(generations_per_second=1e6, burst=10**6, batch_size=batch, min_regen_interval_s=0)

        async def full_path() -> tuple[float, list[float]]:
            store = FeatureStore(settings.redis)
            metrics = WorkerMetrics()
            service = GenerationService(budget, _Live(view), generator, store, metrics)  # type: ignore[arg-type]
            service.observe([(w, True) for w in windows])
            started = time.perf_counter()
            while len(service.scheduler.queue):
                await service.step(time.monotonic())
            elapsed = time.perf_counter() - started
            # latency at a stated load: fresh requests arriving at args.rate users/s, served by the run loop
            await store.client.flushdb()
            later = [w.replace(last_request_ts=w.last_request_ts + 3600, last_request_id="r2") for w in windows]
            submitted: dict[str, float] = {}
            stop = False
            loop_task = asyncio.ensure_future(service.run(lambda: stop))
            for w in later:
                submitted[w.user_id] = time.time()
                service.observe([(w, True)])
                await asyncio.sleep(1.0 / args.rate)
            while service.generated_users < 2 * len(windows):
                await asyncio.sleep(0.05)
            stop = True
            await loop_task
            done = await store.user_ads([w.user_id for w in later])
            lat = sorted(done[u].generated_at.timestamp() - t for u, t in submitted.items() if done[u] is not None)
            await store.close()
            return elapsed, lat

        full_s, latencies = asyncio.run(full_path())
    decoder_runs.append(in_thread(decoder_alone))  # before and after: the machine is shared, so bracket the full run
    decoder_s = sum(decoder_runs) / len(decoder_runs)
    decoder_rate = len(prompts) / decoder_s
    n = len(prompts)
    print(f"  decoder alone        {n} users in {decoder_s:6.2f}s = {decoder_rate:7.1f} users/s (thread, mean of 2)")
    print(f"  decoder alone        {n} users in {main_thread_s:6.2f}s = {n / main_thread_s:7.1f} users/s (main thread)")
    full_rate = len(windows) / full_s
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"  full generation step {len(windows)} users in {full_s:6.2f}s = {full_rate:7.1f} users/s")
    print(f"  request->features at {args.rate} users/s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    return {
        "model": "built-in default size (hidden 256, 4 layers), random init",
        "ads": args.ads,
        "users": len(windows),
        "batch_size": batch,
        "k": 20,
        "beams": 20,
        "mean_prompt_tokens": mean_prompt,
        "decoder_users_per_s": decoder_rate,
        "decoder_seconds_runs": decoder_runs,
        "decoder_main_thread_users_per_s": len(prompts) / main_thread_s,
        "generation_users_per_s": full_rate,
        "generation_vs_decoder": full_rate / decoder_rate,
        "latency_load_users_per_s": args.rate,
        "latency_p50_ms": p50 * 1000,
        "latency_p99_ms": p99 * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--ads", type=int, default=5_000)
    parser.add_argument("--gen-users", type=int, default=128)
    parser.add_argument("--rate", type=float, default=10.0, help="Request arrival rate for the latency part.")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=Path("var/runs/bench/worker.json"))
    parser.add_argument("--skip", choices=["windows", "generation"], default=None)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.events, args.result)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_info import finish, run_info

    info = run_info()
    result: dict = {
        "started_at": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "users": args.users,
        "events": args.events,
        "run": info,
    }
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        work = Path(tmp)
        if args.skip != "windows":
            print(f"behaviour windows: {args.events:,} events over {args.users:,} users")
            result["windows"] = bench_windows(args, work)
            w = result["windows"]
            print(
                f"  batched/naive = {w['batched_vs_naive']:.2f}x,"
                f" batched/naive_redis = {w['batched_vs_naive_redis']:.2f}x,"
                f" batched/drain = {w['batched_vs_drain']:.2f}"
            )
        if args.skip != "generation":
            print(f"generation: {args.gen_users} users, {args.ads:,} ads")
            result["generation"] = bench_generation(args, work)
            print(f"  generation/decoder = {result['generation']['generation_vs_decoder']:.2f}")
    finish(info)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
