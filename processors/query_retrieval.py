"""RARE query path: normalise -> head-query cache -> constrained CI generation -> union of the CIs' ads.

`SearchService` is the whole path as plain Python (used by the CLI, evaluation and the benchmark). The edges
live here too: `register_search_agent` (Faust agent on `search-queries`, answers into Redis, bad queries to
the dead-letter topic with the reason), the HTTP view `GET /search?q=...` (aiohttp app or Faust page, 4xx
with a reason for bad queries) and `SearchRedisStore` (CI index and results in Redis; keys in
docs/search.md).

The head cache holds *CIs* per head query, not ads: a hit skips the model (the expensive step) but still
resolves ads through the live index, so an ad added or removed a second ago is already reflected.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from adgen.core.catalogue import Item
from adgen.core.config import RedisSettings, Settings
from adgen.index.trie_arrays import TrieArrays
from adgen.processors.feature_store import GUARDED_SET_LUA, version_ms
from adgen.search.ci_data import AD_PROMPT, ad_prompt_text
from adgen.search.ci_index import CIIndex, build_ci_trie, load_latest_snapshot, normalise_text
from adgen.search.ci_model import CIModel, assign_cis, query_cis
from adgen.streams.events import MAX_TEXT_LEN

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


class SearchConfig(BaseModel):
    """Online knobs: B CIs per query (beam search with `beams`), low-score truncation, result size."""

    top_cis: int = Field(10, ge=1, description="B: CIs kept per query.")
    beams: int = Field(20, ge=1)
    score_floor: float | None = Field(-6.0, description="Per-token log-prob below which a CI branch is cut.")
    top_n: int = Field(500, ge=1)
    new_ad_cis: int = Field(5, ge=1, description="CIs generated per new ad.")
    new_ad_min_prob: float = Field(0.05, ge=0, le=1)


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
    latency_ms: float


class SearchService:
    """The query path over one CI index, CI trie, CI model and head cache (CI id -> prob per query)."""

    def __init__(
        self,
        index: CIIndex,
        model: CIModel,
        trie: TrieArrays | None = None,
        head_cache: Mapping[str, Mapping[int, float]] | None = None,
        config: SearchConfig | None = None,
    ) -> None:
        self.index = index
        self.model = model
        self.trie = trie if trie is not None else model.ci_trie(index.ci_set)
        self.head_cache: dict[str, dict[int, float]] = {q: dict(c) for q, c in (head_cache or {}).items()}
        self.config = config or SearchConfig()
        self.stats: Counter[str] = Counter()

    # -- queries ------------------------------------------------------------------------------------------
    def generate_cis(self, normalised: Sequence[str]) -> list[dict[int, float]]:
        """The model's top-B CIs (probabilities over the returned beams) for already-normalised queries."""
        cfg = self.config
        return query_cis(self.model, self.trie, normalised, cfg.top_cis, cfg.beams, cfg.score_floor)

    def search(self, raw: object, top_n: int | None = None) -> SearchResult:
        """Answer one raw query (raises QueryError for bad input)."""
        return self.search_batch([raw], top_n)[0]

    def search_batch(self, raws: Sequence[object], top_n: int | None = None) -> list[SearchResult]:
        """Answer several valid queries; cache misses share one batched model call."""
        started = time.perf_counter()
        normalised = [validate_query(r) for r in raws]
        misses = sorted({q for q in normalised if q not in self.head_cache})
        generated = dict(zip(misses, self.generate_cis(misses), strict=True)) if misses else {}
        elapsed_ms = 1000 * (time.perf_counter() - started)
        out = []
        for raw, q in zip(raws, normalised, strict=True):
            t0 = time.perf_counter()
            hit = q in self.head_cache
            cis = self.head_cache[q] if hit else generated[q]
            self.stats["cache_hit" if hit else "cache_miss"] += 1
            out.append(
                self._answer(str(raw), q, "cache" if hit else "model", cis, top_n, t0, 0.0 if hit else elapsed_ms)
            )
        return out

    def _answer(
        self,
        raw: str,
        normalised: str,
        source: Literal["cache", "model"],
        cis: Mapping[int, float],
        top_n: int | None,
        t0: float,
        shared_ms: float,
    ) -> SearchResult:
        ranked = self.index.rank(cis, top_n or self.config.top_n)
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
        for start in range(0, len(head), batch_size):
            chunk = head[start : start + batch_size]
            self.head_cache.update(zip(chunk, self.generate_cis(chunk), strict=True))
        return len(head)

    def head_cache_json(self) -> dict[str, dict[str, float]]:
        return {q: {str(ci): p for ci, p in cis.items()} for q, cis in self.head_cache.items()}

    # -- ads ----------------------------------------------------------------------------------------------
    def upsert_ads(self, items: Sequence[Item]) -> dict[str, dict[int, float]]:
        """New or changed ads get CIs by constrained inference into the existing set; the index updates."""
        if not items:
            return {}
        prompts = [AD_PROMPT.format(text=ad_prompt_text(item)) for item in items]
        cfg = self.config
        rows = assign_cis(self.model, self.trie, prompts, k=cfg.new_ad_cis, min_prob=cfg.new_ad_min_prob)
        assigned = {}
        for item, cis in zip(items, rows, strict=True):
            self.index.set_ad(item.item_id, cis)
            assigned[item.item_id] = cis
        return assigned

    def remove_ad(self, ad_id: str) -> bool:
        return self.index.remove_ad(ad_id)

    @classmethod
    def from_snapshot(cls, snapshot_root: Path, model_dir: Path, config: SearchConfig | None = None) -> SearchService:
        """Load the newest valid CI snapshot and the CI model it was built with."""
        snap = load_latest_snapshot(snapshot_root)
        model = CIModel.load(model_dir)
        fp = snap.manifest.tokenizer_fingerprint
        if fp and snap.token_sequences is not None and fp == model.fingerprint():
            trie = build_ci_trie(snap.token_sequences)
        else:
            trie = model.ci_trie(snap.ci_set)
        head = {q: {int(ci): float(p) for ci, p in cis.items()} for q, cis in (snap.head_cache or {}).items()}
        return cls(snap.to_index(), model, trie, head, config)


def query_frequencies(texts: Iterable[str]) -> Counter[str]:
    """Normalised query -> count, from any query log (e.g. content_search events)."""
    return Counter(q for q in (normalise_text(t) for t in texts) if q)


# --- Redis ----------------------------------------------------------------------------------------------


class SearchKeys(BaseModel):
    """The search path's Redis keys (documented in docs/search.md). CI ids are only valid per version."""

    namespace: str = "adgen"
    env: str = "dev"

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:{self.env}"

    def ci_current(self) -> str:
        return f"{self.prefix}:ci:current"

    def ci_texts(self, version: str) -> str:
        return f"{self.prefix}:ci:{version}:texts"

    def ci_ads(self, version: str, ci_id: int) -> str:
        return f"{self.prefix}:ci:{version}:ads:{ci_id}"

    def ad_cis(self, version: str, ad_id: str) -> str:
        return f"{self.prefix}:ci:{version}:ad:{ad_id}"

    def result(self, query_id: str) -> str:
        return f"{self.prefix}:search:result:{query_id}"

    def by_query(self, normalised: str) -> str:
        digest = hashlib.sha1(normalised.encode(), usedforsecurity=False).hexdigest()
        return f"{self.prefix}:search:query:{digest}"


class SearchRedisStore:
    """Writes the CI index (full publish + incremental ad updates) and query results; async, pipelined."""

    def __init__(self, settings: RedisSettings, index_ttl_s: int | None = None) -> None:
        self.settings = settings
        self.keys = SearchKeys(namespace=settings.namespace, env=settings.env)
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
        if settings.password is not None:
            options["password"] = settings.password.get_secret_value()
        self.client = aioredis.Redis.from_url(settings.url, **options)
        self._guarded_set = self.client.register_script(GUARDED_SET_LUA)
        self.index_ttl_s = index_ttl_s if index_ttl_s is not None else settings.ttl_seconds

    async def close(self) -> None:
        await self.client.aclose()

    async def publish_index(self, index: CIIndex, chunk: int = 2000) -> int:
        """Write every key of one index version, then flip `ci:current` to it; returns keys written.

        Readers follow the pointer, so they never see a half-written version; old versions expire by TTL.
        """
        v, ttl = index.version, self.index_ttl_s
        writes: list[tuple[str, dict[str, str]]] = [
            (self.keys.ci_texts(v), {str(i): t for i, t in enumerate(index.ci_set.texts)})
        ]
        writes += [(self.keys.ci_ads(v, ci), {a: repr(w) for a, w in ads.items()}) for ci, ads in index.ci_ads.items()]
        writes += [
            (self.keys.ad_cis(v, ad), {str(c): repr(w) for c, w in cis.items()}) for ad, cis in index.ad_cis.items()
        ]
        for start in range(0, len(writes), chunk):
            pipe = self.client.pipeline(transaction=False)
            for key, mapping in writes[start : start + chunk]:
                pipe.delete(key)
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, ttl)
            await pipe.execute()
        await self.client.set(self.keys.ci_current(), v)
        return len(writes)

    async def write_ad(self, index: CIIndex, ad_id: str, old_cis: Iterable[int]) -> None:
        """Mirror one ad's incremental change (after `index.set_ad`/`remove_ad`) into the live version."""
        v = index.version
        new = index.ad_cis.get(ad_id, {})
        pipe = self.client.pipeline(transaction=True)
        for ci in set(old_cis) - set(new):
            pipe.hdel(self.keys.ci_ads(v, ci), ad_id)
        pipe.delete(self.keys.ad_cis(v, ad_id))
        if new:
            pipe.hset(self.keys.ad_cis(v, ad_id), mapping={str(c): repr(w) for c, w in new.items()})
            pipe.expire(self.keys.ad_cis(v, ad_id), self.index_ttl_s)
            for ci, w in new.items():
                pipe.hset(self.keys.ci_ads(v, ci), ad_id, repr(w))
                pipe.expire(self.keys.ci_ads(v, ci), self.index_ttl_s)
        await pipe.execute()

    async def write_results(self, results: Sequence[tuple[str, float, SearchResult]]) -> int:
        """(query_id, event time s, result) each: guarded by event time so a replay never regresses a key."""
        if not results:
            return 0
        ttl = self.settings.ttl_seconds
        pipe = self.client.pipeline(transaction=False)
        for query_id, event_time, result in results:
            payload = result.model_dump_json()
            version = version_ms(event_time)
            for key in (self.keys.result(query_id), self.keys.by_query(result.normalised)):
                await self._guarded_set(keys=[key], args=[version, payload, ttl, 0], client=pipe)
        return sum(int(r) for r in await pipe.execute())

    async def read_result(self, query_id: str) -> SearchResult | None:
        raw = await self.client.hget(self.keys.result(query_id), "data")
        return SearchResult.model_validate_json(raw) if raw else None

    async def read_ads_of_ci(self, ci_id: int) -> dict[str, float]:
        version = await self.client.get(self.keys.ci_current())
        if version is None:
            return {}
        raw = await self.client.hgetall(self.keys.ci_ads(version.decode(), ci_id))
        return {k.decode(): float(v) for k, v in raw.items()}


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
        status, body = handle_search_params(service, _params_from_request(request))
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
            status, body = handle_search_params(service, _params_from_request(request))
            return self.json(body, status=status)


# --- Faust agent ----------------------------------------------------------------------------------------


def register_search_agent(
    app: Any,
    topics: Any,
    settings: Settings,
    service: SearchService,
    store: SearchRedisStore,
    metrics: Any | None = None,
) -> Any:
    """The agent on `search-queries`: each valid query is answered and written to Redis (by query id and by
    normalised query); a query that decodes but cannot be searched goes to the dead-letter topic.

    The search runs in a worker thread so a model-path query never stalls the event loop (and with it the
    behaviour windows); `metrics` (WorkerMetrics) counts decoded queries like the other topics."""
    from adgen.streams.app import decoded_stream, send_dead_letter
    from adgen.streams.codec import EventDecodeError, encode_event
    from adgen.streams.dlq import DeadLetter
    from adgen.streams.events import SearchQuery
    from adgen.streams.topics import SEARCH_QUERIES

    @app.agent(topics.search_queries, name="query_retrieval")
    async def query_retrieval(stream: Any) -> None:
        async for event in decoded_stream(stream, topics.dead_letter, settings):
            if not isinstance(event, SearchQuery):
                continue
            if metrics is not None:
                metrics.events.labels(SEARCH_QUERIES.name).inc()
            try:
                result = await asyncio.to_thread(service.search, event.text)
            except QueryError as exc:
                key, value = encode_event(event)
                letter = DeadLetter.from_error(
                    EventDecodeError("schema_violation", f"field 'text': {exc.reason}"),
                    source_topic=topics.search_queries.get_topic_name(),
                    value=value,
                    key=key,
                )
                await send_dead_letter(topics.dead_letter, letter)
                continue
            await store.write_results([(event.query_id, event.event_time.timestamp(), result)])

    return query_retrieval
