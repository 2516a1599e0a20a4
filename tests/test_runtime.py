"""The embedded runtime: real Tansu + redis-server start, answer, and never outlive their owner."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from adgen.cli import app as cli
from adgen.core.config import Settings
from adgen.runtime import EmbeddedRuntime, RedisServer, ServerStartError
from adgen.runtime.processes import pid_alive
from adgen.runtime.tansu_quirks import client_overrides
from adgen.streams.topics import ALL_TOPICS

pytestmark = pytest.mark.integration


def wait_gone(pids: list[int], timeout_s: float = 15) -> list[int]:
    """PIDs still alive (zombies count as gone) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if pid_alive(pid)]
        time.sleep(0.1)
    return alive


def test_runtime_serves_kafka_and_redis_with_every_topic_and_stops_both(tmp_path: Path) -> None:
    runtime = EmbeddedRuntime(Settings(), tmp_path)
    with runtime as settings:
        assert settings.kafka.client_overrides.faust and settings.kafka.session_timeout_ms == 6000
        topics = AdminClient(settings.kafka.confluent_config()).list_topics(timeout=10).topics
        assert {name: len(topics[name].partitions) for name in topics} == {t.name: t.partitions for t in ALL_TOPICS}
        assert redis.Redis.from_url(settings.redis.url).ping()
        assert runtime.timings is not None and runtime.timings.total_s < 10
        pids = [runtime.broker.pid, runtime.redis.pid]
    assert runtime.broker.process is not None and runtime.broker.process.returncode is not None
    assert wait_gone(pids) == []


def test_redis_requirepass_refuses_clients_without_the_password(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", password="s3cret") as server:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url).ping()
        assert redis.Redis.from_url(server.url, password="s3cret").ping()
        assert "s3cret" not in server.url


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match=r"redis-server on port \d+ exited with code 1"):
            RedisServer(tmp_path / "redis", port=port).start()


OWNER_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from adgen.core.config import Settings
    from adgen.runtime import EmbeddedRuntime
    # a shell's background job inherits SIGINT ignored, and Python then keeps it ignored: restore Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runtime = EmbeddedRuntime(Settings(), Path(sys.argv[1]))
    with runtime:
        print(runtime.broker.pid, runtime.redis.pid, flush=True)
        time.sleep(120)
    """
)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_servers_die_with_their_owner_process(tmp_path: Path, how: signal.Signals) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert owner.stdout is not None
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    owner.send_signal(how)
    owner.wait(timeout=60)  # stopping both servers; generous because CI machines may be loaded
    assert wait_gone(pids) == [], f"servers survived {how.name} of their owner"


def test_adgen_up_runs_in_background_is_idempotent_and_down_stops_it(tmp_path: Path) -> None:
    env = {"ADGEN_PATHS__STATE": str(tmp_path / "state")}
    runner = CliRunner()
    up = runner.invoke(cli, ["up"], env=env)
    assert up.exit_code == 0, up.output
    state = json.loads((tmp_path / "state" / "runtime.json").read_text())
    pids = [state["broker"]["pid"], state["redis"]["pid"]]
    try:
        exports = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in up.stdout.splitlines())
        assert json.loads(exports["ADGEN_KAFKA__CLIENT_OVERRIDES"]) == client_overrides().model_dump()
        bootstrap = exports["ADGEN_KAFKA__BOOTSTRAP_SERVERS"]
        assert AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).brokers
        assert redis.Redis.from_url(exports["ADGEN_REDIS__URL"]).ping()
        assert state["timings"]["total_s"] < 10
        assert (tmp_path / "state" / "runtime.env").read_text().splitlines() == up.stdout.splitlines()

        again = runner.invoke(cli, ["up"], env=env)
        assert again.exit_code == 0 and "already running" in again.stderr and again.stdout == up.stdout
    finally:
        down = runner.invoke(cli, ["down"], env=env)
    assert down.exit_code == 0 and "stopped broker" in down.stderr
    assert wait_gone(pids) == []
    assert not (tmp_path / "state" / "runtime.json").exists()


def test_python_m_adgen_commands_runtime_starts_and_stops_without_the_full_cli(tmp_path: Path) -> None:
    env = {**os.environ, "ADGEN_PATHS__STATE": str(tmp_path / "state")}
    command = [sys.executable, "-m", "adgen.commands.runtime"]
    up = subprocess.run([*command, "up"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "ADGEN_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:" in up.stdout
    status = subprocess.run([*command, "status"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(status.stdout)["alive"] == {"broker": True, "redis": True}
    subprocess.run([*command, "down"], env=env, capture_output=True, timeout=60, check=True)
    gone = subprocess.run([*command, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "not running" in gone.stderr
