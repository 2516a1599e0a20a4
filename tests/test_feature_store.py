"""The Redis feature store against a real redis-server: schema, version guard, TTLs, reader, retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from adgen.core.config import RedisSettings
from adgen.processors.feature_store import (
    AdRecord,
    FeatureStore,
    GeneratedAd,
    UserAds,
    UserWindowFeatures,
    sid_prefix_similarity,
)
from adgen.processors.redis_client import RedisUnavailable
from adgen.runtime import RedisServer

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as srv:
        yield srv


def settings_for(srv: RedisServer, **kw: object) -> RedisSettings:
    return RedisSettings(url=srv.url, env="test", ttl_seconds=3600, retry_backoff_s=0.05, **kw)


def user_ads(user: str, minutes: float, ads: list[tuple[str, list[int]]], fingerprint: str = "f") -> UserAds:
    return UserAds(
        user_id=user,
        ads=[GeneratedAd(ad_id=a, sid=s, score=-float(i)) for i, (a, s) in enumerate(ads)],
        model_version="m1",
        index_version="i1",
        request_time=T0 + timedelta(minutes=minutes),
        window_fingerprint=fingerprint,
        generated_at=datetime.now(UTC),
    )


def ad(ad_id: str, sid: list[int], minutes: float, status: str = "active") -> AdRecord:
    return AdRecord(ad_id=ad_id, status=status, sid=sid, event_time=T0 + timedelta(minutes=minutes))


def test_user_ads_round_trip_under_the_documented_key(server: RedisServer) -> None:
    async def go() -> None:
        store = FeatureStore(settings_for(server))
        assert await store.write_user_ads([user_ads("u1", 1, [("a1", [1, 2, 0])])]) == 1
        got = await store.user_ads(["u1", "nobody"])
        assert got["u1"] is not None and got["u1"].ads[0].ad_id == "a1" and got["nobody"] is None
        await store.close()

    asyncio.run(go())
    raw = redis.Redis.from_url(server.url)
    key = "adgen:test:user:{u1}:ads"  # braces: the user's hash tag (one slot per user on a Redis Cluster)
    assert raw.hget(key, "v") == str(int((T0 + timedelta(minutes=1)).timestamp() * 1000)).encode()
    assert 3500 < raw.ttl(key) <= 3600


def test_older_or_replayed_result_never_overwrites_a_newer_one(server: RedisServer) -> None:
    async def go() -> None:
        store = FeatureStore(settings_for(server))
        assert await store.write_user_ads([user_ads("u1", 10, [("new", [1])])]) == 1
        assert await store.write_user_ads([user_ads("u1", 5, [("old", [2])])]) == 0
        assert await store.write_user_ads([user_ads("u1", 10, [("replay", [3])])]) == 0
        assert (await store.user_ads(["u1"]))["u1"].ads[0].ad_id == "new"
        # window features: a same-time update (late event at an older time) is applied, an older one is not
        w = UserWindowFeatures(user_id="u1", interest_summary={"A": 1}, window_events=1, arpu=1.0, newest_event_time=T0)
        assert await store.write_user_windows([w]) == 1
        assert await store.write_user_windows([w.model_copy(update={"window_events": 2})]) == 1
        older = w.model_copy(update={"window_events": 9, "newest_event_time": T0 - timedelta(seconds=1)})
        assert await store.write_user_windows([older]) == 0
        assert (await store.user_window("u1")).window_events == 2
        await store.close()

    asyncio.run(go())


def test_concurrent_writers_converge_to_the_newest_version(server: RedisServer) -> None:
    async def go() -> None:
        stores = [FeatureStore(settings_for(server)) for _ in range(4)]
        writes = [s.write_user_ads([user_ads("u9", m, [(f"ad{m}", [m])])]) for m in range(40) for s in stores]
        await asyncio.gather(*writes)
        assert (await stores[0].user_ads(["u9"]))["u9"].ads[0].ad_id == "ad39"
        for s in stores:
            await s.close()

    asyncio.run(go())


def test_live_ads_never_expire_and_tombstones_do(server: RedisServer) -> None:
    async def go() -> None:
        store = FeatureStore(settings_for(server))
        await store.write_ads([ad("a1", [1, 2, 0], 1), ad("a2", [1, 3, 0], 1)])
        await store.write_ads([ad("a2", [1, 3, 0], 2, status="deleted")])
        await store.write_ads([ad("a2", [1, 3, 0], 1)])  # a replayed upsert older than the delete
        recs = await store.ads(["a1", "a2"])
        assert recs["a1"].status == "active" and recs["a2"].status == "deleted"
        await store.close()

    asyncio.run(go())
    raw = redis.Redis.from_url(server.url)
    assert raw.ttl("adgen:test:ad:{a1}") == -1  # braces: the ad's hash tag
    assert 0 < raw.ttl("adgen:test:ad:{a2}") <= 3600


def test_reader_hides_deleted_ads_and_computes_match_features(server: RedisServer) -> None:
    async def go() -> None:
        store = FeatureStore(settings_for(server))
        await store.write_ads([ad("g1", [1, 2, 3, 0], 1), ad("g2", [4, 5, 6, 0], 1), ad("c1", [1, 2, 9, 0], 1)])
        await store.write_ads([ad("gone", [7, 7, 7, 0], 2, status="deleted")])
        await store.write_user_ads(
            [user_ads("u1", 5, [("g1", [1, 2, 3, 0]), ("g2", [4, 5, 6, 0]), ("gone", [7, 7, 7, 0])])]
        )
        view = await store.user_view("u1", candidates=["c1", "g2", "unknown"])
        assert [a.ad_id for a in view.ads.ads] == ["g1", "g2"] and view.hidden_ads == ["gone"]
        match = {m.ad_id: m for m in view.match}
        assert match["c1"].sid_prefix_similarity == 0.5 and match["c1"].best_match_ad == "g1"
        assert match["g2"].sid_prefix_similarity == 1.0 and match["g2"].generated
        assert match["unknown"].sid_prefix_similarity == 0.0 and match["unknown"].best_match_ad is None
        await store.close()

    asyncio.run(go())


def test_sid_prefix_similarity_counts_the_shared_prefix() -> None:
    assert sid_prefix_similarity([1, 2, 3, 0], [1, 2, 3, 1]) == 0.75
    assert sid_prefix_similarity([1, 2, 3, 0], [2, 2, 3, 0]) == 0.0


def test_writes_retry_with_backoff_while_redis_is_down_and_nothing_is_lost(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    retries: list[str] = []
    try:

        async def go() -> None:
            store = FeatureStore(settings_for(srv), on_retry=lambda what, exc: retries.append(what))
            await store.write_user_ads([user_ads("u1", 1, [("a1", [1])])])
            redis.Redis.from_url(srv.url).shutdown(save=True)  # down, with its data on disk
            # restart from this thread: the runtime ties the server's life to the thread that spawned it
            asyncio.get_running_loop().call_later(2.0, srv.start)
            started = time.monotonic()
            await store.write_user_ads([user_ads(f"u{i}", 2, [("a2", [2])]) for i in range(2, 50)])
            assert time.monotonic() - started >= 1.5
            got = await store.user_ads([f"u{i}" for i in range(1, 50)])
            assert all(v is not None for v in got.values())
            await store.close()

        asyncio.run(go())
    finally:
        srv.stop()
    assert len(retries) >= 2


def test_reader_gives_a_clear_error_when_redis_is_unreachable() -> None:
    store_settings = RedisSettings(url="redis://127.0.0.1:1/0", retry_backoff_s=0.01)

    async def go() -> None:
        store = FeatureStore(store_settings, give_up_after=2)
        with pytest.raises(RedisUnavailable, match=r"redis://127.0.0.1:1/0 unreachable after 3 attempts"):
            await store.user_ads(["u1"])
        await store.close()

    asyncio.run(go())


def test_a_large_mixed_batch_applies_exactly_the_newer_writes(server: RedisServer) -> None:
    async def go() -> None:
        store = FeatureStore(settings_for(server))
        assert await store.write_user_ads([user_ads(f"u{i}", 10, [("a", [1])]) for i in range(600)]) == 600
        mixed = [user_ads(f"u{i}", 10 + (1 if i % 3 == 0 else -1), [("b", [2])]) for i in range(600)]
        assert await store.write_user_ads(mixed) == 200
        got = await store.user_ads([f"u{i}" for i in range(600)])
        assert all(got[f"u{i}"].ads[0].ad_id == ("b" if i % 3 == 0 else "a") for i in range(600))
        await store.close()

    asyncio.run(go())
