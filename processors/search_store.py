"""The search path's Redis keys (`ci:*`, `search:*`; all listed in docs/feature-store.md) over the one RedisClient.

The CI index is published per CI-set version (CI ids are only valid within one): a full publish writes every
key of a version and then flips `ci:current` to it, so a reader following the pointer never sees a half
written version; new ads' CIs are mirrored into the live version incrementally. Query results are guarded
writes keyed by query id and by normalised query (a replay never regresses them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from adgen.core.config import RedisSettings
from adgen.processors.query_retrieval import SearchResult
from adgen.processors.redis_client import RedisClient, version_ms
from adgen.search.ci_index import CIIndex


def _weights(mapping: Mapping[Any, float]) -> dict[str, str]:
    return {str(k): repr(w) for k, w in mapping.items()}


class SearchRedisStore:
    """Writes the CI index (full publish + incremental ad updates) and query results; reads them back."""

    def __init__(self, redis: RedisClient | RedisSettings, index_ttl_s: int | None = None) -> None:
        self.redis = redis if isinstance(redis, RedisClient) else RedisClient(redis)
        self.settings = self.redis.settings
        self.keys = self.redis.keys
        self.index_ttl_s = index_ttl_s if index_ttl_s is not None else self.settings.ttl_seconds

    @property
    def client(self) -> Any:
        return self.redis.client

    async def close(self) -> None:
        await self.redis.close()

    async def publish_index(self, index: CIIndex, chunk: int = 2000) -> int:
        """Write every key of the index's version, then flip `ci:current` to it; returns keys written.

        Readers follow the pointer, so they never see a half-written version; old versions expire by TTL.
        """
        view, v, ttl = index.view, index.version, self.index_ttl_s
        writes: list[tuple[str, dict[str, str]]] = [
            (self.keys.ci_texts(v), {str(i): t for i, t in enumerate(index.ci_set.texts)})
        ]
        writes += [(self.keys.ci_ads(v, ci), _weights(ads)) for ci, ads in view.ci_ads.items()]
        writes += [(self.keys.ad_cis(v, ad), _weights(cis)) for ad, cis in view.ad_cis.items()]
        for start in range(0, len(writes), chunk):

            def queue(pipe: Any, part: list[tuple[str, dict[str, str]]] = writes[start : start + chunk]) -> None:
                for key, mapping in part:
                    pipe.delete(key)
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, ttl)

            await self.redis.pipelined("publish CI index", queue)
        await self.redis.retrying("flip ci:current", lambda: self.client.set(self.keys.ci_current(), v))
        return len(writes)

    async def write_ads(self, index: CIIndex, old_cis: Mapping[str, Iterable[int]]) -> None:
        """Mirror the ads whose CIs just changed (ad -> its CIs before the change) into the live version."""
        if not old_cis:
            return
        view, v, ttl = index.view, index.version, self.index_ttl_s

        def queue(pipe: Any) -> None:
            for ad_id, before in old_cis.items():
                new = view.ad_cis.get(ad_id, {})
                for ci in set(before) - set(new):
                    pipe.hdel(self.keys.ci_ads(v, ci), ad_id)
                pipe.delete(self.keys.ad_cis(v, ad_id))
                if new:
                    pipe.hset(self.keys.ad_cis(v, ad_id), mapping=_weights(new))
                    pipe.expire(self.keys.ad_cis(v, ad_id), ttl)
                    for ci, w in new.items():
                        pipe.hset(self.keys.ci_ads(v, ci), ad_id, repr(w))
                        pipe.expire(self.keys.ci_ads(v, ci), ttl)

        await self.redis.pipelined("write ad CIs", queue, transaction=True)

    async def write_results(self, results: Sequence[tuple[str, float, SearchResult]]) -> int:
        """(query_id, event time s, result) each: guarded by event time so a replay never regresses a key."""
        ttl = self.settings.ttl_seconds
        items = []
        for query_id, event_time, result in results:
            payload, version = result.model_dump_json(), version_ms(event_time)
            items.append((self.keys.search_result(query_id), version, payload, ttl, False))
            items.append((self.keys.search_by_query(result.normalised), version, payload, ttl, False))
        return await self.redis.guarded_writes("search_result", items)

    async def read_result(self, query_id: str) -> SearchResult | None:
        (raw,) = await self.redis.hget_many([self.keys.search_result(query_id)])
        return SearchResult.model_validate_json(raw) if raw else None

    async def _read_live(self, key_of: Callable[[str], str]) -> dict[bytes, bytes]:
        """A hash of the version `ci:current` names ({} when no version is published)."""
        version = await self.redis.retrying("read ci:current", lambda: self.client.get(self.keys.ci_current()))
        if version is None:
            return {}
        key = key_of(version.decode())
        return await self.redis.retrying("read CI index", lambda: self.client.hgetall(key))

    async def read_cis_of_ad(self, ad_id: str) -> dict[int, float]:
        raw = await self._read_live(lambda v: self.keys.ad_cis(v, ad_id))
        return {int(k): float(w) for k, w in raw.items()}

    async def read_ads_of_ci(self, ci_id: int) -> dict[str, float]:
        raw = await self._read_live(lambda v: self.keys.ci_ads(v, ci_id))
        return {k.decode(): float(w) for k, w in raw.items()}
