"""RARE query path: normalise -> head-query cache -> constrained CI generation -> union of the CIs' ads.

`SearchService` is the whole path as plain Python (used by the CLI, evaluation and the benchmark). The edges
live here too: the worker component `QueryRetrieval` (Faust agent on `search-queries`, answers into Redis,
bad queries to the dead-letter topic with the reason, CIs for new ads) and the HTTP view `GET /search?q=...`
(aiohttp app or Faust page, 4xx with a reason for bad queries). Redis keys: processors/search_store.py.

The head cache holds *CIs* per head query, not ads: a hit skips the model (the expensive step) but still
resolves ads through the live index, so an ad added or removed a second ago is already reflected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from adgen.processors.search_store import SearchRedisStore

from adgen.core.catalogue import Item
from adgen.core.config import ModelSettings, Settings
from adgen.index.snapshot import SnapshotStore
from adgen.index.trie_arrays import TrieArrays
from adgen.processors.ad_updates import AssignedCIs
from adgen.processors.feature_store import AdRecord
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.worker_parts import Component, DeadLetters
from adgen.search.ci_index import CI_KIND, CIIndex, build_ci_trie, load_latest_snapshot, normalise_text, save_snapshot
from adgen.search.ci_model import CIModel
from adgen.search.ci_serving import QUERY_SIDE_SETTINGS, CIQueryMapper, ServingConfig, assign_ads
from adgen.streams.app import decoded_stream
from adgen.streams.codec import EventDecodeError, encode_event
from adgen.streams.dlq import DeadLetter
from adgen.streams.events import MAX_TEXT_LEN, SearchQuery
from adgen.streams.topics import SEARCH_QUERIES

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = MAX_TEXT_LEN


class QueryError(ValueError):
    """A query we refuse, with the HTTP status that says why (400 empty, 413 too long, 422 not text)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def validate_query(raw: object) -> str:
    """The normalised query, or QueryError naming what is wrong with the raw value."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise QueryError(422, f"query is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    if not isinstance(raw, str):
        raise QueryError(422, f"query must be text, got {type(raw).__name__}")
    if len(raw) > MAX_QUERY_CHARS:
        raise QueryError(413, f"query has {len(raw)} characters; the limit is {MAX_QUERY_CHARS}")
    bad = [c for c in raw if unicodedata.category(c) in {"Cc", "Cs", "Co", "Cn"} and c not in "\t\n\r"]
    if bad:
        raise QueryError(422, f"query contains non-text characters such as {bad[0]!r}")
    normalised = normalise_text(raw)
    if not normalised:
        raise QueryError(400, "query is empty after normalisation (no letters or digits)")
    return normalised


SearchConfig = ServingConfig
"""The online knobs (B CIs per query, beams, low-score truncation, lexical fusion, result size, CIs of new
ads) live with the ranking logic in search/ci_serving.py; `adgen ci build` tunes them on validation."""


class ScoredAd(BaseModel):
    ad_id: str
    score: float


class ScoredCI(BaseModel):
    ci_id: int
    text: str
    prob: float


class SearchResult(BaseModel):
    """One answered query (also the value written to Redis for a search-queries event)."""

    query: str
    normalised: str
    source: Literal["cache", "model"]
    cis: list[ScoredCI]
    ads: list[ScoredAd]
    index_version: str
    model_version: str = ""  # the CI model whose CIs these are (a cache hit: the model that filled the cache)
    latency_ms: float


@dataclass(frozen=True)
class ServingState:
    """What one query batch or ad upsert decodes with: a CI model, its trie over the CI set, the mapper over
    both and the head cache that model answered. The worker replaces it whole (`SearchService.swap_model`)
    and never changes it in place, so no batch mixes one model with another's trie or cached answers."""

    model: CIModel
    trie: TrieArrays
    mapper: CIQueryMapper
    head_cache: dict[str, dict[int, float]]


def _answers(mapper: CIQueryMapper, queries: Sequence[str], batch_size: int) -> dict[str, dict[int, float]]:
    """Each normalised query's CI distribution by `mapper`, in batches."""
    out: dict[str, dict[int, float]] = {}
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        out.update(zip(chunk, mapper(chunk), strict=True))
    return out


class SearchService:
    """The query path over one CI index and a serving state (CI model, CI trie, mapper, head cache of CI id ->
    prob per query). Each batch reads the state once; `swap_model` replaces it between batches."""

    def __init__(
        self,
        index: CIIndex,
        model: CIModel,
        trie: TrieArrays | None = None,
        head_cache: Mapping[str, Mapping[int, float]] | None = None,
        config: SearchConfig | None = None,
    ) -> None:
        self.index = index
        self.config = config or SearchConfig()
        self.state = self._state(model, trie, {q: dict(c) for q, c in (head_cache or {}).items()})
        self.stats: Counter[str] = Counter()

    # the served state's parts, read-only (a caller holding one of them across a swap keeps the old one)
    @property
    def model(self) -> CIModel:
        return self.state.model

    @property
    def trie(self) -> TrieArrays:
        return self.state.trie

    @property
    def mapper(self) -> CIQueryMapper:
        return self.state.mapper

    @property
    def head_cache(self) -> dict[str, dict[int, float]]:
        """The served head cache (offline tools may clear it; the worker only ever swaps whole states)."""
        return self.state.head_cache

    @property
    def model_version(self) -> str:
        return self.state.model.model_version

    # -- the served model ---------------------------------------------------------------------------------
    def state_for(
        self, model: CIModel, trie: TrieArrays | None = None, head_queries: Sequence[str] | None = None
    ) -> ServingState:
        """A state serving `model` over this index's CI set: its trie (given, or built), a mapper, and the head
        queries (default: the served head cache's) answered by `model`, so cached answers always come from the
        model being served. Decodes every head query: build it off the serving path."""
        queries = list(self.state.head_cache if head_queries is None else head_queries)
        state = self._state(model, trie, {})
        return replace(state, head_cache=_answers(state.mapper, queries, batch_size=64))

    def _state(self, model: CIModel, trie: TrieArrays | None, head_cache: dict[str, dict[int, float]]) -> ServingState:
        """`model` over this index's CI set: its trie (given, or built) and mapper, with `head_cache` as given."""
        trie = trie if trie is not None else model.ci_trie(self.index.ci_set)
        return ServingState(model, trie, CIQueryMapper(model, trie, self.index.ci_set, self.config), head_cache)

    def swap_model(self, state: ServingState) -> ServingState:
        """Serve `state` from the next query batch or ad upsert on (one under way finishes with the state it
        read); returns the state it replaces."""
        if state.trie.num_values != self.index.num_cis:
            raise ValueError(f"the state's trie holds {state.trie.num_values} CIs, the index {self.index.num_cis}")
        previous, self.state = self.state, state
        return previous

    # -- queries ------------------------------------------------------------------------------------------
    def generate_cis(self, normalised: Sequence[str]) -> list[dict[int, float]]:
        """Each already-normalised query's CI distribution (CI model fused with lexical matching, per config)."""
        return self.state.mapper(normalised)

    def search(self, raw: object, top_n: int | None = None) -> SearchResult:
        """Answer one raw query (raises QueryError for bad input)."""
        return self.search_batch([raw], top_n)[0]

    def search_batch(self, raws: Sequence[object], top_n: int | None = None) -> list[SearchResult]:
        """Answer several valid queries; cache misses share one batched model call."""
        started = time.perf_counter()
        state = self.state  # once: a swap meanwhile never mixes two models in one batch
        normalised = [validate_query(r) for r in raws]
        misses = sorted({q for q in normalised if q not in state.head_cache})
        generated = dict(zip(misses, state.mapper(misses), strict=True)) if misses else {}
        elapsed_ms = 1000 * (time.perf_counter() - started)
        out = []
        for raw, q in zip(raws, normalised, strict=True):
            t0 = time.perf_counter()
            hit = q in state.head_cache
            cis = state.head_cache[q] if hit else generated[q]
            self.stats["cache_hit" if hit else "cache_miss"] += 1
            source: Literal["cache", "model"] = "cache" if hit else "model"
            out.append(self._answer(state, str(raw), q, source, cis, top_n, t0, 0.0 if hit else elapsed_ms))
        return out

    def _answer(
        self,
        state: ServingState,
        raw: str,
        normalised: str,
        source: Literal["cache", "model"],
        cis: Mapping[int, float],
        top_n: int | None,
        t0: float,
        shared_ms: float,
    ) -> SearchResult:
        ranked = state.mapper.rank(self.index, normalised, cis, top_n or self.config.top_n)
        texts = self.index.ci_set.texts
        return SearchResult(
            query=raw,
            normalised=normalised,
            source=source,
            cis=[ScoredCI(ci_id=ci, text=texts[ci], prob=p) for ci, p in sorted(cis.items(), key=lambda kv: -kv[1])],
            # plain dicts: pydantic builds the up-to-500 ScoredAds in its Rust core, twice as fast as
            # constructing each model in Python (half the cost of a cache hit was that loop).
            ads=[{"ad_id": a, "score": s} for a, s in ranked],
            index_version=self.index.version,
            model_version=state.model.model_version,
            latency_ms=shared_ms + 1000 * (time.perf_counter() - t0),
        )

    # -- head cache ---------------------------------------------------------------------------------------
    def build_head_cache(self, frequencies: Mapping[str, int], size: int, batch_size: int = 64) -> int:
        """Precompute CIs for the `size` most frequent normalised queries (offline); returns entries added."""
        counts: Counter[str] = Counter()
        for text, n in frequencies.items():
            q = normalise_text(text)
            if q and len(q) <= MAX_QUERY_CHARS:
                counts[q] += n
        head = [q for q, _ in counts.most_common(size)]
        state = self.state
        self.state = replace(state, head_cache={**state.head_cache, **_answers(state.mapper, head, batch_size)})
        return len(head)

    def head_cache_json(self) -> dict[str, dict[str, float]]:
        return _head_cache_json(self.state)

    # -- ads ----------------------------------------------------------------------------------------------
    def upsert_ads(self, items: Sequence[Item]) -> dict[str, dict[int, float]]:
        """New or changed ads get their catalogue CIs and CIs by constrained inference into the existing set,
        weighted as in the build; the index updates as one change (queries see all of these ads' CIs or none)."""
        state = self.state  # once: the model and the trie of one version
        assigned = assign_ads(state.model, state.trie, self.index.ci_set, items, self.config)
        if assigned:
            self.index.update(assigned)
        return assigned

    def remove_ad(self, ad_id: str) -> bool:
        return self.index.remove_ad(ad_id)

    def save_snapshot(self, root: Path, keep: int = 5) -> Path:
        """Publish the index as it is now (new ads' CIs included) as the next CI snapshot, with the served
        model's CI token ids, head cache, fingerprint and version; prune to `keep`."""
        state = self.state
        model = state.model
        path = save_snapshot(
            root,
            self.index,
            model.ci_sequences(self.index.ci_set),
            _head_cache_json(state),
            model.fingerprint(),
            model.model_version,
        )
        SnapshotStore(root, CI_KIND).prune(keep)
        return path

    @classmethod
    def from_build(
        cls,
        build_dir: Path,
        model_settings: ModelSettings | None = None,
        model_dir: Path | None = None,
        **overrides: Any,
    ) -> SearchService:
        """Load an `adgen ci build` directory with the serving settings it chose on validation (serving.json),
        decoding on `model_settings.backend` with its own model or the CI model in `model_dir` (e.g. a registry
        version); `overrides` replace single settings (e.g. top_n). An override that changes how queries become
        CIs empties the head cache, whose answers were computed with the saved settings (misses are answered
        live, so the service serves exactly its settings)."""
        build_dir = Path(build_dir)
        saved = ServingConfig.load(build_dir)
        config = saved.model_copy(update=overrides)
        service = cls.from_snapshot(build_dir / "snapshots", model_dir or build_dir / "model", config, model_settings)
        if any(getattr(config, name) != getattr(saved, name) for name in QUERY_SIDE_SETTINGS):
            service.head_cache.clear()
        return service

    @classmethod
    def from_snapshot(
        cls,
        snapshot_root: Path,
        model_dir: Path,
        config: SearchConfig | None = None,
        model_settings: ModelSettings | None = None,
    ) -> SearchService:
        """Load the newest valid CI snapshot with the CI model in `model_dir` (on `model_settings.backend`). The
        snapshot's head cache is kept when that model answered it (the same version, or an unrecorded one with
        the same tokenizer), else the model answers its queries again."""
        snap = load_latest_snapshot(snapshot_root)
        model = CIModel.load(model_dir, model_settings)
        manifest = snap.manifest
        same_tokenizer = bool(manifest.tokenizer_fingerprint) and manifest.tokenizer_fingerprint == model.fingerprint()
        if same_tokenizer and snap.token_sequences is not None:
            trie = build_ci_trie(snap.token_sequences)
        else:  # another tokenizer: it must represent every CI (CIError/CIModelError naming one it cannot)
            trie = build_ci_trie(model.checked_ci_sequences(snap.ci_set))
        head = {q: {int(ci): float(p) for ci, p in cis.items()} for q, cis in (snap.head_cache or {}).items()}
        answered_by_model = manifest.model_version == model.model_version if manifest.model_version else same_tokenizer
        service = cls(snap.to_index(), model, trie, head if answered_by_model else None, config)
        if head and not answered_by_model:
            service.swap_model(service.state_for(model, trie, list(head)))
        return service


def _head_cache_json(state: ServingState) -> dict[str, dict[str, float]]:
    return {q: {str(ci): p for ci, p in cis.items()} for q, cis in state.head_cache.items()}


def query_frequencies(texts: Iterable[str]) -> Counter[str]:
    """Normalised query -> count, from any query log (e.g. content_search events)."""
    return Counter(q for q in (normalise_text(t) for t in texts) if q)


# --- HTTP -----------------------------------------------------------------------------------------------


def handle_search_params(service: SearchService, params: Mapping[str, Sequence[object]]) -> tuple[int, dict[str, Any]]:
    """Status and JSON body for `GET /search?q=...&n=...` (params: name -> all values given)."""
    qs = params.get("q") or []
    if not qs:
        return 400, {"error": "missing query parameter 'q' (GET /search?q=your+query)"}
    if len(qs) > 1:
        return 422, {"error": f"'q' given {len(qs)} times; send one query text"}
    top_n = None
    ns = params.get("n") or []
    if ns:
        try:
            top_n = int(str(ns[0]))
        except ValueError:
            return 400, {"error": f"'n' must be an integer, got {ns[0]!r}"}
        if not 1 <= top_n <= service.config.top_n:
            return 400, {"error": f"'n' must be between 1 and {service.config.top_n}, got {top_n}"}
    try:
        result = service.search(qs[0], top_n=top_n)
    except QueryError as exc:
        return exc.status, {"error": exc.reason}
    return 200, json.loads(result.model_dump_json())


def _params_from_request(request: Any) -> dict[str, list[object]]:
    query = request.rel_url.query if hasattr(request, "rel_url") else request.query
    params: dict[str, list[object]] = {}
    for key in set(query.keys()):
        params[key] = list(query.getall(key))
    return params


def aiohttp_app(service: SearchService) -> Any:
    """A standalone aiohttp application serving `GET /search` (also used by the tests)."""
    from aiohttp import web

    async def search(request: web.Request) -> web.Response:
        # in a worker thread, like the agent: a model-path query must never stall the event loop
        status, body = await asyncio.to_thread(handle_search_params, service, _params_from_request(request))
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/search", search)
    return app


def register_search_view(app: Any, service: SearchService) -> None:
    """`GET /search?q=...` on a Faust app's web server (the worker's `web_port`)."""
    from faust import web as faust_web

    @app.page("/search")
    class SearchView(faust_web.View):  # type: ignore[misc]
        async def get(self, request: faust_web.Request) -> faust_web.Response:
            # in a worker thread: on the loop, each query stalled the whole worker (found by bench/soak.py)
            status, body = await asyncio.to_thread(handle_search_params, service, _params_from_request(request))
            return self.json(body, status=status)


# --- the worker component ------------------------------------------------------------------------------


class QueryRetrieval(Component):
    """The search path in the worker: owns `search-queries` (a Faust agent), the CI index and its Redis keys.

    - queries: each valid query is answered (in a thread, so a model-path query never stalls the loop) and
      written to Redis by query id and by normalised query; a query that decodes but cannot be searched goes
      to the dead-letter topic like an undecodable one, and both are counted;
    - `index_ads`: the ad index hands it every applied ad batch: new ads get CIs by constrained inference,
      deleted or paused ads leave the CI index, and the ad records come back with their CIs; once the records
      are written, `publish_ads` mirrors the change to the `ci:*` keys (so a CI never names an ad without a record);
    - on start the whole CI index is published to Redis (`ci:current` flips to its version), and
      `save_snapshot` (called by the snapshot component) keeps new ads' CIs across restarts;
    - `GET /search?q=...` on the worker's web port.
    """

    def __init__(
        self,
        app: Any,
        query_topic: Any,
        settings: Settings,
        service: SearchService,
        store: SearchRedisStore,
        dead_letters: DeadLetters,
        metrics: WorkerMetrics,
        snapshot_root: Path,
    ) -> None:
        super().__init__()
        self.app = app
        self.settings = settings
        self.service = service
        self.store = store
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.snapshot_root = snapshot_root
        self._published = False
        self.query_topic = query_topic
        self.agent = app.agent(query_topic, name="query_retrieval")(self._answer_queries)
        register_search_view(app, service)

    @property
    def ready(self) -> bool:
        return self._published and super().ready

    async def on_start(self) -> None:
        written = await self.store.publish_index(self.service.index)
        self._published = True
        log.info("CI index %s published to Redis (%d keys)", self.service.index.version, written)

    async def _answer_queries(self, stream: Any) -> None:
        async for event in decoded_stream(stream, self.dead_letters.sink(SEARCH_QUERIES.name), self.settings):
            if isinstance(event, SearchQuery):
                await self.answer(event)

    async def answer(self, query: SearchQuery) -> None:
        """Answer one decoded query into Redis, or dead-letter it with the reason it cannot be searched."""
        self.metrics.events.labels(SEARCH_QUERIES.name).inc()
        try:
            result = await asyncio.to_thread(self.service.search, query.text)
        except QueryError as exc:
            key, value = encode_event(query)
            letter = DeadLetter.from_error(
                EventDecodeError("schema_violation", f"field 'text': {exc.reason}"),
                source_topic=self.query_topic.get_topic_name(),
                value=value,
                key=key,
            )
            await self.dead_letters.send(letter, SEARCH_QUERIES.name)
            return
        await self.store.write_results([(query.query_id, query.event_time.timestamp(), result)])

    async def index_ads(self, records: Sequence[AdRecord], items: Mapping[str, Item]) -> AssignedCIs:
        """CIs for an applied ad batch (see the class docstring): the records with `cis` filled, and what changed
        for `publish_ads`, which the ad-updates path calls once the records are written.

        A model failure is logged and never stops ad indexing: those records then go out without new CIs."""
        index = self.service.index
        before = index.view.ad_cis
        gone = [r.ad_id for r in records if r.status != "active" and r.ad_id in before]
        new = [items[r.ad_id] for r in records if r.status == "active" and r.ad_id not in before and r.ad_id in items]
        try:
            if gone:
                index.update(removals=gone)
            if new:
                await asyncio.to_thread(self.service.upsert_ads, new)
        except Exception:
            log.exception("CI assignment failed for %d ad records", len(records))
        view, texts = index.view, index.ci_set.texts
        filled = [
            r.model_copy(update={"cis": _ci_texts(view.ad_cis.get(r.ad_id, {}), texts)}) if r.status == "active" else r
            for r in records
        ]
        return AssignedCIs(filled, {ad: dict(before.get(ad, {})) for ad in [*gone, *(i.item_id for i in new)]})

    async def publish_ads(self, assigned: AssignedCIs) -> None:
        """Mirror the batch's CI changes to the live version's `ci:*` keys (after the ads' records are written)."""
        await self.store.write_ads(self.service.index, assigned.before)

    def save_snapshot(self) -> Path:
        """The CI index with every new ad's CIs, as the next CI snapshot (blocking: run it in a thread)."""
        return self.service.save_snapshot(self.snapshot_root)

    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus next offset per assigned partition (Faust's consumer and monitor, public API)."""
        consumer, read = self.app.consumer, self.app.monitor.tp_read_offsets
        out = {}
        for tp in consumer.assignment():
            last = read.get(tp)
            if last is not None:
                out[(tp.topic, tp.partition)] = max(0, consumer.highwater(tp) - (last + 1))
        return out


def _ci_texts(weights: Mapping[int, float], texts: Sequence[str]) -> list[str]:
    """The ad's CIs as text, strongest first."""
    return [texts[ci] for ci, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))]
