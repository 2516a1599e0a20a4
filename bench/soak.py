"""Soak: a sustained, fixed-rate mix of every input (behaviour events, ad requests, profile and ad updates,
search queries) against one real `adgen worker` on the embedded Tansu broker and redis-server. In the
second half, garbage (bad UTF-8, truncated JSON, wrong types, oversized) is mixed into user-behavior on
top of the good load: the good-event throughput of the two halves is compared (a ratio in the report).

    .venv/bin/python bench/soak.py --minutes 10 --rate 60 [--out var/runs/soak/soak.json]

Every `--sample-s` seconds it records offered and consumed throughput, request->features p99 and Redis
write p99 (from the worker's histograms, per interval), consumer lag and the worker's RSS. It prints a
table, writes JSON (+ a PNG plot next to it) and judges the run against baselines measured in the same
run: memory is flat if RSS over the last minute is within --max-rss-growth of RSS over the minute at
half-time (the first half is allowed to fill the worker's bounded caches, e.g. the 256 MiB prefix K/V
cache of the decoder; the growth from the first minute is reported too), and lag is bounded if it
never exceeds --max-lag-s seconds of input. Exit code 1 if either fails. Runs shorter than three
minutes use thirds of the run instead of minutes.

The worker's model is a randomly initialised LM (tests/reliability/stack.py builds the world, index and
checkpoint), so the generation cost is real but the lists are meaningless. Search queries are produced
to their topic; the worker serves them only when a CI model is configured (none here), and the report
gives both counts rather than hiding that.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reliability"))

from stack import Assets, Stack, build_assets  # noqa: E402

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

#: Bad messages mixed into user-behavior in the second half of the run (decoder must dead-letter them).
GARBAGE: list[tuple[bytes | None, bytes]] = [
    (b"u1", b"\xff\xfe not utf-8"),
    (b"u1", b'{"type": "ad_click", "event_id": "x"'),
    (b"u1", b'{"type": ["ad_click"]}'),
    (b"u1", b'{"type": "ad_click", "event_id": "g", "event_time": "2026-01-01T00:00:00", "user_id": "u1", "ad_id": 5}'),
    (
        b"u1",
        b'{"type": "content_search", "event_id": "g", "event_time": "2026-01-01T00:00:00Z", "user_id": "u1", '
        b'"query": "' + b"x" * 5000 + b'"}',
    ),
    (None, b"[]"),
    (b"u2", b"x" * 70_000),
]

#: Share of each kind in the offered load.
MIX = {
    "ad_click": 0.25,
    "content_play": 0.25,
    "content_complete": 0.10,
    "ad_request": 0.15,
    "profile_update": 0.05,
    "ad_upsert": 0.10,
    "search_query": 0.10,
}


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

    def next(self) -> Any:
        self.n += 1
        kind = self.rng.choices(self.kinds, self.weights)[0]
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    assets_dir = work / f"assets-u{args.users}-a{args.ads}"
    if (assets_dir / "ckpt" / "UNTRAINED").is_file():
        assets = Assets(assets_dir, assets_dir / "world", assets_dir / "ckpt")
    else:
        print(f"building world, index and untrained checkpoint in {assets_dir} ...", flush=True)
        assets = build_assets(assets_dir, users=args.users, ads=args.ads)
    stack = Stack.start(assets, work / f"stack-{int(time.time())}")
    samples: list[dict[str, Any]] = []
    try:
        worker = stack.start_worker("soak")
        print("replaying the world first (history), then the fixed-rate mix ...", flush=True)
        stack.produce_world(0).wait()
        maker = LoadMaker(assets, args.seed)
        producer = EventProducer(stack.settings)
        probe = LagProbe(stack)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started + args.sample_s
        sent_total, sent_at_sample, garbage_sent = 0, 0, 0
        before = worker.metrics()
        before_t = started
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - started) * args.rate) - sent_total
            garbage_phase = now - started >= args.minutes * 30
            for _ in range(max(0, due)):
                producer.send(maker.next())
                sent_total += 1
                if garbage_phase and maker.rng.random() < args.garbage_share:  # on top of the good load
                    key, value = GARBAGE[garbage_sent % len(GARBAGE)]
                    producer.send_raw("user-behavior", key, value)
                    garbage_sent += 1
            if now >= next_sample:
                m = worker.metrics()
                dt = now - before_t
                lag = m.get("adgen_consumer_lag", 0.0)
                committed_lag = probe.committed_lag()
                sample = {
                    "t_s": round(now - started, 1),
                    "garbage_phase": now - started >= args.minutes * 30,
                    "offered_per_s": (sent_total - sent_at_sample) / dt,
                    "consumed_per_s": (m.get("adgen_events_total", 0) - before.get("adgen_events_total", 0)) / dt,
                    "consumer_lag": lag,
                    "committed_lag": committed_lag,
                    "lag_s_of_input": max(lag, committed_lag) / args.rate,
                    "request_to_features_p99_s": p99_between(before, m, "adgen_request_to_features_seconds"),
                    "redis_write_p99_s": p99_between(before, m, "adgen_redis_write_seconds"),
                    "generation_queue": m.get("adgen_generation_queue_depth", 0.0),
                    "worker_rss_mb": rss_bytes(worker.process.pid) / 2**20,
                    "dead_letters": m.get("adgen_dead_letters_total", 0.0),
                    "search_served": m.get('adgen_events_total{topic="search-queries"}', 0.0),
                }
                samples.append(sample)
                print(
                    f"t={sample['t_s']:6.0f}s offered {sample['offered_per_s']:6.1f}/s consumed "
                    f"{sample['consumed_per_s']:6.1f}/s lag {lag:4.0f} (committed {committed_lag:5.0f}) p99 req->feat "
                    f"{sample['request_to_features_p99_s']} redis {sample['redis_write_p99_s']} "
                    f"rss {sample['worker_rss_mb']:.0f} MB",
                    flush=True,
                )
                before, before_t, sent_at_sample = m, now, sent_total
                next_sample += args.sample_s
            time.sleep(0.005)
        producer.flush()
        producer.close()
        probe.close()
        search_lag = _search_topic_backlog(stack)
    finally:
        stack.stop()
    result = judge(args, samples, sent_total, search_lag)
    result["garbage_sent"] = garbage_sent
    return result


class LagProbe:
    """Lag seen from outside the worker: end offsets minus the committed offsets of the worker's window
    consumer group on user-behavior (the gauge inside the worker depends on the broker's high-watermark
    reporting)."""

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


def _search_topic_backlog(stack: Stack) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": stack.settings.kafka.bootstrap_servers, "group.id": "soak-probe"})
    try:
        total = 0
        for p in range(2):
            _, high = consumer.get_watermark_offsets(TopicPartition("search-queries", p), timeout=5)
            total += high
        return total
    finally:
        consumer.close()


def judge(args: argparse.Namespace, samples: list[dict[str, Any]], sent: int, search_backlog: int) -> dict[str, Any]:
    warm = [s for s in samples if s["t_s"] > args.warmup_s] or samples
    clean = [s for s in warm if not s.get("garbage_phase")]
    dirty = [s for s in warm if s.get("garbage_phase")]
    third = max(1, len(warm) // 3)  # short runs: first vs last third; long runs: first vs last minute
    per_minute = max(1, int(60 / args.sample_s))
    span = min(third, per_minute)
    baseline, last = warm[:span], warm[-span:]
    mid = len(warm) // 2
    half = warm[max(0, mid - span) : mid] or baseline

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    def p99s(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = sorted(r[key] for r in rows if r[key] is not None)
        return vals[min(len(vals) - 1, int(0.99 * len(vals)))] if vals else None

    rss_base, rss_half, rss_end = (mean(rows, "worker_rss_mb") for rows in (baseline, half, last))
    max_lag_s = max((s["lag_s_of_input"] for s in warm), default=0.0)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "events_sent": sent,
        "offered_per_s": mean(warm, "offered_per_s"),
        "consumed_per_s": mean(warm, "consumed_per_s"),
        "consumed_over_offered": mean(warm, "consumed_per_s") / max(mean(warm, "offered_per_s"), 1e-9),
        "request_to_features_p99_s_worst_interval": p99s(warm, "request_to_features_p99_s"),
        "redis_write_p99_s_worst_interval": p99s(warm, "redis_write_p99_s"),
        "max_consumer_lag": max((s["consumer_lag"] for s in warm), default=0.0),
        "max_committed_lag": max((s["committed_lag"] for s in warm), default=0.0),
        "max_lag_s_of_input": max_lag_s,
        "good_consumed_per_s_clean_half": mean(clean, "consumed_per_s"),
        "good_consumed_per_s_garbage_half": mean(dirty, "consumed_per_s"),
        "garbage_half_over_clean_half": mean(dirty, "consumed_per_s") / max(mean(clean, "consumed_per_s"), 1e-9),
        "dead_letters": samples[-1]["dead_letters"] if samples else 0.0,
        "rss_baseline_mb": rss_base,
        "rss_end_mb": rss_end,
        "rss_end_over_baseline": rss_end / rss_base if rss_base else None,
        "rss_half_mb": rss_half,
        "rss_end_over_half": rss_end / rss_half if rss_half else None,
        "search_queries_produced": search_backlog,
        "search_queries_served": samples[-1].get("search_served", 0.0) if samples else 0.0,
        "samples": samples,
    }
    ok_rss = result["rss_end_over_half"] is not None and result["rss_end_over_half"] <= args.max_rss_growth
    ok_lag = max_lag_s <= args.max_lag_s
    result["memory_flat"] = ok_rss
    result["lag_bounded"] = ok_lag
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t_s"] for x in s]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [x["offered_per_s"] for x in s], label="offered")
    axes[0].plot(t, [x["consumed_per_s"] for x in s], label="consumed")
    axes[0].set_ylabel("events/s")
    axes[0].legend()
    axes[1].plot(t, [x["request_to_features_p99_s"] or 0 for x in s], label="request->features p99")
    axes[1].plot(t, [x["redis_write_p99_s"] or 0 for x in s], label="redis write p99")
    axes[1].set_ylabel("seconds (bucket bound)")
    axes[1].legend()
    axes[2].plot(t, [x["consumer_lag"] for x in s], label="worker gauge")
    axes[2].plot(t, [x["committed_lag"] for x in s], label="end - committed (user-behavior)")
    axes[2].set_ylabel("consumer lag (events)")
    axes[2].legend()
    axes[3].plot(t, [x["worker_rss_mb"] for x in s])
    axes[3].set_ylabel("worker RSS (MB)")
    axes[3].set_xlabel("seconds")
    fig.suptitle(f"adgen soak: {result['config']['rate']} events/s for {result['config']['minutes']} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=60.0, help="Offered events per second (all kinds).")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--max-rss-growth", type=float, default=1.10, help="RSS(last min) / RSS(half-time min).")
    parser.add_argument("--max-lag-s", type=float, default=30.0, help="Bound on lag, in seconds of input.")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--ads", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--garbage-share", type=float, default=0.2, help="Bad messages per good one, 2nd half.")
    parser.add_argument("--work", type=Path, default=REPO / "var" / "soak")
    parser.add_argument("--out", type=Path, default=REPO / "var" / "runs" / "soak" / "soak.json")
    parser.add_argument("--rejudge", type=Path, help="Judge and plot a recorded run's JSON again; no new run.")
    args = parser.parse_args()
    if args.rejudge:
        recorded = json.loads(args.rejudge.read_text())
        shape = {k: v for k, v in recorded["config"].items() if k in {"minutes", "rate", "sample_s", "warmup_s"}}
        args = argparse.Namespace(**{**vars(args), **shape, "out": args.rejudge, "rejudge": None})
        result = judge(args, recorded["samples"], recorded["events_sent"], recorded.get("search_queries_unconsumed", 0))
        result["garbage_sent"] = recorded.get("garbage_sent", 0)
    else:
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    png = args.out.with_suffix(".png")
    plot(result, png)
    summary = {k: v for k, v in result.items() if k not in {"samples", "config"}}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} and {png}")
    verdict = result["memory_flat"] and result["lag_bounded"]
    print(
        "PASS" if verdict else "FAIL",
        "(memory flat:",
        result["memory_flat"],
        "lag bounded:",
        result["lag_bounded"],
        ")",
    )
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
