"""The Redis feature store: one key schema (docs/feature-store.md), guarded pipelined writes, a reader.

Every value is a Redis hash `{v: <version>, data: <JSON>}`. A small Lua script writes `data` only if the
new version is newer than the stored one (version = event time in ms), so a late or replayed write never
overwrites a newer one and replaying a topic from any offset converges to the same store. Writes are
pipelined and retried with exponential backoff while Redis is unreachable: the worker stalls rather than
losing a write, and because every write is guarded, retrying a half-applied pipeline is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Literal, TypeVar

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.exceptions import AuthenticationError, BusyLoadingError, ConnectionError, TimeoutError

from adgen.core.config import RedisSettings
from adgen.processors.scheduler import LastGeneration

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
MAX_BACKOFF_S = 5.0

# KEYS[1] = key; ARGV = version, JSON payload, ttl seconds (0 = keep), strict (1: an equal version is not newer)
GUARDED_SET_LUA = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur then
  local c = tonumber(cur)
  local n = tonumber(ARGV[1])
  if c > n or (ARGV[4] == '1' and c == n) then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'data', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) else redis.call('PERSIST', KEYS[1]) end
return 1
"""

# The same rule for many keys in one call: KEYS[i] with ARGV[4i-3..4i] = version, payload, ttl, strict.
# Returns how many keys were newer and written. (One call per chunk of keys keeps a window batch to a few
# round trips; on Redis Cluster the keys of one call would have to share a hash slot.)
GUARDED_SET_MANY_LUA = """
local applied = 0
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local n = tonumber(ARGV[base + 1])
  local cur = redis.call('HGET', key, 'v')
  local newer = true
  if cur then
    local c = tonumber(cur)
    if c > n or (ARGV[base + 4] == '1' and c == n) then newer = false end
  end
  if newer then
    redis.call('HSET', key, 'v', ARGV[base + 1], 'data', ARGV[base + 2])
    local ttl = tonumber(ARGV[base + 3])
    if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
    applied = applied + 1
  end
end
return applied
"""
KEYS_PER_CALL = 256


def version_ms(moment: datetime | float) -> int:
    """Event time as integer milliseconds: the version every guarded write compares."""
    seconds = moment.timestamp() if isinstance(moment, datetime) else moment
    return round(seconds * 1000)


class FeatureKeys(BaseModel):
    """The key schema. Change it only together with docs/feature-store.md."""

    namespace: str = "adgen"
    env: str = "dev"

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:{self.env}"

    def user_ads(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}:ads"

    def user_window(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}:window"

    def ad(self, ad_id: str) -> str:
        return f"{self.prefix}:ad:{ad_id}"

    def index_current(self) -> str:
        return f"{self.prefix}:index:current"


class GeneratedAd(BaseModel):
    ad_id: str
    sid: list[int]
    score: float = Field(description="Beam log-probability of the ad's S-ID given the user's prompt.")


class UserAds(BaseModel):
    """A user's generated ad list, as the ranking service reads it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    user_id: str
    ads: list[GeneratedAd]
    model_version: str
    index_version: str
    index_watermark: datetime | None = Field(None, description="Newest ad-update event time in that index.")
    request_time: datetime = Field(description="Event time of the ad request served; the write guard's version.")
    window_fingerprint: str
    priority_group: int | None = Field(None, description="ARPU group the scheduler served the user in.")
    generated_at: datetime


class UserWindowFeatures(BaseModel):
    """The user's interest summary and window size, refreshed with every window update."""

    schema_version: Literal[1] = SCHEMA_VERSION
    user_id: str
    interest_summary: dict[str, int]
    window_events: int
    arpu: float
    newest_event_time: datetime = Field(description="The write guard's version.")


class AdRecord(BaseModel):
    """Ad -> S-ID (and CIs when the search path assigned them); a delete leaves a tombstone."""

    schema_version: Literal[1] = SCHEMA_VERSION
    ad_id: str
    status: Literal["active", "paused", "deleted"]
    sid: list[int] | None = None
    cis: list[str] = []
    title: str = ""
    category: str = ""
    ecpm: float = 0.0
    index_version: str = ""
    event_time: datetime = Field(description="Event time of the ad update; the write guard's version.")


class IndexPointer(BaseModel):
    """Which index version the worker decodes against, and which snapshot it started from."""

    version: str
    watermark: datetime | None
    snapshot: str | None = None
    ads: int
    updated_at: datetime


class MatchFeature(BaseModel):
    """LEADRE §5.3 item-side match: how close a candidate ad is to the ads generated for the user."""

    ad_id: str
    sid_prefix_similarity: float = Field(description="Longest shared S-ID prefix / S-ID length, best over the list.")
    best_match_ad: str | None
    best_match_score: float | None = Field(None, description="Beam score of that best-matching generated ad.")
    generated: bool = Field(description="The ad itself is in the user's generated list.")


class UserView(BaseModel):
    """What the ranking service sees for one user."""

    user_id: str
    ads: UserAds | None
    hidden_ads: list[str] = Field([], description="Generated ads dropped because they are deleted or paused now.")
    window: UserWindowFeatures | None
    match: list[MatchFeature] = []


class FeatureStoreUnavailable(RuntimeError):
    """Redis stayed unreachable through every retry (reader side; the worker retries without limit)."""


def sid_prefix_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    n = min(len(a), len(b))
    shared = 0
    while shared < n and a[shared] == b[shared]:
        shared += 1
    return shared / max(len(a), len(b), 1)


def match_features(user_ads: UserAds | None, candidates: dict[str, AdRecord | None]) -> list[MatchFeature]:
    """For each candidate ad, its best S-ID prefix similarity to any ad generated for the user."""
    out = []
    generated = user_ads.ads if user_ads else []
    for ad_id, record in candidates.items():
        best, best_ad = 0.0, None
        if record is not None and record.sid:
            for g in generated:
                sim = sid_prefix_similarity(record.sid, g.sid)
                if sim > best:
                    best, best_ad = sim, g
        out.append(
            MatchFeature(
                ad_id=ad_id,
                sid_prefix_similarity=best,
                best_match_ad=best_ad.ad_id if best_ad else None,
                best_match_score=best_ad.score if best_ad else None,
                generated=any(g.ad_id == ad_id for g in generated),
            )
        )
    return out


def _certificate_rejected(exc: BaseException) -> bool:
    """True if the error (or what it wraps; redis-py chains it as context) is a failed TLS certificate check."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


WriteObserver = Callable[[str, float, int], None]  # (kind, seconds, keys written)


class FeatureStore:
    """Async Redis writer and reader for the worker (redis.asyncio); `close()` when done."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        give_up_after: int | None = None,
        on_write: WriteObserver | None = None,
        on_retry: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = FeatureKeys(namespace=settings.namespace, env=settings.env)
        self.give_up_after = give_up_after  # None: retry until Redis answers (worker); int: reader
        self.on_write = on_write
        self.on_retry = on_retry
        options: dict[str, object] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
        if settings.password is not None:
            options["password"] = settings.password.get_secret_value()
        if settings.ssl_ca_certs is not None:
            options["ssl_ca_certs"] = str(settings.ssl_ca_certs)
        self.client = aioredis.Redis.from_url(settings.url, **options)
        self._guarded_set_many = self.client.register_script(GUARDED_SET_MANY_LUA)

    async def close(self) -> None:
        await self.client.aclose()

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await op()
            except AuthenticationError as exc:  # a ConnectionError subclass, but retrying cannot fix it
                raise FeatureStoreUnavailable(
                    f"Redis at {self.settings.url} refused authentication ({what}): {exc}. Check ADGEN_REDIS__PASSWORD."
                ) from exc
            except (ConnectionError, TimeoutError, BusyLoadingError, OSError) as exc:
                if _certificate_rejected(exc):  # a wrong CA or host name: retrying cannot fix it either
                    raise FeatureStoreUnavailable(
                        f"Redis at {self.settings.url}: TLS certificate not trusted ({what}): {exc}. "
                        "Check ADGEN_REDIS__SSL_CA_CERTS and the host name in ADGEN_REDIS__URL."
                    ) from exc
                attempt += 1
                if self.give_up_after is not None and attempt > self.give_up_after:
                    raise FeatureStoreUnavailable(
                        f"Redis at {self.settings.url} unreachable after {attempt} attempts ({what}): {exc}. "
                        "Is redis-server running (adgen up) and ADGEN_REDIS__URL right?"
                    ) from exc
                delay = min(MAX_BACKOFF_S, self.settings.retry_backoff_s * 2 ** min(attempt - 1, 16))
                if self.on_retry is not None:
                    self.on_retry(what, exc)
                log.warning("redis %s failed (attempt %d): %s; retrying in %.2fs", what, attempt, exc, delay)
                await asyncio.sleep(delay)

    async def _guarded_writes(self, kind: str, items: Sequence[tuple[str, int, str, int, bool]]) -> int:
        """(key, version, payload, ttl, strict) each; returns how many were newer and applied."""
        if not items:
            return 0

        async def run() -> int:
            async with self.client.pipeline(transaction=False) as pipe:  # reset even when execute fails
                for start in range(0, len(items), KEYS_PER_CALL):
                    chunk = items[start : start + KEYS_PER_CALL]
                    args: list[object] = []
                    for _, version, payload, ttl, strict in chunk:
                        args += [version, payload, ttl, 1 if strict else 0]
                    await self._guarded_set_many(keys=[c[0] for c in chunk], args=args, client=pipe)
                return sum(int(r) for r in await pipe.execute())

        started = time.perf_counter()
        applied = await self._retrying(f"write {kind}", run)
        if self.on_write is not None:
            self.on_write(kind, time.perf_counter() - started, len(items))
        return applied

    # ---- writes -------------------------------------------------------------------------------------

    async def write_user_ads(self, records: Sequence[UserAds]) -> int:
        ttl = self.settings.ttl_seconds
        return await self._guarded_writes(
            "user_ads",
            [
                (self.keys.user_ads(r.user_id), version_ms(r.request_time), r.model_dump_json(), ttl, True)
                for r in records
            ],
        )

    async def write_user_windows(self, records: Sequence[UserWindowFeatures]) -> int:
        ttl = self.settings.ttl_seconds
        return await self._guarded_writes(
            "user_window",
            [
                (self.keys.user_window(r.user_id), version_ms(r.newest_event_time), r.model_dump_json(), ttl, False)
                for r in records
            ],
        )

    async def write_ads(self, records: Sequence[AdRecord]) -> int:
        """Live ads never expire; tombstones of deleted ads expire after the TTL."""
        ttl = self.settings.ttl_seconds
        return await self._guarded_writes(
            "ad",
            [
                (
                    self.keys.ad(r.ad_id),
                    version_ms(r.event_time),
                    r.model_dump_json(),
                    ttl if r.status == "deleted" else 0,
                    True,
                )
                for r in records
            ],
        )

    async def write_index_pointer(self, pointer: IndexPointer) -> None:
        async def run() -> None:
            await self.client.set(self.keys.index_current(), pointer.model_dump_json())

        await self._retrying("write index pointer", run)

    # ---- reads --------------------------------------------------------------------------------------

    async def _hget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        async def run() -> list[bytes | None]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "data")
                return list(await pipe.execute())

        return await self._retrying("read", run) if keys else []

    async def user_ads(self, user_ids: Sequence[str]) -> dict[str, UserAds | None]:
        raws = await self._hget_many([self.keys.user_ads(u) for u in user_ids])
        return {u: UserAds.model_validate_json(r) if r else None for u, r in zip(user_ids, raws, strict=True)}

    async def last_generations(self, user_ids: Sequence[str]) -> dict[str, LastGeneration | None]:
        ads = await self.user_ads(user_ids)
        return {
            u: LastGeneration(request_ts=a.request_time.timestamp(), fingerprint=a.window_fingerprint) if a else None
            for u, a in ads.items()
        }

    async def ads(self, ad_ids: Sequence[str]) -> dict[str, AdRecord | None]:
        raws = await self._hget_many([self.keys.ad(a) for a in ad_ids])
        return {a: AdRecord.model_validate_json(r) if r else None for a, r in zip(ad_ids, raws, strict=True)}

    async def user_window(self, user_id: str) -> UserWindowFeatures | None:
        (raw,) = await self._hget_many([self.keys.user_window(user_id)])
        return UserWindowFeatures.model_validate_json(raw) if raw else None

    async def index_pointer(self) -> IndexPointer | None:
        async def run() -> bytes | None:
            return await self.client.get(self.keys.index_current())

        raw = await self._retrying("read index pointer", run)
        return IndexPointer.model_validate_json(raw) if raw else None

    async def user_view(self, user_id: str, candidates: Sequence[str] = ()) -> UserView:
        """The user's ads minus ads deleted or paused since generation, window features, match features."""
        user_ads = (await self.user_ads([user_id]))[user_id]
        generated_ids = [a.ad_id for a in user_ads.ads] if user_ads else []
        records = await self.ads(sorted(set(generated_ids) | set(candidates)))
        hidden = [a for a in generated_ids if (rec := records.get(a)) is not None and rec.status != "active"]
        if user_ads is not None and hidden:
            user_ads = user_ads.model_copy(update={"ads": [a for a in user_ads.ads if a.ad_id not in hidden]})
        return UserView(
            user_id=user_id,
            ads=user_ads,
            hidden_ads=hidden,
            window=await self.user_window(user_id),
            match=match_features(user_ads, {c: records.get(c) for c in candidates}),
        )
