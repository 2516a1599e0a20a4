"""Property-based fuzzing of the search HTTP view `GET /search?q=&n=`.

Whatever the query string, the answer is a 200 whose ads and CIs all come from the index, or a 4xx whose
JSON body names the problem; never a 5xx, never an exception. Checked twice: on `handle_search_params`
(many cases, no sockets) and through a real aiohttp server with raw, percent-encoded query strings.
Cases: `ADGEN_FUZZ_EXAMPLES` (default 200; a quarter of that over HTTP); the count is printed at the end (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import os
import typing
import urllib.parse
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adgen.core.catalogue import Item
from adgen.processors.query_retrieval import SearchConfig, SearchService, aiohttp_app, handle_search_params
from adgen.search.ci_data import AD_PROMPT, QUERY_PROMPT, TextPair, ad_prompt_text
from adgen.search.ci_index import CIIndex, CISet
from adgen.search.ci_model import CIModelConfig, train_ci_model

EXAMPLES = int(os.environ.get("ADGEN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
CIS = ["nitrile gloves", "glass beakers", "digital multimeter", "safety goggles", "pipette tips"]
TINY = CIModelConfig(vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, format_epochs=2, batch_size=16)
TRIED: Counter[str] = Counter()

UNICODE_EDGES = [
    "\ufeff",
    "\u202e",
    "\u200b",
    "e\u0301",
    "\U0001f600",
    "\x00",
    "\x07",
    "ſ",
    "İ",
    "\ue000",
    "\U000e0001",
]
query_text = st.one_of(
    st.text(max_size=64),
    st.sampled_from(CIS),
    st.lists(st.sampled_from(UNICODE_EDGES + CIS + [" ", "!"]), max_size=12).map("".join),
    st.integers(min_value=400, max_value=100_000).map(lambda n: "a" * n),  # over the limit and far over it
)
n_values = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str), st.text(max_size=8), st.sampled_from(["", "1e3", "5"])
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> SearchService:
    ci_set = CISet(texts=CIS, support=[2] * len(CIS), aliases={t: i for i, t in enumerate(CIS)})
    items = [Item(item_id=f"ad{i}", title=f"acme {ci}", categories=("Lab", ci)) for i, ci in enumerate(CIS)]
    fmt = [TextPair(prompt=QUERY_PROMPT.format(text=t), response=t, stage="format") for t in CIS]
    fmt += [
        TextPair(prompt=AD_PROMPT.format(text=ad_prompt_text(it)), response=it.categories[1], stage="format")
        for it in items
    ]
    model, _ = train_ci_model([], fmt, ci_set, tmp_path_factory.mktemp("ci-model"), TINY)
    index = CIIndex(ci_set, version="fuzz")
    for i, item in enumerate(items):
        index.set_ad(item.item_id, {i: 1.0})
    return SearchService(index, model, config=SearchConfig(top_cis=2, beams=3, score_floor=None, top_n=20))


def _check(service: SearchService, status: int, body: dict[str, typing.Any], test: str) -> None:
    known_ads = set(service.index.ad_cis)
    if status == 200:
        assert {a["ad_id"] for a in body["ads"]} <= known_ads
        assert all(0 <= c["ci_id"] < len(CIS) and c["text"] in CIS for c in body["cis"])
    else:
        assert 400 <= status < 500, (status, body)
        assert isinstance(body.get("error"), str) and body["error"].strip()
    TRIED[f"{test}:{status}"] += 1


@FUZZ
@given(
    qs=st.lists(st.one_of(query_text, st.binary(max_size=32), st.integers(), st.none()), max_size=3),
    ns=st.lists(n_values, max_size=2),
    extra=st.dictionaries(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=2), max_size=2),
)
def test_search_params_answer_with_catalogue_ads_or_a_4xx_reason(
    service: SearchService, qs: list[object], ns: list[str], extra: dict[str, list[str]]
) -> None:
    params: dict[str, list[object]] = {**extra, "q": qs, "n": list(ns)}
    status, body = handle_search_params(service, params)
    _check(service, status, body, "params")


@pytest.fixture(scope="module")
def http(service: SearchService) -> typing.Iterator[typing.Callable[[str], tuple[int, dict[str, typing.Any]]]]:
    """A live aiohttp server on 127.0.0.1 and a function `GET <raw path>` -> (status, json)."""
    from aiohttp.test_utils import TestClient, TestServer

    async def start() -> TestClient:
        client = TestClient(TestServer(aiohttp_app(service), host="127.0.0.1"))
        await client.start_server()
        return client

    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(start())

    async def get(path: str) -> tuple[int, dict[str, typing.Any]]:
        resp = await client.get(path)
        return resp.status, await resp.json()

    yield lambda path: loop.run_until_complete(get(path))
    loop.run_until_complete(client.close())
    loop.close()


@settings(FUZZ, max_examples=max(10, EXAMPLES // 4))  # each case is a real HTTP round trip
@given(query=st.binary(max_size=300), n=st.one_of(st.none(), st.binary(max_size=6)))
def test_http_view_answers_raw_percent_encoded_bytes_with_200_or_a_4xx_reason(
    service: SearchService, http: typing.Callable[[str], tuple[int, dict[str, typing.Any]]], query: bytes, n: bytes
) -> None:
    path = "/search?q=" + urllib.parse.quote_from_bytes(query)
    if n is not None:
        path += "&n=" + urllib.parse.quote_from_bytes(n)
    status, body = http(path)
    _check(service, status, body, "http")


def test_http_view_refuses_a_huge_query_string_with_a_4xx(http: typing.Callable[..., typing.Any]) -> None:
    status, body = http("/search?q=" + "a" * 6000)
    assert status == 413 and "limit" in body["error"]
    TRIED["http_huge:413"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_case_count() -> typing.Iterator[None]:
    yield
    print(f"\n[fuzz] search view cases tried: {sum(TRIED.values())} {dict(sorted(TRIED.items()))}")
