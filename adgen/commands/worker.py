"""`adgen worker` (run the nearline path), `adgen monitor` (live metrics), `adgen features get USER`."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from adgen.core.config import load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False)
features = typer.Typer(no_args_is_help=True, add_completion=False, help="Read the Redis feature store.")
app.add_typer(features, name="features")
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="JSON or YAML settings file.")]


@app.command()
def worker(config_file: ConfigOpt = None) -> None:
    """Run one nearline worker: behaviour windows, generation, live ad index, snapshots, metrics."""
    import logging

    from adgen.processors.worker_app import WorkerSetupError, run_worker

    settings = load_settings(config_file)
    logging.basicConfig(level=settings.worker.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    err.print_json(json.dumps({"settings": settings.masked()}))
    try:
        run_worker(settings)
    except WorkerSetupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc


def scrape(url: str) -> dict[str, float]:
    """Flatten a Prometheus text page into {'name{label=value,...}': value}."""
    with urllib.request.urlopen(url, timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _sum(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k == prefix or k.startswith(prefix + "{"))


def _quantile_from_buckets(values: dict[str, float], name: str, q: float) -> float | None:
    buckets = sorted(
        (float(k.split("le=")[1].split(",")[0].rstrip("}")), v)
        for k, v in values.items()
        if k.startswith(f"{name}_bucket{{") and "le=+Inf" not in k
    )
    total = values.get(f"{name}_count", 0.0)
    if not total:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


def render(now: dict[str, float], before: dict[str, float] | None, seconds: float) -> Table:
    table = Table(title="adgen worker", show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")

    def rate(key: str) -> str:
        if before is None or seconds <= 0:
            return "-"
        return f"{(_sum(now, key) - _sum(before, key)) / seconds:,.1f}/s"

    for topic in ("user-behavior", "ad-updates", "search-queries"):
        key = f"adgen_events_total{{topic={topic}}}"
        table.add_row(f"events {topic}", f"{_sum(now, key):,.0f}  ({rate(key)})")
    table.add_row("dead letters", f"{_sum(now, 'adgen_dead_letters_total'):,.0f}")
    table.add_row("consumer lag (sum)", f"{_sum(now, 'adgen_consumer_lag'):,.0f}")
    table.add_row("generation queue", f"{_sum(now, 'adgen_generation_queue_depth'):,.0f}")
    table.add_row(
        "generated users", f"{_sum(now, 'adgen_generations_total'):,.0f}  ({rate('adgen_generations_total')})"
    )
    table.add_row("budget tokens", f"{_sum(now, 'adgen_budget_tokens'):,.0f}")
    for q in (0.5, 0.99):
        v = _quantile_from_buckets(now, "adgen_request_to_features_seconds", q)
        table.add_row(f"request->features p{int(q * 100)} <=", "-" if v is None else f"{v * 1000:,.0f} ms")
    v = _quantile_from_buckets(now, "adgen_redis_write_seconds", 0.99)
    table.add_row("redis write p99 <=", "-" if v is None else f"{v * 1000:,.0f} ms")
    table.add_row("redis retries", f"{_sum(now, 'adgen_redis_retries_total'):,.0f}")
    table.add_row("live ads", f"{_sum(now, 'adgen_index_live_ads'):,.0f}")
    table.add_row("snapshots", f"{_sum(now, 'adgen_snapshots_total'):,.0f}")
    groups = sorted(
        (
            (int(k.split("group=")[1].rstrip("}")), v)
            for k, v in now.items()
            if k.startswith("adgen_generations_total{")
        ),
        reverse=True,
    )
    if groups:
        table.add_row("budget use by group (high->low)", " ".join(f"g{g}:{v:.0f}" for g, v in groups[:10]))
    return table


@app.command()
def monitor(
    url: Annotated[str | None, typer.Option(help="Metrics URL (default: the worker's, from settings).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between scrapes.")] = 2.0,
    once: Annotated[bool, typer.Option(help="Print one table and exit.")] = False,
    config_file: ConfigOpt = None,
) -> None:
    """Show the worker's metrics live in the terminal (rates from successive scrapes)."""
    settings = load_settings(config_file)
    url = url or f"http://{settings.worker.web_host}:{settings.worker.metrics_port}/metrics"
    try:
        before, t_before = scrape(url), time.monotonic()
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {url}: {exc}. Is `adgen worker` running?")
        raise typer.Exit(code=1) from exc
    if once:
        console.print(render(before, None, 0.0))
        return
    with Live(render(before, None, 0.0), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(interval)
            try:
                now = scrape(url)
            except OSError as exc:
                err.print(f"[yellow]scrape failed:[/yellow] {exc}")
                continue
            t_now = time.monotonic()
            live.update(render(now, before, t_now - t_before))
            before, t_before = now, t_now


@features.command("get")
def features_get(
    user: Annotated[str, typer.Argument(help="User id.")],
    candidates: Annotated[str, typer.Option(help="Comma-separated ad ids to compute match features for.")] = "",
    config_file: ConfigOpt = None,
) -> None:
    """What the ranking service sees for USER: generated ads (deleted ones hidden), window, match features."""
    from adgen.processors.feature_store import FeatureStore
    from adgen.processors.redis_client import RedisClient, RedisUnavailable

    settings = load_settings(config_file)

    async def read() -> str:
        store = FeatureStore(RedisClient.reader(settings.redis))  # gives up after redis.max_retries
        try:
            view = await store.user_view(user, [c for c in candidates.split(",") if c])
            return view.model_dump_json(indent=1)
        finally:
            await store.close()

    try:
        console.print_json(asyncio.run(read()))
    except RedisUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from exc
