"""One worker: the Faust app with every agent, task and timer of the nearline path, wired to shared state.

settings -> newest valid index snapshot (+ frozen RQ-VAE, encoder) -> LiveAdIndex
         -> generator (checkpoint) -> token offset of the S-ID vocabulary -> trie views
user-behavior --window consumer thread--> changelog + local RocksDB + Redis window features --> GenerationService
ad-updates --broadcast reader task--> LiveAdIndex + Redis ad records
generation task: queue -> budget -> debounce -> decode -> Redis user ads
snapshot timer: snapshot + notice on index-snapshots;  lag timer: consumer lag gauges
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust

from adgen.core.config import Settings
from adgen.index.ad_index import AdIndex
from adgen.index.snapshot import INDEX_KIND, SnapshotError, SnapshotStore, read_index_snapshot
from adgen.processors.ad_indexer import AdUpdatesReader, LiveAdIndex, run_ad_indexer
from adgen.processors.behavior_windows import WindowUpdate, windows_in_store
from adgen.processors.feature_store import AdRecord, FeatureStore, IndexPointer, UserWindowFeatures
from adgen.processors.generation import GenerationService, Generator, LeadreGenerator, set_torch_threads
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.snapshots import snapshot_once
from adgen.processors.window_consumer import WindowConsumer, loop_publisher, run_in_thread
from adgen.processors.window_state import NO_TIME
from adgen.processors.window_store import WindowStore
from adgen.streams.app import AppTopics, create_app, declare_topics, raw_topic, send_dead_letter
from adgen.streams.dlq import DeadLetter
from adgen.streams.topics import AD_UPDATES, INDEX_SNAPSHOTS

log = logging.getLogger(__name__)

#: The ad-updates reader counts as caught up at its first empty poll after this long.
CATCH_UP_MIN_S = 2.0


class WorkerSetupError(RuntimeError):
    """The worker cannot start: no index snapshot, no model checkpoint, or they do not fit together."""


@dataclass
class Worker:
    settings: Settings
    app: faust.App
    topics: AppTopics
    window_store: WindowStore
    metrics: WorkerMetrics
    store: FeatureStore
    live: LiveAdIndex
    generation: GenerationService
    snapshots: SnapshotStore
    index_caught_up: asyncio.Event


def load_live_index(settings: Settings, token_offset_for: Any) -> tuple[SnapshotStore, LiveAdIndex]:
    """The newest valid snapshot as a LiveAdIndex; the encoder is loaded for ads the snapshot lacks."""
    from adgen.model.encoder import CachedEncoder, load_encoder

    store = SnapshotStore(settings.paths.index, INDEX_KIND)
    try:
        snapshot = store.latest()
    except SnapshotError as exc:
        raise WorkerSetupError(f"{exc}. Build the index first: `adgen index build --world DIR`") from exc
    encoder = CachedEncoder(load_encoder(settings.model.encoder, settings.model.device), settings.paths.embedding_cache)
    ad_index = AdIndex.from_snapshot(read_index_snapshot(snapshot), encoder)
    live = LiveAdIndex.from_snapshot_meta(ad_index, 0, snapshot.version)
    live.token_offset = token_offset_for(live.sid_vocabulary)
    live.view = live._make_view()
    return store, live


def build_worker(settings: Settings, generator: Generator | None = None) -> Worker:
    """Assemble the app. `generator` defaults to the checkpoint in settings.model.checkpoint."""
    set_torch_threads(2)
    if generator is None:
        if settings.model.checkpoint is None:
            raise WorkerSetupError(
                "no model checkpoint: set ADGEN_MODEL__CHECKPOINT to a dir written by `adgen train` (lm/ + tokenizer/)"
            )
        generator = LeadreGenerator(settings.model.checkpoint, settings.model, settings.window)
    try:
        snapshots, live = load_live_index(settings, generator.token_offset)
    except ValueError as exc:  # S-ID tokens missing from the tokenizer, etc.
        raise WorkerSetupError(f"index and model do not fit together: {exc}") from exc

    search = load_search(settings)
    app = create_app(settings, web_enabled=search is not None)
    topics = declare_topics(app, settings)
    notices = raw_topic(app, INDEX_SNAPSHOTS, settings)
    window_store = WindowStore(settings.paths.state / "windows" / settings.worker.app_id)
    metrics = WorkerMetrics()
    store = FeatureStore(settings.redis, on_write=metrics.observe_redis_write, on_retry=metrics.observe_redis_retry)
    generation = GenerationService(settings.budget, live, generator, store, metrics, seed=settings.model.seed)
    if search is not None:
        from adgen.processors.query_retrieval import SearchRedisStore, register_search_agent, register_search_view

        register_search_agent(app, topics, settings, search, SearchRedisStore(settings.redis), metrics)
        register_search_view(app, search)
    caught_up = asyncio.Event()
    index_lock = asyncio.Lock()  # ad-update batches (apply + Redis + offsets) vs snapshots
    worker = Worker(settings, app, topics, window_store, metrics, store, live, generation, snapshots, caught_up)

    async def publish_windows(features: Sequence[UserWindowFeatures], updates: Sequence[WindowUpdate]) -> None:
        if features:
            await store.write_user_windows(features)
        if updates:
            generation.observe(updates)

    @app.task
    async def behavior_windows() -> None:
        await caught_up.wait()  # clicks need ad titles/categories: let the index catch up first
        loop = asyncio.get_running_loop()

        def requeue_unserved(partitions: list[int]) -> None:
            """Requests acknowledged but not yet served (restart, rebalance) are queued again; runs in the
            consumer thread after a restore. The debounce drops the ones already published."""
            pending = [(w, True) for w in windows_in_store(window_store, partitions) if w.last_request_ts > NO_TIME]
            if pending:
                log.info("re-queueing %d users with ad requests from partitions %s", len(pending), partitions)
                loop.call_soon_threadsafe(generation.observe, pending)

        stopping = threading.Event()
        consumer = WindowConsumer(
            settings,
            window_store,
            metrics,
            loop_publisher(loop, publish_windows, stopping),
            ad_lookup=live.ad_info,
            on_assigned=requeue_unserved,
            stopping=stopping,
        )
        try:
            await run_in_thread(consumer)
        finally:
            window_store.close()

    async def on_ads_applied(records: list[AdRecord], letters: list[DeadLetter], applied: int) -> None:
        for letter in letters:
            await send_dead_letter(topics.dead_letter, letter)
            metrics.dead_letters.labels(AD_UPDATES.name).inc()
        metrics.events.labels(AD_UPDATES.name).inc(applied)
        if search is not None and records:
            await update_search_index(search, live, records)
        if records:
            await store.write_ads(records)
            metrics.index_updates.inc(len(records))
            view = live.view
            metrics.index_live_ads.set(len(view.live))
            await store.write_index_pointer(
                IndexPointer(
                    version=view.version,
                    watermark=view.watermark,
                    snapshot=str(snapshots.path_of(live.snapshot_version)) if live.snapshot_version else None,
                    ads=len(view.live),
                    updated_at=_utcnow(),
                )
            )

    @app.task
    async def ad_indexer() -> None:
        reader = AdUpdatesReader(settings, live.offsets)
        started = time.monotonic()
        consumed = False

        async def applied(records: list[AdRecord], letters: list[DeadLetter], n: int) -> None:
            nonlocal consumed
            consumed = True
            await on_ads_applied(records, letters, n)

        def idle() -> None:
            if not caught_up.is_set() and (consumed or time.monotonic() - started > CATCH_UP_MIN_S):
                metrics.index_live_ads.set(len(live.view.live))
                caught_up.set()

        try:
            await run_ad_indexer(live, reader, applied, idle, lambda: False, index_lock)
        finally:
            reader.close()

    @app.task
    async def generation_loop() -> None:
        await generation.run(lambda: False)

    @app.timer(settings.worker.snapshot_interval_s)
    async def snapshot_timer() -> None:
        if not caught_up.is_set():
            return
        try:
            async with index_lock:  # never between an ad batch's apply and its Redis write
                notice = await snapshot_once(live, snapshots)
        except (SnapshotError, OSError) as exc:  # disk full/unwritable: an exception here would crash the worker
            log.error("index snapshot failed; still serving, retrying at the next tick: %s", exc)
            return
        metrics.snapshots.inc()
        await notices.send(key=notice.kind.encode(), value=notice.model_dump_json().encode())

    @app.timer(5.0)
    async def lag_timer() -> None:
        """Lag of the Faust consumer (search queries); the window consumer reports its own."""
        consumer = app.consumer
        for tp in consumer.assignment():
            read = consumer._read_offset.get(tp)  # next offset Faust will read
            if read is None:
                continue
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, consumer.highwater(tp) - read))

    return worker


def load_search(settings: Settings) -> Any:
    """The RARE search service when a CI build exists under <paths.index>/ci (from `adgen ci build`), else None."""
    root = settings.paths.index / "ci"
    if not ((root / "snapshots").is_dir() and (root / "model").is_dir()):
        return None
    from adgen.processors.query_retrieval import SearchConfig, SearchService

    return SearchService.from_snapshot(root / "snapshots", root / "model", SearchConfig(beams=settings.model.beams))


async def update_search_index(search: Any, live: LiveAdIndex, records: list[AdRecord]) -> None:
    """New ads get CIs by constrained inference (ads the CI build already covers keep theirs); deleted or
    paused ads leave the CI->ads index. A failure here is logged, never allowed to stop ad indexing."""
    try:
        gone = [r.ad_id for r in records if r.status != "active"]
        new = [live.items[r.ad_id] for r in records if r.status == "active" and r.ad_id not in search.index.ad_cis]
        for ad_id in gone:
            search.remove_ad(ad_id)
        if new:
            await asyncio.to_thread(search.upsert_ads, new)
    except Exception:
        log.exception("search index update failed for %d ad records", len(records))


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def run_worker(settings: Settings, generator: Generator | None = None) -> None:
    """Build, expose metrics on 127.0.0.1, and run until SIGTERM/SIGINT (Faust handles both)."""
    worker = build_worker(settings, generator)
    worker.metrics.serve(settings.worker.web_host, settings.worker.metrics_port)
    faust.Worker(worker.app, loglevel=settings.worker.log_level, quiet=True).execute_from_commandline()
