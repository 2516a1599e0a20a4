"""A local Redis Cluster of the bundled redis-server: N masters on loopback ports, slots split evenly.

For tests and benchmarks of the cluster mode (no replicas: failover is Redis's business, slot routing and
cross-slot rules are ours). Each node is a `redis-server --cluster-enabled yes` child process; the cluster
is formed the way `redis-cli --cluster create` does it, from Python: distinct config epochs, each node
adds its slot range, the first node meets the others, then we wait until every node reports
`cluster_state:ok` and knows all the others.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from adgen.runtime.processes import ServerStartError, free_port
from adgen.runtime.redis_server import RedisServer

SLOTS = 16384
BUS_PORT_OFFSET = 10000  # redis-server 6.2 puts the cluster bus on port + 10000 (no --cluster-port before 7.0)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + BUS_PORT_OFFSET < 65536 and _port_free(port + BUS_PORT_OFFSET):
            return port
    raise ServerStartError("no free port pair (port, port + 10000) for a cluster node")


class ClusterNodeServer(RedisServer):
    """One redis-server in cluster mode (its node table in `nodes.conf` under its data dir)."""

    def __init__(self, data_dir: Path, *, port: int, password: str | None = None) -> None:
        super().__init__(data_dir, port=port, password=password)

    def describe(self) -> str:
        return f"redis-server cluster node on port {self.port}"

    def argv(self) -> list[str]:
        argv = [
            *super().argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.data_dir / "nodes.conf"),
            "--cluster-node-timeout",
            "5000",
        ]
        if self.password:
            argv += ["--masterauth", self.password]
        return argv


class LocalRedisCluster:
    """`masters` cluster nodes on 127.0.0.1; `start()` returns once the cluster serves every slot."""

    def __init__(self, data_dir: Path, masters: int = 3, password: str | None = None, timeout_s: float = 60.0) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters}")
        self.data_dir = Path(data_dir)
        self.password = password
        self.timeout_s = timeout_s
        self.nodes = [
            ClusterNodeServer(self.data_dir / f"node{i}", port=cluster_port(), password=password)
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """The settings URL (`redis.url`): every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5)

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        per = SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            first, last = i * per, SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * per - 1
            with self.client(node.port) as c:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        with self.client(self.nodes[0].port) as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if all(self._node_ok(node.port) for node in self.nodes):
                return
            time.sleep(0.1)
        raise ServerStartError(
            f"the {len(self.nodes)}-node cluster did not reach cluster_state:ok in {self.timeout_s}s"
        )

    def _node_ok(self, port: int) -> bool:
        with self.client(port) as c:
            info = c.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return fields.get("cluster_state") == "ok" and int(fields.get("cluster_known_nodes", 0)) == len(self.nodes)

    def keys_per_node(self) -> dict[int, int]:
        """Keys each master holds (DBSIZE): shows whether data really spread over the whole cluster."""
        out = {}
        for node in self.nodes:
            with self.client(node.port) as c:
                out[node.port] = int(c.dbsize())
        return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
