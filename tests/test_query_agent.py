"""The search-queries agent in a real Faust worker on the embedded broker: answers land in redis-server,
queries that cannot be searched land in the dead-letter topic with the reason.

Run as a script, this file *is* the worker (env: ADGEN_* plus ADGEN_TEST_CI_DIR).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer

from adgen.core.config import Settings
from adgen.processors.query_retrieval import SearchResult
from adgen.processors.redis_keys import RedisKeys
from adgen.runtime.processes import free_port, stop_pid
from adgen.runtime.tansu_quirks import kafka_env
from adgen.search.ci_data import QUERY_PROMPT, TextPair
from adgen.search.ci_index import CIIndex, CISet, save_snapshot
from adgen.search.ci_model import CIModelConfig, train_ci_model
from adgen.streams.dlq import DeadLetter, dead_letter_topic
from adgen.streams.events import SearchQuery
from adgen.streams.producer import EventProducer
from adgen.streams.topics import SEARCH_QUERIES, topic_name

CIS = ["nitrile gloves", "glass beakers", "digital multimeter"]
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def build_worker(settings: Settings, ci_dir: Path):  # type: ignore[no-untyped-def]
    """The worker's search component alone, wired as processors/worker_app.py wires it."""
    from adgen.processors.metrics import WorkerMetrics
    from adgen.processors.query_retrieval import QueryRetrieval, SearchConfig, SearchService
    from adgen.processors.search_store import SearchRedisStore
    from adgen.processors.worker_app import start_with_app
    from adgen.processors.worker_parts import DeadLetters
    from adgen.streams.app import create_app, declare_topics

    service = SearchService.from_snapshot(ci_dir / "snapshots", ci_dir / "model", SearchConfig(beams=3, top_cis=2))
    app = create_app(settings)
    topics = declare_topics(app, settings)
    metrics = WorkerMetrics()
    retrieval = QueryRetrieval(
        app,
        topics.search_queries,
        settings,
        service,
        SearchRedisStore(settings.redis),
        DeadLetters(topics.dead_letter, metrics),
        metrics,
        ci_dir / "snapshots",
    )
    start_with_app(app, [retrieval])
    metrics.serve(settings.worker.web_host, settings.worker.metrics_port)
    return app


@pytest.fixture(scope="module")
def ci_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ci")
    ci_set = CISet(texts=CIS, support=[1] * 3, aliases={t: i for i, t in enumerate(CIS)})
    fmt = [TextPair(prompt=QUERY_PROMPT.format(text=t), response=t, stage="format") for t in CIS]
    config = CIModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, format_epochs=20, batch_size=8)
    model, _ = train_ci_model([], fmt, ci_set, out / "train", config)
    model.save(out / "model")
    index = CIIndex(ci_set, version="agent-test")
    for i in range(3):
        index.set_ad(f"ad{i}", {i: 1.0})
    save_snapshot(out / "snapshots", index, model.ci_sequences(ci_set), {}, model.fingerprint())
    return out


def _env(settings: Settings, ci_dir: Path, state: Path) -> dict[str, str]:
    env = {
        **os.environ,
        **kafka_env(settings.kafka),
        "ADGEN_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "ADGEN_WORKER__APP_ID": settings.worker.app_id,
        "ADGEN_PATHS__STATE": str(state),
        "ADGEN_REDIS__URL": settings.redis.url,
        "ADGEN_REDIS__NAMESPACE": settings.redis.namespace,
        "ADGEN_REDIS__ENV": settings.redis.env,
        "ADGEN_TEST_CI_DIR": str(ci_dir),
    }
    if settings.redis.password is not None:
        env["ADGEN_REDIS__PASSWORD"] = settings.redis.password.get_secret_value()
    return env


def _dead_letters(settings: Settings, expected: int, timeout_s: float) -> list[DeadLetter]:
    consumer = Consumer(
        {
            **settings.kafka.confluent_config(),
            "group.id": f"check-dlq-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([dead_letter_topic(settings)])
    got: list[DeadLetter] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None, message.error()
                got.append(DeadLetter.model_validate_json(message.value()))
    finally:
        consumer.close()
    return got


@pytest.mark.integration
def test_agent_answers_queries_into_redis_and_dead_letters_unsearchable_ones(
    stream_settings: Settings, ci_dir: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = stream_settings
    queries = [
        SearchQuery(event_id=f"e{i}", event_time=T0, query_id=f"q{i}", text=text)
        for i, text in enumerate(["Nitrile Gloves", "glass beakers", "digital multimeter!"])
    ]
    bad = SearchQuery(event_id="e-bad", event_time=T0, query_id="q-bad", text="?!?")
    with EventProducer(settings) as producer:
        producer.send(queries[0])
        producer.send(bad)
        producer.send_raw(topic_name(SEARCH_QUERIES, settings.kafka.topic_prefix), b"qx", b"{not json")
        for q in queries[1:]:
            producer.send(q)

    keys = RedisKeys.of(settings.redis)
    log_path = tmp_path / "worker.log"
    metrics_port = free_port()
    env = {**_env(settings, ci_dir, tmp_path / "state"), "ADGEN_WORKER__METRICS_PORT": str(metrics_port)}
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, __file__], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        results: dict[str, SearchResult] = {}
        while len(results) < len(queries) and time.monotonic() < deadline and worker.poll() is None:
            for q in queries:
                raw = redis_client.hget(keys.search_result(q.query_id), "data")
                if raw:
                    results[q.query_id] = SearchResult.model_validate_json(raw)
            time.sleep(0.5)
        letters = _dead_letters(settings, expected=2, timeout_s=30)
        assert worker.poll() is None, "worker died:\n" + log_path.read_text()[-3000:]
        try:
            counted = _metric(metrics_port, 'adgen_dead_letters_total{topic="search-queries"}')
            answered = _metric(metrics_port, 'adgen_events_total{topic="search-queries"}')
        except OSError as exc:
            raise AssertionError(f"no metrics on :{metrics_port} ({exc}):\n" + log_path.read_text()[-3000:]) from exc
    finally:
        stop_pid(worker.pid, process=worker, grace_s=30)

    assert set(results) == {q.query_id for q in queries}, log_path.read_text()[-3000:]
    for q in queries:
        result = results[q.query_id]
        assert result.source == "model" and result.index_version == "agent-test"
        assert all(0 <= c.ci_id < len(CIS) for c in result.cis)
        assert {a.ad_id for a in result.ads} <= {"ad0", "ad1", "ad2"} and result.ads
    by_query = redis_client.hget(keys.search_by_query("nitrile gloves"), "data")
    assert by_query and json.loads(by_query)["normalised"] == "nitrile gloves"

    kinds = sorted(letter.error_kind for letter in letters)
    assert kinds == ["malformed_json", "schema_violation"]
    unsearchable = next(letter for letter in letters if letter.error_kind == "schema_violation")
    assert "empty after normalisation" in unsearchable.error
    assert json.loads(unsearchable.original())["query_id"] == "q-bad"
    assert redis_client.hget(keys.search_result("q-bad"), "data") is None
    # the search path's dead letters are counted like every other input's (adgen monitor reads this)
    assert counted == 2 and answered == 4
    # the worker published the documented ci:* keys of its CI index version on start
    assert redis_client.get(keys.ci_current()) == b"agent-test"
    assert redis_client.hgetall(keys.ad_cis("agent-test", "ad1")) == {b"1": b"1.0"}
    assert redis_client.hget(keys.ci_texts("agent-test"), "2") == b"digital multimeter"


def _metric(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(sample + " "))


if __name__ == "__main__":
    worker_settings = Settings()
    faust_app = build_worker(worker_settings, Path(os.environ["ADGEN_TEST_CI_DIR"]))
    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", "warn"]
    faust_app.main()
