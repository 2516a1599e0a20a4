"""The RARE query path: validation, the head cache, model misses, new ads, the HTTP view, Redis."""

from __future__ import annotations

import asyncio

import pytest

from adgen.core.catalogue import Item
from adgen.processors.query_retrieval import (
    MAX_QUERY_CHARS,
    QueryError,
    SearchConfig,
    SearchService,
    aiohttp_app,
    validate_query,
)
from adgen.processors.search_store import SearchRedisStore
from adgen.search.ci_data import AD_PROMPT, QUERY_PROMPT, TextPair, ad_prompt_text
from adgen.search.ci_index import CIIndex, CISet
from adgen.search.ci_model import CIModelConfig, train_ci_model

CIS = ["nitrile gloves", "glass beakers", "digital multimeter", "safety goggles", "pipette tips"]
TINY = CIModelConfig(
    vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, format_epochs=40, batch_size=16, lr=1e-2
)


def _item(ad_id: str, ci: str) -> Item:
    return Item(item_id=ad_id, title=f"acme {ci} pro {ad_id}", categories=("Lab", ci))


ITEMS = {f"{ci.split()[1][:4]}{n}": _item(f"{ci.split()[1][:4]}{n}", ci) for ci in CIS for n in range(2)}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    ci_set = CISet(texts=CIS, support=[2] * len(CIS), aliases={t: i for i, t in enumerate(CIS)})
    fmt = [TextPair(prompt=QUERY_PROMPT.format(text=t), response=t, stage="format") for t in CIS]
    fmt += [
        TextPair(prompt=AD_PROMPT.format(text=ad_prompt_text(item)), response=item.categories[1], stage="format")
        for item in ITEMS.values()
    ]
    model, _ = train_ci_model([], fmt, ci_set, tmp_path_factory.mktemp("m"), TINY)
    index = CIIndex(ci_set, version="test")
    for ad_id, item in ITEMS.items():
        index.set_ad(ad_id, {CIS.index(item.categories[1]): 1.0})
    return SearchService(index, model, config=SearchConfig(top_cis=3, beams=5, score_floor=None, top_n=50))


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        ("", 400, "empty"),
        ("  ?!  ", 400, "empty"),
        ("x" * (MAX_QUERY_CHARS + 1), 413, "limit is"),
        (42, 422, "must be text, got int"),
        (None, 422, "must be text"),
        (b"\xff\xfe", 422, "not UTF-8"),
        ("gloves\x00", 422, "non-text"),
    ],
)
def test_bad_queries_get_a_clear_error(raw, status, reason):
    with pytest.raises(QueryError, match=reason) as info:
        validate_query(raw)
    assert info.value.status == status


def test_queries_are_normalised_before_lookup():
    assert validate_query("  Safety   GOGGLES!! ") == "safety goggles"


def test_a_miss_uses_the_model_and_returns_ads_of_the_generated_cis(service):
    result = service.search("Safety Goggles")
    assert result.source == "model"
    assert result.cis[0].text == "safety goggles"
    assert {a.ad_id for a in result.ads[:2]} == {"gogg0", "gogg1"}
    assert all(0 <= c.ci_id < len(CIS) for c in result.cis)


def test_head_cache_answers_without_the_model_and_follows_live_index(service):
    added = service.build_head_cache({"pipette tips": 10, "Pipette Tips!": 5, "rare query": 1}, size=1)
    assert added == 1 and "pipette tips" in service.head_cache
    model_answer = service.search("pipette tips")
    assert model_answer.source == "cache"
    calls = []
    original = service.model.generate
    service.model.generate = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        cached = service.search("PIPETTE tips")
        assert calls == [] and cached.source == "cache"
        service.remove_ad("tips0")
        assert "tips0" not in {a.ad_id for a in service.search("pipette tips").ads}
    finally:
        service.model.generate = original
        service.index.set_ad("tips0", {CIS.index("pipette tips"): 1.0})


def test_new_ads_join_the_existing_ci_set_by_constrained_inference(service):
    new = Item(item_id="new1", title="acme digital multimeter pro new1", categories=("Lab", "digital multimeter"))
    assigned = service.upsert_ads([new])
    assert assigned["new1"] and all(0 <= ci < len(CIS) for ci in assigned["new1"])
    assert max(assigned["new1"], key=assigned["new1"].get) == CIS.index("digital multimeter")
    assert "new1" in service.index.ads_of(CIS.index("digital multimeter"))
    service.index.check_consistency()
    assert service.remove_ad("new1") and "new1" not in service.index.ad_cis


def test_http_view_answers_queries_and_rejects_bad_ones_with_a_reason(service):
    from aiohttp.test_utils import TestClient, TestServer

    async def run():
        async with TestClient(TestServer(aiohttp_app(service))) as client:
            ok = await client.get("/search", params={"q": "glass beakers", "n": "3"})
            body = await ok.json()
            assert ok.status == 200 and len(body["ads"]) <= 3 and body["cis"][0]["text"] == "glass beakers"
            missing = await client.get("/search")
            assert missing.status == 400 and "missing query parameter" in (await missing.json())["error"]
            empty = await client.get("/search", params={"q": "   "})
            assert empty.status == 400 and "empty" in (await empty.json())["error"]
            long = await client.get("/search", params={"q": "a" * (MAX_QUERY_CHARS + 5)})
            assert long.status == 413
            twice = await client.get("/search?q=a&q=b")
            assert twice.status == 422
            control = await client.get("/search", params={"q": "bad\x07bell"})
            assert control.status == 422 and "non-text" in (await control.json())["error"]
            bad_n = await client.get("/search", params={"q": "gloves", "n": "lots"})
            assert bad_n.status == 400

    asyncio.run(run())


@pytest.mark.integration
def test_redis_store_mirrors_the_index_and_guards_results_by_event_time(service, runtime_settings, redis_client):
    async def run():
        store = SearchRedisStore(runtime_settings.redis)
        try:
            written = await store.publish_index(service.index)
            assert written == 1 + len(service.index.ci_ads) + len(service.index.ad_cis)
            gloves = CIS.index("nitrile gloves")
            assert await store.read_ads_of_ci(gloves) == service.index.ads_of(gloves)
            old = service.index.ad_cis["glov0"].copy()
            service.index.set_ad("glov0", {CIS.index("glass beakers"): 0.5})
            await store.write_ads(service.index, {"glov0": old})
            assert await store.read_cis_of_ad("glov0") == {CIS.index("glass beakers"): 0.5}
            assert "glov0" not in await store.read_ads_of_ci(gloves)
            assert (await store.read_ads_of_ci(CIS.index("glass beakers")))["glov0"] == 0.5
            service.index.set_ad("glov0", old)
            await store.write_ads(service.index, {"glov0": [CIS.index("glass beakers")]})

            newer = service.search("nitrile gloves")
            older = service.search("Nitrile Gloves!")  # same normalised query, older event
            assert await store.write_results([("q1", 2000.0, newer)]) == 2
            assert await store.write_results([("q1", 1000.0, older)]) == 0  # late replay loses on both keys
            stored = await store.read_result("q1")
            assert stored is not None and stored.query == "nitrile gloves"
        finally:
            await store.close()

    asyncio.run(run())
