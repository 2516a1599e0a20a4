"""The HTTP search view runs the search off the event loop (regression: on the loop, each model-path
query stalled the whole worker: behaviour windows, generation and the other requests; found by
bench/soak.py, whose search probes then timed out)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from adgen.processors.query_retrieval import aiohttp_app


class RecordingService:
    """Just what `handle_search_params` uses: `search()` and `config.top_n`; it notes the calling thread."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(top_n=20)
        self.threads: list[int] = []

    def search(self, raw: object, top_n: int | None = None) -> Any:
        self.threads.append(threading.get_ident())
        return SimpleNamespace(model_dump_json=lambda: '{"query": "q", "cis": [], "ads": []}')


def test_the_aiohttp_search_view_searches_in_a_worker_thread_not_on_the_loop() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    service = RecordingService()

    async def run() -> tuple[int, int]:
        client = TestClient(TestServer(aiohttp_app(service)))
        await client.start_server()
        try:
            resp = await client.get("/search", params={"q": "lab gloves"})
            return resp.status, threading.get_ident()
        finally:
            await client.close()

    status, loop_thread = asyncio.run(run())
    assert status == 200
    assert service.threads and all(t != loop_thread for t in service.threads)
