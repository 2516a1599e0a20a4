"""One worker: load what it serves, then wire its components onto one Faust app.

    settings -> newest valid index snapshot (+ frozen RQ-VAE, encoder) -> LiveAdIndex
             -> generator (checkpoint, model.backend) ;  CI build under <paths.index>/ci -> search service
                (its CI model: the CI registry's current version with model.ci_registry, else the build's own)

    component          input                 owns                                    module
    AdIndexer          ad-updates            broadcast reader, live index updates     processors/ad_updates.py
    BehaviorWindows    user-behavior         batch consumer thread, RocksDB windows   processors/window_consumer.py
    GenerationService  windows it is handed  queue, budget, decoder thread            processors/generation.py
    QueryRetrieval     search-queries        Faust agent, CI index, ci:* keys         processors/query_retrieval.py
    Snapshots          a timer               S-ID + CI snapshots, notices             processors/snapshots.py
    LagReporter        a timer               the consumer-lag gauges                  processors/lag.py
    ModelReloader      the registry pointer  the served model version                 processors/model_reload.py
                       (only with model.registry)
    CIModelReloader    the CI registry       the search path's served CI model        processors/ci_reload.py
                       pointer (only with model.ci_registry and a CI build)

Shared explicit objects: one Redis client, the dead-letter sink, readiness flags and the index lock (ad
batches vs snapshots); with `budget.shared` the generation budget lives in Redis too. Components are mode
Services started with the app and stopped with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import faust

from adgen.core.config import Settings
from adgen.index.ad_index import AdIndex
from adgen.index.semantic_ids import sid_vocabulary
from adgen.index.snapshot import INDEX_KIND, SnapshotError, SnapshotStore, read_index_snapshot
from adgen.model.backends import BackendUnavailable
from adgen.model.registry import ModelRegistry, RegistryError
from adgen.processors.ad_indexer import LiveAdIndex
from adgen.processors.ad_updates import AdIndexer
from adgen.processors.ci_reload import CIModelRefused, CIModelReloader, check_served
from adgen.processors.feature_store import FeatureStore
from adgen.processors.gc_policy import freeze_long_lived
from adgen.processors.generation import GenerationService, Generator, LeadreGenerator, set_torch_threads
from adgen.processors.lag import LagReporter
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.model_reload import ModelRefused, ModelReloader, check_compatible
from adgen.processors.query_retrieval import QueryRetrieval, SearchService
from adgen.processors.redis_client import RedisClient
from adgen.processors.search_store import SearchRedisStore
from adgen.processors.shared_budget import SharedBudget
from adgen.processors.snapshots import Snapshots
from adgen.processors.window_consumer import BehaviorWindows
from adgen.processors.worker_parts import Component, DeadLetters, Readiness
from adgen.search.ci_index import CIError
from adgen.search.ci_model import CIModel, CIModelError
from adgen.streams.app import create_app, declare_topics, raw_topic
from adgen.streams.topics import INDEX_SNAPSHOTS


class WorkerSetupError(RuntimeError):
    """The worker cannot start: no index snapshot, no model checkpoint, or they do not fit together."""


@dataclass
class Worker:
    settings: Settings
    app: faust.App
    metrics: WorkerMetrics
    live: LiveAdIndex
    components: list[Component]


def build_worker(settings: Settings, generator: Generator | None = None) -> Worker:
    """Assemble the app. `generator` defaults to the registry's current version (settings.model.registry),
    else the checkpoint in settings.model.checkpoint."""
    set_torch_threads(2)
    registry, version = None, None
    if generator is None:
        registry, version, generator = load_served_model(settings)
    snapshots, live = load_live_index(settings, generator)
    if registry is not None and version is not None:
        try:
            check_compatible(generator, registry, version, live)
        except ModelRefused as exc:
            raise WorkerSetupError(
                f"model version {version} of {registry.root} cannot serve this index: {exc}. "
                "Serve another one (`adgen model use VERSION` or `adgen model rollback`)"
            ) from exc
    ci_registry, ci_version, search = load_served_search(settings)
    app = create_app(settings, web_enabled=search is not None)
    topics = declare_topics(app, settings)
    metrics = WorkerMetrics()
    redis = RedisClient(settings.redis, on_write=metrics.observe_redis_write, on_retry=metrics.observe_redis_retry)
    store = FeatureStore(redis)
    dead_letters, readiness, index_lock = DeadLetters(topics.dead_letter, metrics), Readiness(metrics), asyncio.Lock()

    retrieval = None
    if search is not None:
        ci_snapshots = settings.paths.index / "ci" / "snapshots"
        retrieval = QueryRetrieval(
            app, topics.search_queries, settings, search, SearchRedisStore(redis), dead_letters, metrics, ci_snapshots
        )
    ad_index = AdIndexer(settings, live, store, snapshots, dead_letters, metrics, readiness, index_lock, ci=retrieval)
    shared = SharedBudget(settings.budget, redis) if settings.budget.shared else None
    generation = GenerationService(
        settings.budget, live, generator, store, metrics, seed=settings.model.seed, shared=shared
    )
    windows = BehaviorWindows(settings, store, generation, metrics, readiness, ad_lookup=live.ad_info)
    notices = raw_topic(app, INDEX_SNAPSHOTS, settings)
    snapshotter = Snapshots(
        settings.worker.snapshot_interval_s, live, snapshots, notices, metrics, readiness, index_lock, ci=retrieval
    )
    lag = LagReporter(metrics, [c for c in (windows, ad_index, retrieval) if c is not None])
    reloaders = [
        model_reloader(settings, registry, version, generation, live, metrics),
        ci_model_reloader(settings, ci_registry, ci_version, search, metrics),
    ]
    components: list[Component] = [
        c for c in (retrieval, ad_index, generation, windows, snapshotter, lag, *reloaders) if c is not None
    ]
    freeze_long_lived(collect=True)  # the restored index and catalogue: never walked by the collector again
    start_with_app(app, components)
    return Worker(settings, app, metrics, live, components)


def model_reloader(
    settings: Settings,
    registry: ModelRegistry | None,
    version: str | None,
    generation: GenerationService,
    live: LiveAdIndex,
    metrics: WorkerMetrics,
) -> ModelReloader | None:
    """The LEADRE model's reloader when the generator came from a registry (else only its version gauge)."""
    if registry is None or version is None:
        metrics.model_version.labels(generation.generator.model_version).set(1)
        return None
    return ModelReloader(
        registry,
        version,
        generation,
        live,
        lambda path: LeadreGenerator(path, settings.model, settings.window),
        metrics,
        settings.model.reload_interval_s,
    )


def ci_model_reloader(
    settings: Settings,
    registry: ModelRegistry | None,
    version: str | None,
    search: SearchService | None,
    metrics: WorkerMetrics,
) -> CIModelReloader | None:
    """The CI model's reloader when the search path runs with a CI registry (else only its version gauge)."""
    if search is None:
        return None
    if registry is None:
        metrics.ci_model_version.labels(search.model_version).set(1)
        return None
    return CIModelReloader(
        registry,
        version,
        search,
        lambda path: CIModel.load(path, settings.model),
        metrics,
        settings.model.reload_interval_s,
    )


def start_with_app(app: faust.App, components: list[Component]) -> None:
    """Start the components, in order, once the Faust app runs; Faust stops them with the app."""

    @app.task
    async def start_components() -> None:
        for component in components:
            await app.add_runtime_dependency(component)


def load_served_model(settings: Settings) -> tuple[ModelRegistry | None, str | None, Generator]:
    """(registry, version, generator) of the registry's current version when settings.model.registry is set,
    else (None, None, the generator of settings.model.checkpoint)."""
    if settings.model.registry is None:
        return None, None, load_generator(settings)
    registry = ModelRegistry(settings.model.registry)
    version = registry.current()
    if version is None:
        raise WorkerSetupError(
            f"the model registry {registry.root} has no version to serve: publish one "
            "(`adgen model publish CHECKPOINT`, or `adgen init`)"
        )
    try:
        path = registry.verify(version)
    except RegistryError as exc:
        raise WorkerSetupError(f"{exc}. Serve another version: `adgen model rollback` or `adgen model use`") from exc
    return registry, version, load_generator(settings, path)


def load_generator(settings: Settings, checkpoint: Path | None = None) -> Generator:
    """The LEADRE generator of `checkpoint` (default settings.model.checkpoint), on settings.model.backend."""
    checkpoint = checkpoint or settings.model.checkpoint
    if checkpoint is None:
        raise WorkerSetupError(
            "no model: set ADGEN_MODEL__REGISTRY to a model registry (adgen init / adgen model publish), or "
            "ADGEN_MODEL__CHECKPOINT to a dir written by `adgen train` (lm/ + tokenizer/)"
        )
    try:
        return LeadreGenerator(checkpoint, settings.model, settings.window)
    except BackendUnavailable as exc:
        raise WorkerSetupError(f"model.backend {settings.model.backend!r} cannot run here: {exc}") from exc


def load_live_index(settings: Settings, generator: Generator) -> tuple[SnapshotStore, LiveAdIndex]:
    """The newest valid snapshot as a LiveAdIndex over the generator's vocabulary; the encoder is loaded for
    ads the snapshot lacks."""
    from adgen.model.encoder import CachedEncoder, load_encoder

    store = SnapshotStore(settings.paths.index, INDEX_KIND)
    try:
        snapshot = store.latest()
    except SnapshotError as exc:
        raise WorkerSetupError(f"{exc}. Build the index first: `adgen index build --world DIR`") from exc
    encoder = CachedEncoder(load_encoder(settings.model.encoder, settings.model.device), settings.paths.embedding_cache)
    ad_index = AdIndex.from_snapshot(read_index_snapshot(snapshot), encoder)
    try:  # S-ID tokens missing from the tokenizer, etc.
        token_offset = generator.token_offset(sid_vocabulary(ad_index.sid_map.codebook_sizes))
    except ValueError as exc:
        raise WorkerSetupError(f"index and model do not fit together: {exc}") from exc
    return store, LiveAdIndex.from_snapshot_meta(ad_index, token_offset, snapshot.version)


def load_search(settings: Settings) -> SearchService | None:
    """The RARE search service when a CI build exists under <paths.index>/ci (from `adgen ci build`), else None."""
    return load_served_search(settings)[2]


def load_served_search(settings: Settings) -> tuple[ModelRegistry | None, str | None, SearchService | None]:
    """(CI registry, the version served, search service) when a CI build exists under <paths.index>/ci, else
    Nones. The CI model is the CI registry's current version (settings.model.ci_registry), else the build's own
    (<paths.index>/ci/model, version None); either must represent the newest CI snapshot's CI set."""
    root = settings.paths.index / "ci"
    if not ((root / "snapshots").is_dir() and (root / "model").is_dir()):
        return None, None, None
    registry = ModelRegistry(settings.model.ci_registry) if settings.model.ci_registry is not None else None
    version = registry.current() if registry is not None else None
    model_dir = root / "model"
    hint = ""
    if registry is not None and version is not None:
        hint = ". Serve another CI model version: `adgen model rollback --kind ci` or `adgen model use --kind ci`"
        try:
            model_dir = registry.verify(version)
            kind = registry.info(version).kind
        except RegistryError as exc:
            raise WorkerSetupError(f"{exc}{hint}") from exc
        if kind != "ci":
            raise WorkerSetupError(f"CI registry version {version} is a {kind} model, not a CI model{hint}")
    try:
        # the serving settings the build chose on validation (serving.json), decoded on model.backend
        service = SearchService.from_build(root, settings.model, model_dir=model_dir)
        check_served(service)
    except (CIError, CIModelError, CIModelRefused, BackendUnavailable) as exc:
        raise WorkerSetupError(
            f"the search path cannot start from {root} with the CI model {model_dir}: {exc}{hint}"
        ) from exc
    return registry, version, service


def run_worker(settings: Settings, generator: Generator | None = None) -> None:
    """Build, expose metrics on 127.0.0.1, and run until SIGTERM/SIGINT (Faust handles both)."""
    worker = build_worker(settings, generator)
    worker.metrics.serve(settings.worker.web_host, settings.worker.metrics_port)
    faust.Worker(worker.app, loglevel=settings.worker.log_level, quiet=True).execute_from_commandline()
