"""`adgen demo`: the whole system on the embedded default, end to end, with a summary at the end.

Each offline stage is a real `adgen` sub-command run as a child process (so its own progress bar shows)
and is skipped when its output already exists, so a second run reuses the world, index, model and CI
build (a cached checkpoint) and goes straight to the streaming part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False)
console = Console()

ADGEN = str(Path(sys.executable).parent / "adgen")
DEFAULT_TRAIN_CONFIG = Path("configs/demo.yaml")


class DemoError(RuntimeError):
    """A stage failed; the message says which and where its log is."""


def _stage(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    """Run one `adgen` stage in the foreground (its progress shows); fail loudly with its exit code."""
    started = time.perf_counter()
    proc = subprocess.run([ADGEN, *args], env=env, check=False)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit {proc.returncode}): adgen {' '.join(args)}")
    console.print(f"[green]✓[/green] {what} in {time.perf_counter() - started:.1f}s")


def _paths_env(root: Path) -> dict[str, str]:
    return {
        "ADGEN_PATHS__WORLD": str(root / "world"),
        "ADGEN_PATHS__INDEX": str(root / "index"),
        "ADGEN_PATHS__MODELS": str(root / "models"),
        "ADGEN_PATHS__RUNS": str(root / "runs"),
        "ADGEN_PATHS__EMBEDDING_CACHE": str(root / "cache" / "embeddings"),
        "ADGEN_PATHS__STATE": str(root / "state"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _train_config(root: Path, base: Path) -> Path:
    """The demo's training config with its data, index and output paths pointed under `root`."""
    raw = yaml.safe_load(base.read_text())
    if "base" in raw:  # bases resolve relative to the file that names them: keep pointing at the original
        raw["base"] = str((base.parent / raw["base"]).resolve())
    raw.setdefault("data", {})["path"] = str(root / "world")
    raw.setdefault("sids", {})["index"] = str(root / "index")
    raw["out_dir"] = str(root / "train")
    out = root / "train_config.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _scrape(port: int) -> dict[str, float]:
    from adgen.commands.worker import scrape

    return scrape(f"http://127.0.0.1:{port}/metrics")


def _metric_sum(values: dict[str, float], name: str, label: str = "") -> float:
    return sum(v for k, v in values.items() if (k == name or k.startswith(name + "{")) and label in k)


def _wait(check: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(poll_s)
    raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _event_counts(world: Path) -> dict[str, int]:
    counts = {}
    for name in ("user-behavior", "ad-updates", "search-queries"):
        with open(world / "events" / f"{name}.jsonl", "rb") as f:
            counts[name] = sum(1 for _ in f)
    return counts


def _user_events(world: Path, users: set[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {u: [] for u in users}
    with open(world / "events" / "user-behavior.jsonl") as f:
        for line in f:
            event = json.loads(line)
            if event.get("user_id") in out:
                out[event["user_id"]].append(event)
    return out


def _titles(world: Path) -> dict[str, str]:
    titles = {}
    with open(world / "catalogue" / "items.jsonl") as f:
        for line in f:
            item = json.loads(line)
            titles[item["item_id"]] = item["title"]
    with open(world / "events" / "ad-updates.jsonl") as f:
        for line in f:
            event = json.loads(line)
            if event.get("type") == "ad_upsert":
                titles[event["ad_id"]] = event["name"]
    return titles


def _ci_build_usable(ci_dir: Path) -> bool:
    """A CI model and a CI snapshot this version can load, with the serving settings chosen on validation
    (a build from before serving.json would be served with untuned defaults, one from before the relative
    score floor or the other cuts with every weak tail ad)."""
    from adgen.search.ci_index import CIError, load_latest_snapshot
    from adgen.search.ci_tuning import Cuts

    if not (ci_dir / "model").is_dir() or not (ci_dir / "serving.json").is_file():
        return False
    try:
        serving = json.loads((ci_dir / "serving.json").read_text())
        if not Cuts.model_fields.keys() <= serving.keys():
            return False
    except ValueError:  # unreadable: rebuild rather than serve defaults
        return False
    try:
        load_latest_snapshot(ci_dir / "snapshots")
    except CIError:
        return False
    return True


@app.command()
def demo(
    root: Annotated[Path, typer.Option(help="Working directory for everything the demo writes.")] = Path("var/demo"),
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 1500,
    ads: Annotated[int, typer.Option(help="Synthetic ads.")] = 600,
    rate: Annotated[float, typer.Option(help="Replay rate in events/s (0 = as fast as possible).")] = 0.0,
    train_config: Annotated[Path, typer.Option(help="Training config (paths are redirected to ROOT).")] = (
        DEFAULT_TRAIN_CONFIG
    ),
    fresh: Annotated[bool, typer.Option(help="Delete ROOT first instead of reusing cached stages.")] = False,
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
) -> None:
    """World → index → model → CI index → embedded broker + redis → worker → replay → summary."""
    import shutil

    from adgen.core.config import Settings
    from adgen.runtime import EmbeddedRuntime, runtime_env
    from adgen.runtime.processes import free_port, stop_pid

    started = time.perf_counter()
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **_paths_env(root)}
    world = root / "world"
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        fn()
        timings[name] = round(time.perf_counter() - t0, 1)

    try:
        _stage("1/6 synthetic ad world")
        if (world / "manifest.json").exists():
            console.print(f"reusing {world}")
        else:
            timed(
                "world",
                lambda: _run(
                    [
                        "world",
                        "generate",
                        "--users",
                        str(users),
                        "--ads",
                        str(ads),
                        "--out",
                        str(world),
                        "--seed",
                        str(seed),
                        "--queries",
                        "300",
                    ],
                    env,
                    "world generated",
                ),
            )

        _stage("2/6 semantic-ID index (encoder → RQ-VAE → S-IDs → trie → snapshot)")
        if any((root / "index").glob("*/manifest.json")) or any((root / "index").glob("**/manifest.json")):
            console.print(f"reusing the newest snapshot in {root / 'index'}")
        else:
            timed(
                "index",
                lambda: _run(
                    ["index", "build", "--world", str(world), "--include-deleted", "--collaborative", "1.0"],
                    env,
                    "index built",
                ),
            )

        _stage("3/6 LEADRE model (EX → IM → main → eval vs baselines → DPO)")
        model_dir = root / "train" / "model"
        if (model_dir / "config.json").exists():
            console.print(f"reusing the checkpoint in {model_dir}")
        else:
            cfg = _train_config(root, train_config)
            timed("train", lambda: _run(["train", "--config", str(cfg)], env, "model trained and evaluated"))

        _stage("4/6 RARE search index (CIs → CI set → CI model → CI→ads)")
        ci_dir = root / "index" / "ci"
        if _ci_build_usable(ci_dir):
            console.print(f"reusing the CI build in {ci_dir}")
        else:
            shutil.rmtree(ci_dir, ignore_errors=True)  # e.g. snapshots in a layout this version no longer reads
            timed(
                "ci",
                lambda: _run(["ci", "build", "--world", str(world), "--out", str(ci_dir)], env, "CI index built"),
            )

        _stage("5/6 embedded broker + redis-server + worker, replay")
        with EmbeddedRuntime(Settings(), root / "runtime") as settings:
            metrics_port, web_port = free_port(), free_port()
            env.update(
                {
                    **runtime_env(settings),
                    "ADGEN_MODEL__CHECKPOINT": str(model_dir),
                    "ADGEN_WORKER__METRICS_PORT": str(metrics_port),
                    "ADGEN_WORKER__WEB_PORT": str(web_port),
                    "ADGEN_BUDGET__MIN_REGEN_INTERVAL_S": "0",
                }
            )
            console.print(f"broker {settings.kafka.bootstrap_servers} · redis {settings.redis.url}")
            log_path = root / "worker.log"
            with open(log_path, "wb") as log:
                worker = subprocess.Popen([ADGEN, "worker"], env=env, stdout=log, stderr=log)
            try:
                _wait(lambda: bool(_scrape(metrics_port)), 120, f"the worker's metrics (log: {log_path})")
                console.print(f"[green]✓[/green] worker up (metrics :{metrics_port}, search :{web_port})")
                expected = _event_counts(world)
                timed("replay", lambda: _run(["produce", str(world), "--rate", str(rate)], env, "events produced"))
                t0 = time.perf_counter()

                def drained() -> bool:
                    m = _scrape(metrics_port)
                    seen = {t: _metric_sum(m, "adgen_events_total", f"topic={t}") for t in expected}
                    console.print(
                        "  processed "
                        + ", ".join(f"{t}: {int(seen[t])}/{n}" for t, n in expected.items())
                        + f" · generation queue {int(_metric_sum(m, 'adgen_generation_queue_depth'))}",
                        highlight=False,
                    )
                    if worker.poll() is not None:
                        raise DemoError(f"the worker exited with {worker.returncode}; see {log_path}")
                    done = all(seen[t] >= n for t, n in expected.items())
                    return done and _metric_sum(m, "adgen_generation_queue_depth") == 0

                _wait(drained, 900, "the worker to process every event", poll_s=5)
                timings["drain"] = round(time.perf_counter() - t0, 1)
                _stage("6/6 summary")
                _summary(root, world, settings, metrics_port, web_port, timings, started)
            finally:
                stop_pid(worker.pid, process=worker, grace_s=30)
    except DemoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything stopped[/yellow]")
        raise typer.Exit(130) from None


def _summary(
    root: Path,
    world: Path,
    settings: Any,
    metrics_port: int,
    web_port: int,
    timings: dict[str, float],
    started: float,
) -> None:
    """Events processed, users served per priority group, a few users' lists, a few queries, the report."""
    import asyncio

    from adgen.processors.feature_store import FeatureStore

    m = _scrape(metrics_port)
    events = Table(title="events processed by the worker")
    events.add_column("topic")
    events.add_column("events", justify="right")
    events.add_column("dead letters", justify="right")
    for topic in ("user-behavior", "ad-updates", "search-queries"):
        events.add_row(
            topic,
            f"{int(_metric_sum(m, 'adgen_events_total', f'topic={topic}'))}",
            f"{int(_metric_sum(m, 'adgen_dead_letters_total', f'topic={topic}'))}",
        )
    console.print(events)

    groups = Table(title="users generated per ARPU priority group (higher = more valuable, served first)")
    groups.add_column("group", justify="right")
    groups.add_column("generated", justify="right")
    groups.add_column("dropped", justify="right")
    per_group = sorted(
        {int(k.split("group=")[1].split(",")[0].rstrip("}")) for k in m if "adgen_generations_total{" in k}
    )
    for g in per_group:
        groups.add_row(
            str(g),
            f"{int(_metric_sum(m, 'adgen_generations_total', f'group={g}' + '}'))}",
            f"{int(_metric_sum(m, 'adgen_generation_dropped_total', f'group={g}' + '}'))}",
        )
    console.print(groups)

    store = FeatureStore(settings.redis)
    with open(world / "users.jsonl") as f:
        users_file = [json.loads(line)["user_id"] for line in f][:200]

    async def read() -> dict[str, Any]:
        try:
            return await store.user_ads(users_file)
        finally:
            await store.close()

    lists = {u: a for u, a in asyncio.run(read()).items() if a is not None}
    titles = _titles(world)
    shown = list(lists)[:3]
    histories = _user_events(world, set(shown))
    for user in shown:
        ads = lists[user]
        past = [e for e in histories[user] if e["type"] in {"ad_click", "ad_conversion", "content_complete"}][-5:]
        lines = [f"[bold]{user}[/bold] — recent positive behaviour:"]
        for e in past:
            ref = e.get("ad_id") or e.get("content_id")
            lines.append(f"  {e['type']:<17} {titles.get(ref, e.get('title', ref))}")
        lines.append("generated ads (S-ID, score):")
        for ad in ads.ads[:5]:
            sid = "".join(f"<{'abcdefgh'[i]}_{c}>" for i, c in enumerate(ad.sid))
            lines.append(f"  {ad.ad_id:<8} {sid:<28} {ad.score:7.2f}  {titles.get(ad.ad_id, '')}")
        console.print(Panel("\n".join(lines), expand=False))

    _search_examples(root / "index" / "ci", world, web_port, titles)

    report = {
        "events": {k: v for k, v in m.items() if k.startswith(("adgen_events_total", "adgen_dead_letters_total"))},
        "generations": {k: v for k, v in m.items() if k.startswith("adgen_generations_total")},
        "users_with_lists": len(lists),
        "stage_seconds": timings,
        "total_seconds": round(time.perf_counter() - started, 1),
        "training_summary": str(root / "train" / "summary.json"),
    }
    (root / "demo_report.json").write_text(json.dumps(report, indent=2))
    console.print(
        f"[bold green]done[/bold green] in {report['total_seconds']}s · {len(lists)} of the first 200 users have "
        f"generated lists · report: {root / 'demo_report.json'} · training results: "
        f"{root / 'train' / 'summary.json'} · benchmarks: docs/benchmarks.md"
    )


GRADE_NAMES = {2: "exact", 1: "related", 0: "not relevant"}


def _search_examples(ci_dir: Path, world: Path, web_port: int, titles: dict[str, str], count: int = 3) -> None:
    """Three held-out queries (the build's test split: never trained or tuned on) through the worker's
    /search: their CIs, and each served ad with its title and graded relevance from the world's labels."""
    with open(world / "queries" / "labels.jsonl") as f:
        labels = {row["query_id"]: row for row in map(json.loads, f)}
    split_file = ci_dir / "split.json"
    test_ids = json.loads(split_file.read_text()).get("test", []) if split_file.is_file() else []
    chosen = [labels[i] for i in test_ids if i in labels][:count] or list(labels.values())[:count]
    for label in chosen:
        q, grades = label["text"], label.get("relevance", {})
        url = f"http://127.0.0.1:{web_port}/search?{urllib.parse.urlencode({'q': q, 'n': 5})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except OSError as exc:
            console.print(f"search '{q}': [red]{exc}[/red]")
            continue
        if "error" in body:
            console.print(f"search {q!r}: [red]{body['error']}[/red]")
            continue
        cis = ", ".join(f"{c['text']} ({c['prob']:.2f})" for c in body["cis"][:4])
        lines = [
            f"[bold]query[/bold] {q!r} (held-out, from {body['source']}, {body['latency_ms']:.1f} ms)",
            f"CIs: {cis}",
            "served ads (grade from the labels: 2 exact intent, 1 related, 0 not relevant):",
        ]
        for a in body["ads"][:5]:
            grade = grades.get(a["ad_id"], 0)
            lines.append(f"  {a['ad_id']:<10} {grade} {GRADE_NAMES[grade]:<12} {titles.get(a['ad_id'], '')}")
        shown = [grades.get(a["ad_id"], 0) for a in body["ads"][:5]]
        lines.append(f"exact {shown.count(2)}/{len(shown)}, related {shown.count(1)}/{len(shown)}")
        console.print(Panel("\n".join(lines), expand=False))
