"""The Redis feature store of the display path: the records the ranking service reads, their writer and reader.

Keys come from processors/redis_keys.py (all listed in docs/feature-store.md); connection, retries and the
guarded write (a newer event time wins, so replays converge) from processors/redis_client.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from adgen.core.config import RedisSettings
from adgen.processors.redis_client import RedisClient, WriteObserver, version_ms
from adgen.processors.scheduler import LastGeneration

SCHEMA_VERSION = 1


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


class FeatureStore:
    """The worker's writer and the ranking service's reader of user and ad features, over one RedisClient."""

    def __init__(
        self,
        redis: RedisClient | RedisSettings,
        *,
        give_up_after: int | None = None,
        on_write: WriteObserver | None = None,
        on_retry: Callable[[str, Exception], None] | None = None,
    ) -> None:
        """`redis`: the shared client, or settings to make one (with `give_up_after`, `on_write`, `on_retry`)."""
        if isinstance(redis, RedisSettings):
            redis = RedisClient(redis, give_up_after=give_up_after, on_write=on_write, on_retry=on_retry)
        self.redis = redis
        self.settings = redis.settings
        self.keys = redis.keys

    @property
    def client(self) -> aioredis.Redis:
        return self.redis.client

    async def close(self) -> None:
        await self.redis.close()

    # ---- writes -------------------------------------------------------------------------------------

    async def write_user_ads(self, records: Sequence[UserAds]) -> int:
        ttl = self.settings.ttl_seconds
        return await self.redis.guarded_writes(
            "user_ads",
            [
                (self.keys.user_ads(r.user_id), version_ms(r.request_time), r.model_dump_json(), ttl, True)
                for r in records
            ],
        )

    async def write_user_windows(self, records: Sequence[UserWindowFeatures]) -> int:
        ttl = self.settings.ttl_seconds
        return await self.redis.guarded_writes(
            "user_window",
            [
                (self.keys.user_window(r.user_id), version_ms(r.newest_event_time), r.model_dump_json(), ttl, False)
                for r in records
            ],
        )

    async def write_ads(self, records: Sequence[AdRecord]) -> int:
        """Live ads never expire; tombstones of deleted ads expire after the TTL."""
        ttl = self.settings.ttl_seconds
        return await self.redis.guarded_writes(
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
            await self.redis.client.set(self.keys.index_current(), pointer.model_dump_json())

        await self.redis.retrying("write index pointer", run)

    # ---- reads --------------------------------------------------------------------------------------

    async def user_ads(self, user_ids: Sequence[str]) -> dict[str, UserAds | None]:
        raws = await self.redis.hget_many([self.keys.user_ads(u) for u in user_ids])
        return {u: UserAds.model_validate_json(r) if r else None for u, r in zip(user_ids, raws, strict=True)}

    async def last_generations(self, user_ids: Sequence[str]) -> dict[str, LastGeneration | None]:
        ads = await self.user_ads(user_ids)
        return {
            u: LastGeneration(request_ts=a.request_time.timestamp(), fingerprint=a.window_fingerprint) if a else None
            for u, a in ads.items()
        }

    async def ads(self, ad_ids: Sequence[str]) -> dict[str, AdRecord | None]:
        raws = await self.redis.hget_many([self.keys.ad(a) for a in ad_ids])
        return {a: AdRecord.model_validate_json(r) if r else None for a, r in zip(ad_ids, raws, strict=True)}

    async def user_window(self, user_id: str) -> UserWindowFeatures | None:
        (raw,) = await self.redis.hget_many([self.keys.user_window(user_id)])
        return UserWindowFeatures.model_validate_json(raw) if raw else None

    async def index_pointer(self) -> IndexPointer | None:
        async def run() -> bytes | None:
            return await self.redis.client.get(self.keys.index_current())

        raw = await self.redis.retrying("read index pointer", run)
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
