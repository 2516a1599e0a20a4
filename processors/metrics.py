"""Prometheus metrics of one worker, on its own registry, served on 127.0.0.1 (`adgen monitor` reads them).

Rates (events/s per topic) are left to the reader (`rate()` in Prometheus, deltas in `adgen monitor`):
the worker only counts, which stays cheap on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    """Every metric the worker exports; one instance per worker process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("adgen_events", "Events consumed and decoded, per topic.", ["topic"], registry=r)
        self.dead_letters = Counter(
            "adgen_dead_letters", "Events sent to the dead-letter topic.", ["topic"], registry=r
        )
        # a separate counter: a `kind` label on the one above would change the series every query reads
        self.dead_letter_reasons = Counter(
            "adgen_dead_letter_reasons",
            "Events sent to the dead-letter topic, per input topic and reason (EventDecodeError.kind).",
            ["topic", "kind"],
            registry=r,
        )
        self.dead_letter_retries = Counter(
            "adgen_dead_letter_retries",
            "Dead letters the broker did not acknowledge, produced again (their batch waits uncommitted).",
            ["topic"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "adgen_consumer_lag",
            "High watermark minus next offset, per topic partition (window consumer and Faust consumer).",
            ["topic", "partition"],
            registry=r,
        )
        self.window_batch_users = Histogram(
            "adgen_window_batch_users",
            "Users per behaviour batch (one fold and at most one row + changelog record each).",
            buckets=(1, 10, 50, 100, 500, 1000, 5000),
            registry=r,
        )
        self.window_batch_seconds = Histogram(
            "adgen_window_batch_seconds",
            "One behaviour batch, decode to committable (changelog, RocksDB, Redis).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.window_commits = Counter(
            "adgen_window_commits", "Offset commits of the behaviour-window consumer (one per batch).", registry=r
        )
        self.window_uncommitted_events = Gauge(
            "adgen_window_uncommitted_events",
            "Good events of the batch in flight: folded and on the changelog, offsets not committed yet.",
            registry=r,
        )
        self.queue_depth = Gauge("adgen_generation_queue_depth", "Users waiting for generation.", registry=r)
        self.queue_depth_by_group = Gauge(
            "adgen_generation_queue_depth_group", "Users waiting, per ARPU group.", ["group"], registry=r
        )
        self.generations = Counter(
            "adgen_generations", "Users generated, per ARPU group (budget use).", ["group"], registry=r
        )
        self.dropped = Counter(
            "adgen_generation_dropped", "Requests dropped from a full queue, per ARPU group.", ["group"], registry=r
        )
        self.skipped = Counter(
            "adgen_generation_skipped", "Requests not generated, per debounce reason.", ["reason"], registry=r
        )
        self.budget_tokens = Gauge("adgen_budget_tokens", "Generation tokens available in the bucket.", registry=r)
        self.decode_seconds = Histogram(
            "adgen_decode_batch_seconds", "Decoder time per generation batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.request_latency = Histogram(
            "adgen_request_to_features_seconds",
            "Ad request received by the worker -> its ads written to Redis.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_write_seconds = Histogram(
            "adgen_redis_write_seconds",
            "Pipelined Redis write latency, per key kind.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_keys = Counter("adgen_redis_keys_written", "Keys written (guarded), per kind.", ["kind"], registry=r)
        self.redis_retries = Counter(
            "adgen_redis_retries", "Redis operations retried after a failure.", ["op"], registry=r
        )
        self.index_live_ads = Gauge("adgen_index_live_ads", "Ads in the live trie.", registry=r)
        self.index_updates = Counter("adgen_index_updates", "Ad updates applied to the live index.", registry=r)
        self.snapshots = Counter("adgen_snapshots", "Index snapshots written.", registry=r)
        self.ready = Gauge("adgen_ready", "1 once a readiness flag of the worker is set.", ["flag"], registry=r)
        self.model_version = Gauge(
            "adgen_model_version",
            "1 for the model version the worker serves (0 for ones it served before).",
            ["version"],
            registry=r,
        )
        self.model_reloads = Counter(
            "adgen_model_reloads",
            "Registry versions swapped in (loaded) or refused, by outcome.",
            ["outcome"],
            registry=r,
        )
        # the search path's CI model has metrics of its own: a label on the two above would change the label
        # set every existing LEADRE series and query is written against
        self.ci_model_version = Gauge(
            "adgen_ci_model_version",
            "1 for the CI model version the search path serves (0 for ones it served before).",
            ["version"],
            registry=r,
        )
        self.ci_model_reloads = Counter(
            "adgen_ci_model_reloads",
            "CI registry versions swapped in (loaded) or refused, by outcome.",
            ["outcome"],
            registry=r,
        )

    def count_dead_letters(self, topic: str, kinds: Mapping[str, int]) -> None:
        """Count dead letters of input `topic`: in all, and per reason (`kinds`: error kind -> letters)."""
        total = sum(kinds.values())
        if total:
            self.dead_letters.labels(topic).inc(total)
        for kind, n in kinds.items():
            self.dead_letter_reasons.labels(topic, kind).inc(n)

    def observe_redis_write(self, kind: str, seconds: float, keys: int) -> None:
        self.redis_write_seconds.labels(kind).observe(seconds)
        self.redis_keys.labels(kind).inc(keys)

    def observe_redis_retry(self, op: str, exc: Exception) -> None:
        self.redis_retries.labels(op).inc()

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics; bind to loopback unless ops deliberately configure otherwise."""
        start_http_server(port, addr=host, registry=self.registry)
