"""Scale-out benchmark: one `adgen worker` vs two on the same topics, in the same run, on the embedded broker.

    .venv/bin/python bench/bench_scaleout.py [--events 200000] [--users 1000] [--ads 600]
        [--out bench/results/scaleout.json]    (`adgen bench --only scaleout` runs it; docs: `adgen bench report`)

One seeded world gives the index and the ads; an untrained model of the built-in default size (hidden 256,
4 layers: decode cost like a real one, lists meaningless) is served. The topics are filled once, before
any worker runs: `--events` behaviour events over `--users` users, then one ad request per user. Then each
phase reads all of it from the beginning under its own consumer group and Redis env:

    one   1 worker              two   2 workers in one group (4 user-behavior partitions: 2 each)

and the metrics of every worker are sampled every 0.2 s until every event is counted and every user has a
list. Reported per phase: behaviour events/s over the whole drain (first to last event, rebalance included)
and over the stretch in which every worker was consuming, and generated users/s (first to last list; the
budget is set far above what the decoder can do, so generation is decoder-bound). The ratios two/one are
the figures to compare: on a shared 2-core machine both workers compete for the same cores, so they show
what a second process buys here, not what a second machine would. The JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))  # the worker harness

from stack import Stack, build_assets

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SAMPLE_S = 0.2
EVENTS_KEY = 'adgen_events_total{topic="user-behavior"}'
GENERATED_KEY = "adgen_generations_total"


def default_size_model(checkpoint: Path, hidden: int, layers: int) -> None:
    """Replace the harness's tiny random model by one of the built-in default size (same tokenizer)."""
    from adgen.model.lm import LMConfig, build_lm, save_lm
    from adgen.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(checkpoint / "tokenizer")
    config = LMConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    shutil.rmtree(checkpoint / "lm")
    save_lm(build_lm(config), checkpoint / "lm")


def behaviour(n: int, users: int, ads: list[str], seed: int = 0) -> list[Any]:
    """`n` clicks, completed videos and searches over `users` users, then one ad request per user."""
    from adgen.streams.events import AdClick, AdRequest, ContentComplete, ContentSearch, ProfileUpdate

    rng = random.Random(seed)
    names = [f"u{i:06d}" for i in range(users)]
    out: list[Any] = [
        ProfileUpdate(
            event_id=f"p{u}", event_time=T0, user_id=u, age=20 + i % 50, arpu=round(rng.lognormvariate(1, 1.5), 3)
        )
        for i, u in enumerate(names)
    ]
    for i in range(n - users):
        user, at = names[rng.randrange(users)], T0 + timedelta(seconds=i + 1)
        kind = rng.random()
        if kind < 0.4:
            out.append(AdClick(event_id=f"e{i}", event_time=at, user_id=user, ad_id=ads[rng.randrange(len(ads))]))
        elif kind < 0.8:
            out.append(
                ContentComplete(
                    event_id=f"e{i}",
                    event_time=at,
                    user_id=user,
                    content_id=f"v{rng.randrange(500)}",
                    title=f"video {rng.randrange(500)}",
                    category=f"Cat{rng.randrange(20)}",
                )
            )
        else:
            out.append(
                ContentSearch(event_id=f"e{i}", event_time=at, user_id=user, query=f"query {rng.randrange(300)}")
            )
    end = T0 + timedelta(seconds=n + 10)
    out += [
        AdRequest(event_id=f"r{u}", event_time=end + timedelta(milliseconds=i), user_id=u) for i, u in enumerate(names)
    ]
    return out


def sample(stack: Stack, names: list[str]) -> dict[str, tuple[float, float]]:
    """(events, generations) per worker now; a worker not answering yet counts zero."""
    out = {}
    for name in names:
        try:
            m = stack.workers[name].metrics()
        except OSError:
            m = {}
        out[name] = (m.get(EVENTS_KEY, 0.0), m.get(GENERATED_KEY, 0.0))
    return out


def run_phase(stack: Stack, phase: str, workers: int, events: int, users: int, timeout_s: float) -> dict[str, Any]:
    env = {"ADGEN_WORKER__APP_ID": f"scale-{phase}", "ADGEN_REDIS__ENV": f"scale-{phase}"}
    names = [f"{phase}{i}" for i in range(workers)]
    for name in names:
        stack.start_worker(name, wait=False, **env)
    samples: list[tuple[float, dict[str, tuple[float, float]]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            counts = sample(stack, names)
            samples.append((now, counts))
            if sum(e for e, _ in counts.values()) >= events and sum(g for _, g in counts.values()) >= users:
                break
            for name in names:
                if not stack.workers[name].alive():
                    raise RuntimeError(f"worker {name} exited; log: {stack.workers[name].log_path}")
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
        else:
            raise RuntimeError(f"phase {phase}: not done within {timeout_s}s; last counts {samples[-1][1]}")
    finally:
        for name in names:
            stack.kill(name)
    return summarise(samples, names, events, users)


def _first(samples: list[tuple[float, float]], threshold: float) -> float:
    return next(t for t, v in samples if v >= threshold)


#: an overlap shorter than this is a few metric steps (workers publish counts per batch): too short to be a rate
MIN_OVERLAP_S = 2.0


def all_consuming(samples: list[tuple[float, dict[str, tuple[float, float]]]], names: list[str]) -> tuple[float, float]:
    """(seconds, events) of the stretch in which every worker was consuming: from the sample where the last of
    them had counted its first event to the sample where the first of them had counted all it would count.
    Bounding by each worker's first and last count, not by sample-to-sample rises, makes the stretch immune to
    counts that move in per-batch steps (a worker between two batches has not stopped consuming)."""
    final = samples[-1][1]
    starts = [next(t for t, c in samples if c[n][0] >= 1) for n in names]
    ends = [next(t for t, c in samples if c[n][0] >= final[n][0]) for n in names]
    begin, end = max(starts), min(ends)
    if end <= begin:
        return 0.0, 0.0
    total = {t: sum(c[n][0] for n in names) for t, c in samples}
    return end - begin, total[end] - total[begin]


def summarise(
    samples: list[tuple[float, dict[str, tuple[float, float]]]], names: list[str], events: int, users: int
) -> dict[str, Any]:
    total_events = [(t, sum(c[n][0] for n in names)) for t, c in samples]
    total_gen = [(t, sum(c[n][1] for n in names)) for t, c in samples]
    start, done = _first(total_events, 1), _first(total_events, events)
    gen_start, gen_done = _first(total_gen, 1), _first(total_gen, users)
    span, count = all_consuming(samples, names)
    return {
        "workers": len(names),
        "events": events,
        "events_per_s": events / max(done - start, 1e-9),
        "drain_s": done - start,
        "events_per_s_all_consuming": count / span if span >= MIN_OVERLAP_S else None,
        "all_consuming_s": span,
        "all_consuming_events": count,
        "users_generated": users,
        "generations_per_s": (users - 1) / max(gen_done - gen_start, 1e-9),
        "generation_s": gen_done - gen_start,
        "per_worker_events": {n: samples[-1][1][n][0] for n in names},
        "per_worker_generations": {n: samples[-1][1][n][1] for n in names},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--ads", type=int, default=600)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scaleout.json"))
    args = parser.parse_args()
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="adgen-scaleout-"))
    try:
        assets = build_assets(work / "assets", users=50, ads=args.ads)
        default_size_model(assets.checkpoint, args.hidden, args.layers)
        from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot
        from adgen.streams.producer import EventProducer

        ads = sorted(read_index_snapshot(SnapshotStore(work / "assets/var/index", INDEX_KIND).latest()).sid_map.items())
        budget = {
            "ADGEN_BUDGET__GENERATIONS_PER_SECOND": "100000",
            "ADGEN_BUDGET__BURST": "100000",
            "ADGEN_BUDGET__QUEUE_CAPACITY": str(2 * args.users),
            "ADGEN_MODEL__TOP_K": "20",
            "ADGEN_MODEL__BEAMS": "20",
        }
        stack = Stack.start(assets, work / "stack", **budget)
        try:
            events = behaviour(args.events, args.users, ads)
            started = time.perf_counter()
            with EventProducer(stack.settings) as producer:
                for event in events:
                    producer.send(event)
            produce_s = time.perf_counter() - started
            print(f"produced {len(events)} events in {produce_s:.1f}s", file=sys.stderr)
            phases = {}
            for phase, workers in (("one", 1), ("two", 2)):
                phases[phase] = run_phase(stack, phase, workers, len(events), args.users, args.timeout)
                print(f"{phase}: {json.dumps(phases[phase])}", file=sys.stderr)
        finally:
            stack.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, two = phases["one"], phases["two"]
    steady = (
        two["events_per_s_all_consuming"] / one["events_per_s_all_consuming"]
        if two["events_per_s_all_consuming"] and one["events_per_s_all_consuming"]
        else None
    )
    result = {
        "benchmark": "scale-out: 1 vs 2 workers, same topics, same run, embedded Tansu + redis-server",
        "command": " ".join([".venv/bin/python", "bench/bench_scaleout.py", *sys.argv[1:]]),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "config": {
            **vars(args),
            "out": str(args.out),
            "model": f"random init, hidden {args.hidden} x {args.layers} layers",
        },
        "one": one,
        "two": two,
        "ratios": {
            "events_per_s": two["events_per_s"] / one["events_per_s"],
            "events_per_s_all_consuming": steady,
            "generations_per_s": two["generations_per_s"] / one["generations_per_s"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    from adgen.figures.scaleout import summary_table

    print(summary_table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
