"""Metrics endpoint and the terminal views on it: what the worker counts is what `adgen monitor` shows."""

from __future__ import annotations

import io

from prometheus_client import CollectorRegistry
from rich.console import Console
from typer.testing import CliRunner

from adgen.cli import app as cli
from adgen.commands.worker import render, scrape
from adgen.processors.metrics import WorkerMetrics
from adgen.runtime.processes import free_port


def served_metrics() -> tuple[WorkerMetrics, str]:
    metrics = WorkerMetrics(CollectorRegistry())
    port = free_port()
    metrics.serve("127.0.0.1", port)
    return metrics, f"http://127.0.0.1:{port}/metrics"


def test_endpoint_exports_counts_per_topic_group_and_latency_buckets() -> None:
    metrics, url = served_metrics()
    metrics.events.labels("user-behavior").inc(1200)
    metrics.generations.labels("24").inc(7)
    metrics.generations.labels("3").inc(2)
    metrics.request_latency.observe(0.03)
    metrics.observe_redis_write("user_ads", 0.002, 16)
    values = scrape(url)
    assert values["adgen_events_total{topic=user-behavior}"] == 1200
    assert values["adgen_generations_total{group=24}"] == 7
    assert values["adgen_redis_keys_written_total{kind=user_ads}"] == 16
    assert values["adgen_request_to_features_seconds_count"] == 1


def test_monitor_shows_rates_from_successive_scrapes() -> None:
    metrics, url = served_metrics()
    before = scrape(url)
    metrics.events.labels("user-behavior").inc(500)
    metrics.generations.labels("10").inc(4)
    out = io.StringIO()
    Console(file=out, width=120).print(render(scrape(url), before, 2.0))
    text = out.getvalue()
    assert "250.0/s" in text  # 500 events in 2 s
    assert "g10:4" in text


def test_monitor_once_prints_the_table_and_a_dead_endpoint_is_a_clear_error() -> None:
    metrics, url = served_metrics()
    metrics.queue_depth.set(3)
    result = CliRunner().invoke(cli, ["monitor", "--url", url, "--once"])
    assert result.exit_code == 0 and "generation queue" in result.output
    dead = CliRunner().invoke(cli, ["monitor", "--url", f"http://127.0.0.1:{free_port()}/metrics", "--once"])
    assert dead.exit_code == 1 and "Is `adgen worker` running?" in dead.output


def test_features_get_with_redis_unreachable_exits_with_the_reason(monkeypatch) -> None:
    monkeypatch.setenv("ADGEN_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("ADGEN_REDIS__RETRY_BACKOFF_S", "0.01")
    monkeypatch.setenv("ADGEN_REDIS__MAX_RETRIES", "3")  # 3 retries after the first attempt
    result = CliRunner().invoke(cli, ["features", "get", "u1"])
    assert result.exit_code == 1 and "unreachable after 4 attempts" in result.output
