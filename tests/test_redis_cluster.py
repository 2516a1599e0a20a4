"""The feature store, the search store and the shared budget on a real 3-master Redis Cluster.

The cluster is three `redis-server --cluster-enabled yes` processes of the bundled binary on loopback ports
(adgen/runtime/redis_cluster.py), started and stopped by the fixture. Every test checks that its keys
really spread over all three masters, so none of them could pass against one node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from feature_store_docs import AD, python_snippet, write_user_list
from redis.cluster import RedisCluster

from adgen.core.config import BudgetSettings, RedisSettings
from adgen.processors.feature_store import AdRecord, FeatureStore, GeneratedAd, UserAds, UserWindowFeatures
from adgen.processors.redis_client import GUARDED_SET_MANY_LUA, RedisClient, cluster_nodes, connect
from adgen.processors.redis_keys import RedisKeys
from adgen.processors.search_store import SearchRedisStore
from adgen.processors.shared_budget import SharedBudget
from adgen.runtime.redis_cluster import LocalRedisCluster
from adgen.search.ci_index import CIIndex, CISet

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def settings(cluster: LocalRedisCluster) -> Iterator[RedisSettings]:
    for node in cluster.nodes:
        with cluster.client(node.port) as c:
            c.flushall()
    yield RedisSettings(url=cluster.url, env="test")


def sync_client(cluster: LocalRedisCluster) -> RedisCluster:
    host, port = cluster_nodes(cluster.url)[0]
    return RedisCluster(host=host, port=port)


def window(user: str, minute: int) -> UserWindowFeatures:
    return UserWindowFeatures(
        user_id=user,
        interest_summary={"Sports": minute},
        window_events=minute,
        arpu=1.0,
        newest_event_time=T0 + timedelta(minutes=minute),
    )


def test_the_url_chooses_the_client_and_bad_cluster_urls_say_why() -> None:
    assert type(connect(RedisSettings(url="redis://127.0.0.1:6379/0"))).__name__ == "Redis"
    assert type(connect(RedisSettings(url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001"))).__name__ == "RedisCluster"
    assert cluster_nodes("rediss+cluster://a:1,b:2/0") == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError, match="only database 0"):
        cluster_nodes("redis+cluster://a:1/3")
    with pytest.raises(ValueError, match="not host:port"):
        cluster_nodes("redis+cluster://a")
    with pytest.raises(ValueError, match="ADGEN_REDIS__PASSWORD"):
        cluster_nodes("redis+cluster://user:secret@a:1")


def test_a_guarded_batch_over_many_users_lands_on_every_master_and_keeps_its_guard(
    cluster: LocalRedisCluster, settings: RedisSettings
) -> None:
    users = [f"u{i:04d}" for i in range(300)]

    async def go() -> tuple[int, int, int]:
        store = FeatureStore(settings)
        try:
            written = await store.write_user_windows([window(u, 10) for u in users])
            older = await store.write_user_windows([window(u, 5) for u in users[:50]])  # late events: refused
            newer = await store.write_user_windows([window(u, 20) for u in users[:50]])
            return written, older, newer
        finally:
            await store.close()

    assert asyncio.run(go()) == (300, 0, 50)
    per_node = cluster.keys_per_node()
    assert len(per_node) == 3 and all(n > 50 for n in per_node.values()), per_node  # a real spread, not one node
    r = sync_client(cluster)
    schema = RedisKeys.of(settings)
    assert UserWindowFeatures.model_validate_json(r.hget(schema.user_window("u0007"), "data")).window_events == 20
    assert UserWindowFeatures.model_validate_json(r.hget(schema.user_window("u0299"), "data")).window_events == 10
    r.close()


def test_the_same_batch_as_one_script_call_is_refused_by_the_cluster(cluster: LocalRedisCluster) -> None:
    """Why the client groups keys by slot: the unmodified many-key call spans slots, and a cluster says no."""
    r = sync_client(cluster)
    keys = [f"adgen:test:user:{{u{i}}}:window" for i in range(20)]
    args = [x for _ in keys for x in (1, "{}", 0, 0)]
    with pytest.raises(redis.exceptions.RedisClusterException, match=r"same key slot|CROSSSLOT"):
        r.eval(GUARDED_SET_MANY_LUA, len(keys), *keys, *args)
    r.close()


def test_user_lists_ads_and_the_reader_view_work_across_slots(settings: RedisSettings) -> None:
    now = T0
    lists = [
        UserAds(
            user_id=f"u{i}",
            ads=[GeneratedAd(ad_id=f"ad{i}", sid=[1, 2, i % 4], score=-1.0)],
            model_version="v0001-x",
            index_version="i",
            request_time=now,
            window_fingerprint="f",
            generated_at=now,
        )
        for i in range(40)
    ]
    ads = [AdRecord(ad_id=f"ad{i}", status="active", sid=[1, 2, i % 4], event_time=now) for i in range(40)]

    async def go() -> None:
        store = FeatureStore(settings)
        try:
            assert await store.write_user_ads(lists) == 40
            assert await store.write_user_ads(lists) == 0  # a replay is a no-op
            assert await store.write_ads(ads) == 40
            view = await store.user_view("u3", ["ad3", "ad4"])  # S-IDs [1, 2, 3] (its own) and [1, 2, 0]
            assert view.ads is not None and view.ads.model_version == "v0001-x"
            assert [m.sid_prefix_similarity for m in view.match] == [1.0, pytest.approx(2 / 3)]
        finally:
            await store.close()

    asyncio.run(go())


def test_the_search_store_publishes_a_ci_version_and_updates_it_in_one_transaction(
    cluster: LocalRedisCluster, settings: RedisSettings
) -> None:
    index = CIIndex(CISet(texts=["lab gloves", "pipette tips", "glass beakers"], support=[1, 1, 1]), version="c1")
    index.set_ad("ad1", {0: 1.0})
    index.set_ad("ad2", {1: 0.5, 2: 0.5})

    async def go() -> tuple[dict[int, float], dict[str, float]]:
        store = SearchRedisStore(settings)
        try:
            await store.publish_index(index)
            before = {ad: dict(index.view.ad_cis.get(ad, {})) for ad in ("ad1",)}
            index.set_ad("ad1", {2: 1.0})
            await store.write_ads(index, before)  # MULTI over the version's keys: one slot by its hash tag
            return await store.read_cis_of_ad("ad1"), await store.read_ads_of_ci(2)
        finally:
            await store.close()

    cis, ads = asyncio.run(go())
    assert cis == {2: 1.0} and set(ads) == {"ad1", "ad2"}


def test_the_shared_budget_script_runs_on_the_cluster(settings: RedisSettings) -> None:
    budget = BudgetSettings(shared=True, generations_per_second=1.0, burst=3)

    async def go() -> tuple[int, int]:
        redis_client = RedisClient(settings)
        try:
            shared = SharedBudget(budget, redis_client, name="w1")
            first = await shared.acquire([5, 5, 5, 5], 0.0)
            await shared.settle(first, [5, 5], 0.0)
            return first.granted, (await shared.served_by_group())[5]
        finally:
            await redis_client.close()

    assert asyncio.run(go()) == (3, 2)


def test_docs_cluster_reader_snippet_reads_what_the_worker_wrote(
    cluster: LocalRedisCluster, settings: RedisSettings
) -> None:
    snippet = python_snippet("### Reading from a Redis Cluster")
    write_user_list(settings.model_copy(update={"env": "dev"}), T0)
    host, port = cluster_nodes(cluster.url)[0]
    code = snippet.replace('host="10.0.0.5", port=7000', f'host="{host}", port={port}')
    scope: dict = {}
    exec(compile(code, "feature-store.md", "exec"), scope)
    assert [g["ad_id"] for g in scope["generated"]] == [AD]
    assert scope["live"][AD]["status"] == "active"
