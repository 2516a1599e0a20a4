"""The demo's search summary: it shows the build's held-out test queries (never trained or tuned on), each
with its CIs and the graded relevance of every served ad from the labels."""

from __future__ import annotations

import io
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

import adgen.commands.demo as demo

LABELS = [
    {"query_id": "q-train", "text": "cheap dome tent", "relevance": {"tent-1": 2}},
    {"query_id": "q-test", "text": "best sola trail shoes", "relevance": {"shoe-1": 2, "shoe-2": 1}},
]


ASKED: list[str] = []


class _Search(BaseHTTPRequestHandler):
    """GET /search as the worker answers it (a fixed body: what is tested is how the demo prints it)."""

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        ASKED.append(query["q"][0])
        body = {
            "source": "model",
            "latency_ms": 4.2,
            "cis": [{"text": "trail shoes", "prob": 0.9}],
            "ads": [{"ad_id": a, "score": 1.0} for a in ("shoe-1", "shoe-2", "tent-1")],
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Search)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_summary_shows_test_split_queries_with_the_served_ads_grades(tmp_path: Path, server: int, monkeypatch):
    world, ci_dir = tmp_path / "world", tmp_path / "ci"
    (world / "queries").mkdir(parents=True)
    (world / "queries" / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LABELS))
    ci_dir.mkdir()
    (ci_dir / "split.json").write_text(json.dumps({"train": ["q-train"], "valid": [], "test": ["q-test"]}))
    out = io.StringIO()
    monkeypatch.setattr(demo, "console", Console(file=out, width=200))
    ASKED.clear()

    demo._search_examples(ci_dir, world, server, {"shoe-1": "Sola trail shoes pro"})

    text = out.getvalue()
    assert ASKED == ["best sola trail shoes"]  # the test query only: the training one is never shown
    assert "held-out" in text and "trail shoes (0.90)" in text
    assert "shoe-1     2 exact" in text and "Sola trail shoes pro" in text
    assert "shoe-2     1 related" in text and "tent-1     0 not relevant" in text
    assert "exact 1/3, related 1/3" in text
