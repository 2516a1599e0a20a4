"""Soak: one real `adgen worker` (embedded Tansu broker, redis-server, a CI model for search) under a
sustained mix of every input, with verdicts that fail when the worker does not hold up.

    .venv/bin/python bench/soak.py --minutes 12 --out docs/data/soak/soak.json      # the committed run
    .venv/bin/python bench/soak.py --minutes 4 --warmup-s 60 --inject leak:90 ...   # a run that must FAIL
    .venv/bin/python bench/soak.py --rejudge docs/data/soak/soak.json               # verdicts again, no run

1. Capacity, measured in this run: the world's history plus a burst of `--capacity-events` behaviour
   events are on the topic before the worker starts; its behaviour events/s from the first to the last
   is the capacity C. Garbage is then offered at `--garbage-fraction` x C (small malformed messages,
   each one decoded, rejected and dead-lettered; oversized ones at 1/s), so the garbage costs what a
   real flood of bad input would, rather than a share of a trickle.
2. Warm-up (`--warmup-s`, fixed before the run): the good mix at `--rate` events/s (behaviour, ad
   requests, profile and ad updates, search queries) with garbage in its second half, so every path and
   bounded cache is exercised before the RSS baseline (the mean over the minute after the warm-up).
3. Clean half, then garbage half (good mix unchanged, garbage at the rate above).
Throughout, a prober sends `GET /search` to the worker at `--search-rate`/s and records latency and
errors; search queries in the mix go through the topic path (answers in Redis).

Verdicts (exit 1 unless all hold): garbage offered at >= 50% of C; good events consumed per second in
the garbage half / clean half >= `--min-good-ratio` (0.9), and in each half consumed / offered >= the same
bound (so two starved halves cannot pass by their ratio); RSS at the end (last minute) / RSS at the
warm-up point <= `--max-rss-growth` (1.10); lag <= `--max-lag-s` seconds of input; search: HTTP errors
<= `--max-search-error-share`, p99 <= `--max-search-p99-s`, answers in every sample interval, and the
topic path answered every query produced. `--inject leak:MB_PER_MIN` or `--inject slow-garbage:SECONDS`
load a fault into the worker (a `sitecustomize` on its PYTHONPATH) to show that the verdicts fail.

The worker's LEADRE model is randomly initialised (tests/reliability/stack.py builds the world, index
and checkpoint): generation costs what it costs, the lists are meaningless. The JSON records the load
average at the start and the end, and every sample (the PNG next to it plots them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reliability"))

from stack import ADGEN, Assets, Stack, build_assets  # noqa: E402

from adgen.streams.events import (  # noqa: E402
    AD_UPDATE_ADAPTER,
    AdClick,
    AdRequest,
    AdUpsert,
    ContentComplete,
    ContentPlay,
    ProfileUpdate,
    SearchQuery,
)
from adgen.streams.producer import EventProducer  # noqa: E402

#: Small malformed messages offered at the high garbage rate (each is decoded, rejected, dead-lettered).
GARBAGE_SMALL: list[tuple[bytes | None, bytes]] = [
    (b"u1", b"\xff\xfe not utf-8"),
    (b"u1", b'{"type": "ad_click", "event_id": "x"'),
    (b"u1", b'{"type": ["ad_click"]}'),
    (b"u1", b'{"type": "ad_click", "event_id": "g", "event_time": "2026-01-01T00:00:00", "user_id": "u1", "ad_id": 5}'),
    (None, b"[]"),
]
#: Large malformed messages, one of each per second in the garbage phases (oversized: dead-lettered truncated).
GARBAGE_LARGE: list[tuple[bytes | None, bytes]] = [
    (
        b"u1",
        b'{"type": "content_search", "event_id": "g", "event_time": "2026-01-01T00:00:00Z", "user_id": "u1", '
        b'"query": "' + b"x" * 5000 + b'"}',
    ),
    (b"u2", b"x" * 70_000),
]

#: Share of each kind in the good load.
MIX = {
    "ad_click": 0.25,
    "content_play": 0.25,
    "content_complete": 0.10,
    "ad_request": 0.15,
    "profile_update": 0.05,
    "ad_upsert": 0.10,
    "search_query": 0.10,
}
BEHAVIOUR_SHARE = sum(v for k, v in MIX.items() if k not in {"ad_upsert", "search_query"})
BEHAVIOUR_EVENTS = 'adgen_events_total{topic="user-behavior"}'
SEARCH_EVENTS = 'adgen_events_total{topic="search-queries"}'


class LoadMaker:
    """Seeded events over the world's users and ads, stamped with the wall clock (a live stream)."""

    def __init__(self, assets: Assets, seed: int) -> None:
        self.rng = random.Random(seed)
        with open(assets.world / "events/ad-updates.jsonl", "rb") as f:
            ups = [AD_UPDATE_ADAPTER.validate_json(line) for line in f]
        self.ads = [u for u in ups if isinstance(u, AdUpsert)]
        users: set[str] = set()
        with open(assets.world / "events/user-behavior.jsonl", "rb") as f:
            for line in f:
                users.add(json.loads(line)["user_id"])
        self.users = sorted(users)
        self.kinds, self.weights = zip(*MIX.items(), strict=True)
        self.n = 0

    def next(self, kind: str | None = None) -> Any:
        self.n += 1
        kind = kind or self.rng.choices(self.kinds, self.weights)[0]
        now = datetime.now(UTC)
        eid = f"soak-{self.n}"
        user = self.rng.choice(self.users)
        ad = self.rng.choice(self.ads)
        if kind == "ad_click":
            return AdClick(event_id=eid, event_time=now, user_id=user, ad_id=ad.ad_id)
        if kind == "content_play":
            c = self.rng.randrange(500)
            return ContentPlay(event_id=eid, event_time=now, user_id=user, content_id=f"c{c}", title=f"video {c}")
        if kind == "content_complete":
            c = self.rng.randrange(500)
            return ContentComplete(event_id=eid, event_time=now, user_id=user, content_id=f"c{c}", title=f"video {c}")
        if kind == "ad_request":
            return AdRequest(event_id=eid, event_time=now, user_id=user)
        if kind == "profile_update":
            return ProfileUpdate(event_id=eid, event_time=now, user_id=user, arpu=round(self.rng.uniform(0, 50), 2))
        if kind == "ad_upsert":
            return ad.model_copy(update={"event_id": eid, "event_time": now, "ecpm": round(self.rng.uniform(1, 9), 3)})
        return SearchQuery(event_id=eid, event_time=now, query_id=f"q{self.n}", text=ad.name[:60])


# -- garbage at a high rate, in its own process ------------------------------------------------------------
def garbage_producer(bootstrap: str, topic: str, rate: float, on: Any, stop: Any, sent: Any) -> None:
    """Offer GARBAGE_SMALL at `rate`/s while `on` is set (a spawned process: the soak loop keeps its timing)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": False})
    n, started, offered = 0, time.monotonic(), 0
    while not stop.is_set():
        if not on.is_set():
            producer.poll(0.05)
            started, offered = time.monotonic(), 0
            on.wait(0.05)
            continue
        due = int((time.monotonic() - started) * rate) - offered
        for _ in range(max(0, min(due, 5000))):
            key, value = GARBAGE_SMALL[n % len(GARBAGE_SMALL)]
            while True:
                try:
                    producer.produce(topic, value=value, key=key)
                    break
                except BufferError:
                    producer.poll(0.01)
            n += 1
            offered += 1
        with sent.get_lock():
            sent.value = n
        producer.poll(0)
        time.sleep(0.005)
    producer.flush(30)


# -- search prober -----------------------------------------------------------------------------------------
class SearchProbe(threading.Thread):
    """GET /search on the worker at a fixed rate; keeps (monotonic time, latency s, status or error)."""

    def __init__(self, port: int, queries: list[str], rate: float) -> None:
        super().__init__(name="search-probe", daemon=True)
        self.url = f"http://127.0.0.1:{port}/search"
        self.queries, self.rate = queries, rate
        self.results: list[tuple[float, float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)
        while not self.stopping.wait(1.0 / self.rate):
            q = rng.choice(self.queries)
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}?{urllib.parse.urlencode({'q': q})}", timeout=10) as resp:
                    status = str(resp.status)
                    json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                status = str(exc.code)
            except (OSError, ValueError) as exc:
                status = type(exc).__name__
            self.results.append((t0, time.monotonic() - t0, status))

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        rows = [r for r in self.results if t0 <= r[0] < t1]
        ok = sorted(r[1] for r in rows if r[2] == "200")
        return {
            "probes": len(rows),
            "ok": len(ok),
            "errors": len(rows) - len(ok),
            "p50_s": ok[len(ok) // 2] if ok else None,
            "p99_s": ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None,
        }


# -- metrics helpers ---------------------------------------------------------------------------------------
def _hist(m: dict[str, float], name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a histogram (all label sets summed)."""
    out: dict[float, float] = {}
    for key, value in m.items():
        if key.startswith(f"{name}_bucket{{") and "le=" in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + value
    return out


def p99_between(before: dict[str, float], now: dict[str, float], name: str) -> float | None:
    """Upper bucket bound holding the 99th percentile of the observations made between two scrapes."""
    b, n = _hist(before, name), _hist(now, name)
    delta = sorted((le, n[le] - b.get(le, 0.0)) for le in n)
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return None
    for le, count in delta:
        if count >= 0.99 * total:
            return le
    return None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class LagProbe:
    """Lag seen from outside the worker: end offsets minus the committed offsets of the worker's window
    consumer group on user-behavior (the gauge inside the worker depends on the broker's high watermark)."""

    def __init__(self, stack: Stack) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from adgen.processors.window_consumer import group_id

        self.consumer = Consumer(
            {"bootstrap.servers": stack.settings.kafka.bootstrap_servers, "group.id": group_id(stack.settings)}
        )
        self.partitions = [TopicPartition("user-behavior", p) for p in range(4)]

    def committed_lag(self) -> float:
        committed = self.consumer.committed(self.partitions, timeout=5)
        lag = 0
        for tp in committed:
            _, high = self.consumer.get_watermark_offsets(tp, timeout=5)
            lag += max(0, high - max(tp.offset, 0))
        return float(lag)

    def close(self) -> None:
        self.consumer.close()


# -- fault injection ---------------------------------------------------------------------------------------
INJECTIONS = {
    "leak": """
import threading, time
def _leak(mb_per_min=float({arg})):
    hoard = []
    while True:
        hoard.append(bytearray(b"\\x01" * (1 << 20)))  # touched pages: resident
        time.sleep(60.0 / mb_per_min)
threading.Thread(target=_leak, name="injected-leak", daemon=True).start()
""",
    "slow-garbage": """
import sys, threading, time
def _patch(delay=float({arg})):
    while True:
        mod = sys.modules.get("adgen.processors.window_consumer")
        if mod is not None and hasattr(mod, "WindowConsumer"):
            break
        time.sleep(0.01)
    decode = mod.decode_batch
    def slow(*args, **kwargs):
        batch = decode(*args, **kwargs)
        time.sleep(delay * len(batch.letters))  # `delay` per dead letter, as a slow bad-input path would cost
        return batch
    mod.decode_batch = slow
threading.Thread(target=_patch, name="injected-slow-garbage", daemon=True).start()
""",
}


def injection_env(spec: str | None, work: Path) -> dict[str, str]:
    """Env that loads the injected fault into the worker (a sitecustomize on its PYTHONPATH)."""
    if not spec:
        return {}
    kind, _, arg = spec.partition(":")
    if kind not in INJECTIONS or not arg:
        raise SystemExit(f"--inject must be leak:MB_PER_MIN or slow-garbage:SECONDS, got {spec!r}")
    float(arg)
    folder = work / f"inject-{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(INJECTIONS[kind].replace("{arg}", arg))
    return {"PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])}


# -- the run -----------------------------------------------------------------------------------------------
def prepare_assets(args: argparse.Namespace) -> Assets:
    """World, index, untrained LEADRE checkpoint and a CI build for search (cached under --work)."""
    root = Path(args.work) / f"assets-u{args.users}-a{args.ads}"
    if (root / "ckpt" / "UNTRAINED").is_file():
        assets = Assets(root, root / "world", root / "ckpt")
    else:
        print(f"building world, index and untrained checkpoint in {root} ...", flush=True)
        assets = build_assets(root, users=args.users, ads=args.ads)
    ci = root / "var" / "index" / "ci"
    if not (ci / "model").is_dir():
        print("building the CI model and CI->ads index for search ...", flush=True)
        subprocess.run(
            [ADGEN, "ci", "build", "--world", str(assets.world), "--out", str(ci)],
            env={**os.environ, **assets.env()},
            check=True,
        )
    return assets


def measure_capacity(stack: Stack, maker: LoadMaker, events: int, env: dict[str, str]) -> Any:
    """Start the worker on a topic that already holds `events` behaviour events (then the world's history):
    its behaviour events/s over those first `events` is the capacity. Returns (worker, capacity)."""
    with EventProducer(stack.settings) as producer:
        for i in range(events):
            producer.send(maker.next(("ad_click", "content_play", "content_complete")[i % 3]))
    stack.produce_world(0).wait()
    total = events + sum(len(v) for v in stack.world_user_events().values())
    worker = stack.start_worker("soak", wait=False, **env)
    points: list[tuple[float, float]] = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if not worker.alive():
            raise RuntimeError(f"the worker exited during the capacity probe: {worker.log_path.read_text()[-2000:]}")
        try:
            count = worker.metrics().get(BEHAVIOUR_EVENTS, 0.0)
        except OSError:
            continue  # metrics endpoint not up yet
        points.append((time.monotonic(), count))
        if count >= total:
            break
    moving = [p for p in points if p[1] > 0]
    burst = [p for p in moving if p[1] <= events] or moving[:1]
    after = next((p for p in moving if p[1] >= events), None)
    if after is None or moving[-1][1] < total:
        raise RuntimeError(f"capacity probe did not finish: {points[-3:]} of {total}")
    first = burst[0]
    seconds = after[0] - first[0]
    capacity = {
        "events": after[1] - first[1],
        "seconds": seconds,
        "events_per_s": (after[1] - first[1]) / max(seconds, 1e-9),
        "load_avg": list(os.getloadavg()),
    }
    print(f"capacity: {capacity['events_per_s']:.0f} behaviour events/s ({capacity})", flush=True)
    stack.wait_started(worker)
    return worker, capacity


def phase_at(t: float, args: argparse.Namespace) -> str:
    if t < args.warmup_s:
        return "warmup"
    return "clean" if t < args.warmup_s + (args.minutes * 60 - args.warmup_s) / 2 else "garbage"


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    assets = prepare_assets(args)
    env = injection_env(args.inject, work)
    load_start = list(os.getloadavg())
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    stack = Stack.start(assets, work / f"stack-{int(time.time())}")
    samples: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    garbage_on, garbage_stop, garbage_sent = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    try:
        maker = LoadMaker(assets, args.seed)
        worker, capacity = measure_capacity(stack, maker, args.capacity_events, env)
        garbage_rate = args.garbage_fraction * capacity["events_per_s"]
        garbage = ctx.Process(
            target=garbage_producer,
            args=(stack.settings.kafka.bootstrap_servers, "user-behavior", garbage_rate, garbage_on, garbage_stop),
            kwargs={"sent": garbage_sent},
            daemon=True,
        )
        garbage.start()
        web_port = worker.web_port
        with open(assets.world / "queries" / "labels.jsonl") as f:
            texts = [json.loads(line)["text"] for line in f] + [a.name[:60] for a in maker.ads[:50]]
        probe = SearchProbe(web_port, texts, args.search_rate)
        producer = EventProducer(stack.settings)
        lag = LagProbe(stack)
        probe.start()
        print(f"soak: {args.minutes} min, good mix {args.rate}/s, garbage {garbage_rate:.0f}/s", flush=True)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started + args.sample_s
        sent_good, sent_search, sent_at_sample, large_sent = 0, 0, 0, 0
        garbage_at_sample, next_large, unresponsive = 0, 0.0, 0
        before, before_t = worker.metrics(), started
        while (now := time.monotonic()) < end:
            t = now - started
            phase = phase_at(t, args)
            garbage_phase = phase == "garbage" or (phase == "warmup" and t >= args.warmup_s / 2)
            if garbage_phase != garbage_on.is_set():
                garbage_on.set() if garbage_phase else garbage_on.clear()
            for _ in range(max(0, int(t * args.rate) - sent_good)):
                event = maker.next()
                producer.send(event)
                sent_good += 1
                sent_search += isinstance(event, SearchQuery)
            if garbage_phase and now >= next_large:  # one large message per second of garbage phase
                key, value = GARBAGE_LARGE[large_sent % len(GARBAGE_LARGE)]
                producer.send_raw("user-behavior", key, value)
                large_sent += 1
                next_large = now + 1.0
            if now >= next_sample:
                try:
                    m = worker.metrics()
                except OSError as exc:  # the worker did not answer its scrape: a failed interval, not a crash
                    unresponsive += 1
                    print(f"t={t:5.0f}s worker metrics did not answer ({exc}); interval counted as unresponsive")
                    next_sample += args.sample_s
                    continue
                dt = now - before_t
                garbage_now = garbage_sent.value + large_sent
                committed_lag = lag.committed_lag()
                arrival = BEHAVIOUR_SHARE * args.rate + (garbage_now - garbage_at_sample) / dt
                search = probe.between(before_t, now)
                sample = {
                    "t_s": round(t, 1),
                    "phase": phase,
                    "offered_good_per_s": (sent_good - sent_at_sample) / dt,
                    "offered_garbage_per_s": (garbage_now - garbage_at_sample) / dt,
                    "consumed_good_per_s": (m.get("adgen_events_total", 0) - before.get("adgen_events_total", 0)) / dt,
                    "dead_letters_per_s": (
                        m.get("adgen_dead_letters_total", 0) - before.get("adgen_dead_letters_total", 0)
                    )
                    / dt,
                    "committed_lag": committed_lag,
                    "lag_s_of_input": committed_lag / max(arrival, 1.0),
                    "request_to_features_p99_s": p99_between(before, m, "adgen_request_to_features_seconds"),
                    "redis_write_p99_s": p99_between(before, m, "adgen_redis_write_seconds"),
                    "generation_queue": m.get("adgen_generation_queue_depth", 0.0),
                    "worker_rss_mb": rss_bytes(worker.process.pid) / 2**20,
                    "search_http": search,
                    "search_topic_served": m.get(SEARCH_EVENTS, 0.0),
                }
                samples.append(sample)
                print(
                    f"t={t:5.0f}s {phase:7s} good {sample['offered_good_per_s']:5.1f}->"
                    f"{sample['consumed_good_per_s']:6.1f}/s garbage {sample['offered_garbage_per_s']:7.0f}/s "
                    f"lag {committed_lag:6.0f} ({sample['lag_s_of_input']:.2f}s) rss {sample['worker_rss_mb']:.0f} MB "
                    f"search {search['ok']}/{search['probes']} p99 {search['p99_s']}",
                    flush=True,
                )
                before, before_t, sent_at_sample, garbage_at_sample = m, now, sent_good, garbage_now
                next_sample += args.sample_s
            time.sleep(0.005)
        garbage_on.clear()
        producer.flush()
        producer.close()
        probe.stopping.set()
        # the topic path must answer every query it was given (the world's own queries are counted too)
        with open(assets.world / "events" / "search-queries.jsonl", "rb") as f:
            world_queries = sum(1 for _ in f)
        drain_deadline = time.monotonic() + 120
        served = -1.0
        while served < sent_search and time.monotonic() < drain_deadline:
            with contextlib.suppress(OSError):
                served = worker.metrics().get(SEARCH_EVENTS, 0.0) - world_queries
            time.sleep(1)
        lag.close()
        garbage_stop.set()
        garbage.join(60)
    finally:
        stack.stop()
    extras = {
        "unresponsive_intervals": unresponsive,
        "capacity": capacity,
        "garbage_rate_target": garbage_rate,
        "events_sent_good": sent_good,
        "garbage_sent": garbage_sent.value + large_sent,
        "search_queries_produced": sent_search,
        "search_queries_served": served,
        "search_http_total": probe.between(started, time.monotonic() + 1),
        "load_avg_start": load_start,
        "load_avg_end": list(os.getloadavg()),
        "started_at": started_at,
    }
    return judge(args, samples, extras)


# -- verdicts ----------------------------------------------------------------------------------------------
def _mean(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def judge(args: argparse.Namespace, samples: list[dict[str, Any]], extras: dict[str, Any]) -> dict[str, Any]:
    """Every verdict from the samples; a verdict without data to judge is False, never vacuously True."""
    per_minute = max(1, round(60 / args.sample_s))
    settle = args.settle_s

    def phase(name: str) -> list[dict[str, Any]]:
        rows = [s for s in samples if s["phase"] == name]
        return [s for s in rows if s["t_s"] - rows[0]["t_s"] >= settle] if rows else []

    clean, dirty = phase("clean"), phase("garbage")
    measured = [s for s in samples if s["phase"] != "warmup"]
    baseline = measured[:per_minute]
    last = measured[-per_minute:]
    capacity = extras["capacity"]["events_per_s"]
    garbage_rate = _mean(dirty, "offered_garbage_per_s")
    good_clean, good_dirty = _mean(clean, "consumed_good_per_s"), _mean(dirty, "consumed_good_per_s")
    rss_base, rss_end = _mean(baseline, "worker_rss_mb"), _mean(last, "worker_rss_mb")
    max_lag_s = max((s["lag_s_of_input"] for s in measured), default=float("inf"))
    http = extras["search_http_total"]
    intervals_without_answers = sum(1 for s in samples if s["search_http"]["ok"] == 0)
    produced = extras["search_queries_produced"]
    ratio = good_dirty / good_clean if good_clean > 0 else float("nan")
    offered_clean, offered_dirty = _mean(clean, "offered_good_per_s"), _mean(dirty, "offered_good_per_s")
    kept_clean = good_clean / offered_clean if offered_clean > 0 else float("nan")
    kept_dirty = good_dirty / offered_dirty if offered_dirty > 0 else float("nan")
    figures = {
        "garbage_over_capacity": garbage_rate / capacity if capacity > 0 else float("nan"),
        "good_consumed_per_s_clean_half": good_clean,
        "good_consumed_per_s_garbage_half": good_dirty,
        "good_offered_per_s": _mean(measured, "offered_good_per_s"),
        "garbage_half_over_clean_half": ratio,
        "good_consumed_over_offered_clean_half": kept_clean,
        "good_consumed_over_offered_garbage_half": kept_dirty,
        "dead_letters_per_s_garbage_half": _mean(dirty, "dead_letters_per_s"),
        "rss_warmup_point_mb": rss_base,
        "rss_end_mb": rss_end,
        "rss_end_over_warmup_point": rss_end / rss_base if rss_base > 0 else float("nan"),
        "rss_first_sample_mb": samples[0]["worker_rss_mb"] if samples else float("nan"),
        "max_lag_s_of_input": max_lag_s,
        "max_committed_lag": max((s["committed_lag"] for s in measured), default=float("nan")),
        "request_to_features_p99_s_worst_interval": max(
            (s["request_to_features_p99_s"] for s in measured if s["request_to_features_p99_s"] is not None),
            default=None,
        ),
        "redis_write_p99_s_worst_interval": max(
            (s["redis_write_p99_s"] for s in measured if s["redis_write_p99_s"] is not None), default=None
        ),
        "search_http_error_share": http["errors"] / http["probes"] if http["probes"] else float("nan"),
        "search_http_p50_s": http["p50_s"],
        "search_http_p99_s": http["p99_s"],
        "search_http_worst_interval_p99_s": max(
            (s["search_http"]["p99_s"] for s in samples if s["search_http"]["p99_s"] is not None), default=None
        ),
        "search_intervals_without_answers": intervals_without_answers,
        "search_topic_served_share": extras["search_queries_served"] / produced if produced else float("nan"),
    }
    verdicts = {
        "garbage_at_least_half_capacity": figures["garbage_over_capacity"] >= 0.5,
        # the ratio alone passes when both halves starve (a backlog left by the warm-up): each half must also
        # consume the good events offered to it
        "garbage_costs_little_throughput": (
            ratio >= args.min_good_ratio and kept_clean >= args.min_good_ratio and kept_dirty >= args.min_good_ratio
        ),
        "memory_flat": figures["rss_end_over_warmup_point"] <= args.max_rss_growth,
        "lag_bounded": max_lag_s <= args.max_lag_s,
        "search_served": (
            figures["search_http_error_share"] <= args.max_search_error_share
            and http["p99_s"] is not None
            and http["p99_s"] <= args.max_search_p99_s
            and intervals_without_answers == 0
            and figures["search_topic_served_share"] >= 1.0
        ),
    }
    verdicts["worker_always_answered"] = extras.get("unresponsive_intervals", 0) == 0
    verdicts["pass"] = all(verdicts.values())
    targets = {
        "garbage_over_capacity_min": 0.5,
        "garbage_half_over_clean_half_min": args.min_good_ratio,
        "good_consumed_over_offered_min": args.min_good_ratio,
        "rss_end_over_warmup_point_max": args.max_rss_growth,
        "max_lag_s": args.max_lag_s,
        "search_http_error_share_max": args.max_search_error_share,
        "search_http_p99_s_max": args.max_search_p99_s,
    }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in {"rejudge"}}
    return {
        "config": config,
        **{k: v for k, v in extras.items()},
        "figures": figures,
        "targets": targets,
        "verdicts": verdicts,
        "samples": samples,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t_s"] for x in s]
    fig, axes = plt.subplots(5, 1, figsize=(9, 12), sharex=True)
    axes[0].plot(t, [x["offered_good_per_s"] for x in s], label="good offered")
    axes[0].plot(t, [x["consumed_good_per_s"] for x in s], label="good consumed")
    axes[0].set_ylabel("good events/s")
    axes[0].legend()
    axes[1].plot(t, [x["offered_garbage_per_s"] for x in s], color="C3", label="garbage offered")
    axes[1].axhline(result["capacity"]["events_per_s"], color="grey", ls="--", label="capacity (this run)")
    axes[1].set_ylabel("garbage/s")
    axes[1].legend()
    axes[2].plot(t, [x["lag_s_of_input"] for x in s], label="lag (s of input)")
    axes[2].plot(t, [x["search_http"]["p99_s"] or 0 for x in s], label="search HTTP p99 (s)")
    axes[2].plot(t, [x["request_to_features_p99_s"] or 0 for x in s], label="request->features p99 (s)")
    axes[2].set_ylabel("seconds")
    axes[2].legend()
    axes[3].plot(t, [x["search_http"]["errors"] for x in s], color="C3", label="search HTTP errors")
    axes[3].set_ylabel("errors / interval")
    axes[3].legend()
    axes[4].plot(t, [x["worker_rss_mb"] for x in s])
    axes[4].axhline(result["figures"]["rss_warmup_point_mb"], color="grey", ls="--", label="warm-up point")
    axes[4].axhline(
        result["figures"]["rss_warmup_point_mb"] * result["targets"]["rss_end_over_warmup_point_max"],
        color="C3",
        ls=":",
        label="bound",
    )
    axes[4].set_ylabel("worker RSS (MB)")
    axes[4].set_xlabel("seconds")
    axes[4].legend()
    for ax in axes:
        for x in s:
            if x["phase"] == "garbage":
                ax.axvspan(x["t_s"] - result["config"]["sample_s"], x["t_s"], color="C3", alpha=0.04, lw=0)
    cfg = result["config"]
    title = f"adgen soak: {cfg['minutes']} min, good {cfg['rate']}/s, garbage at {cfg['garbage_fraction']} x capacity"
    if cfg.get("inject"):
        title += f", injected {cfg['inject']}"
    fig.suptitle(f"{title}: {'PASS' if result['verdicts']['pass'] else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--rate", type=float, default=40.0, help="Good events offered per second (the mix).")
    parser.add_argument("--warmup-s", type=float, default=180.0, help="Warm-up; RSS baseline = the minute after.")
    parser.add_argument("--settle-s", type=float, default=30.0, help="Skipped at the start of each half.")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--capacity-events", type=int, default=100_000)
    parser.add_argument("--garbage-fraction", type=float, default=0.55, help="Garbage rate / measured capacity.")
    parser.add_argument("--search-rate", type=float, default=2.0, help="GET /search probes per second.")
    parser.add_argument("--min-good-ratio", type=float, default=0.9)
    parser.add_argument("--max-rss-growth", type=float, default=1.10)
    parser.add_argument("--max-lag-s", type=float, default=30.0)
    parser.add_argument("--max-search-error-share", type=float, default=0.0)
    parser.add_argument("--max-search-p99-s", type=float, default=1.0)
    parser.add_argument("--inject", default=None, help="leak:MB_PER_MIN or slow-garbage:SECONDS (must FAIL).")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--ads", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "var" / "soak")
    parser.add_argument("--out", type=Path, default=REPO / "var" / "runs" / "soak" / "soak.json")
    parser.add_argument("--rejudge", type=Path, help="Judge and plot a recorded run's JSON again; no new run.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rejudge:
        recorded = json.loads(args.rejudge.read_text())
        args = argparse.Namespace(**{**recorded["config"], "out": args.rejudge, "rejudge": None})
        extras = {k: v for k, v in recorded.items() if k not in {"config", "figures", "targets", "verdicts", "samples"}}
        result = judge(args, recorded["samples"], extras)
    else:
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    png = Path(args.out).with_suffix(".png")
    plot(result, png)
    print(json.dumps({k: result[k] for k in ("capacity", "figures", "verdicts")}, indent=1))
    print(f"wrote {args.out} and {png}")
    print("PASS" if result["verdicts"]["pass"] else "FAIL", result["verdicts"])
    return 0 if result["verdicts"]["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
