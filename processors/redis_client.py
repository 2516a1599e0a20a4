"""The one Redis client of adgen: connection (TLS, password, single node or cluster), retry with backoff,
pipelined guarded writes.

Every store (the feature store's user/ad keys, the search path's `ci:*` and `search:*` keys, the shared
generation budget) goes through it, so TLS (`rediss://` + `redis.ssl_ca_certs`), the password, the retry
policy and the choice between one node and a Redis Cluster are set in one place. The URL decides the
client: `redis://` / `rediss://` is one node; `redis+cluster://h1:p1,h2:p2` (or `rediss+cluster://`) is a
cluster reached through any of the listed nodes (redis-py's RedisCluster follows MOVED/ASK and slot maps).

Values written with a guard are hashes `{v: <version>, data: <JSON>}`: a small Lua script writes `data`
only if the new version (event time in ms) is newer, so a late or replayed write never overwrites a newer
one and replaying a topic from any offset converges. One script call handles many keys; on a cluster the
keys are grouped by hash slot first (keys are hash-tagged per user / per ad, processors/redis_keys.py), so
every call stays within one slot, and the pipeline sends each node its calls in one round trip.
The worker retries without limit while Redis is unreachable (it stalls rather than losing a write; retrying
a half-applied guarded pipeline is harmless); readers give up after `redis.max_retries` attempts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    TimeoutError,
    TryAgainError,
)

from adgen.core.config import RedisSettings
from adgen.processors.redis_keys import RedisKeys

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 5.0

# For each KEYS[i], ARGV[4i-3..4i] = version, JSON payload, ttl seconds (0 = keep), strict (1: an equal version is
# not newer).
# Returns how many keys were newer and written. (One call per chunk of keys keeps a window batch to a few
# round trips; on a cluster one call per chunk of keys that share a hash slot.)
GUARDED_SET_MANY_LUA = """
local applied = 0
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local n = tonumber(ARGV[base + 1])
  local cur = redis.call('HGET', key, 'v')
  local newer = true
  if cur then
    local c = tonumber(cur)
    if c > n or (ARGV[base + 4] == '1' and c == n) then newer = false end
  end
  if newer then
    redis.call('HSET', key, 'v', ARGV[base + 1], 'data', ARGV[base + 2])
    local ttl = tonumber(ARGV[base + 3])
    if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
    applied = applied + 1
  end
end
return applied
"""
KEYS_PER_CALL = 256
GUARDED_SET_MANY_SHA = hashlib.sha1(GUARDED_SET_MANY_LUA.encode()).hexdigest()
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
RETRYABLE = (ConnectionError, TimeoutError, BusyLoadingError, ClusterDownError, TryAgainError, OSError)


def version_ms(moment: datetime | float) -> int:
    """Event time as integer milliseconds: the version every guarded write compares."""
    seconds = moment.timestamp() if isinstance(moment, datetime) else moment
    return round(seconds * 1000)


class RedisUnavailable(RuntimeError):
    """Redis refused us (authentication, TLS certificate) or stayed unreachable through every retry."""


GuardedWrite = tuple[str, int, str, int, bool]  # (key, version, JSON payload, ttl s (0 = keep), strict)
WriteObserver = Callable[[str, float, int], None]  # (kind, seconds, keys written)


def _certificate_rejected(exc: BaseException) -> bool:
    """True if the error (or what it wraps; redis-py chains it as context) is a failed TLS certificate check."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RedisClient:
    """redis.asyncio client from RedisSettings plus the retry policy; `close()` when done.

    `give_up_after`: None retries until Redis answers (the worker); an int bounds the attempts (readers;
    `RedisClient.reader(settings)` uses `redis.max_retries`).
    """

    def __init__(
        self,
        settings: RedisSettings,
        *,
        give_up_after: int | None = None,
        on_write: WriteObserver | None = None,
        on_retry: Callable[[str, Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = RedisKeys.of(settings)
        self.give_up_after = give_up_after
        self.on_write = on_write
        self.on_retry = on_retry
        self.client: aioredis.Redis | RedisCluster = connect(settings)
        self.cluster = isinstance(self.client, RedisCluster)

    @classmethod
    def reader(cls, settings: RedisSettings) -> RedisClient:
        """A client that gives up after `settings.max_retries` attempts (CLI, ranking-service readers)."""
        return cls(settings, give_up_after=settings.max_retries)

    async def close(self) -> None:
        await self.client.aclose()

    async def retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run `op` until it succeeds, backing off exponentially; errors retrying cannot fix are raised at once."""
        attempt = 0
        while True:
            try:
                return await op()
            except AuthenticationError as exc:  # a ConnectionError subclass, but retrying cannot fix it
                raise RedisUnavailable(
                    f"Redis at {self.settings.url} refused authentication ({what}): {exc}. Check ADGEN_REDIS__PASSWORD."
                ) from exc
            except RETRYABLE as exc:
                if _certificate_rejected(exc):  # a wrong CA or host name: retrying cannot fix it either
                    raise RedisUnavailable(
                        f"Redis at {self.settings.url}: TLS certificate not trusted ({what}): {exc}. "
                        "Check ADGEN_REDIS__SSL_CA_CERTS and the host name in ADGEN_REDIS__URL."
                    ) from exc
                attempt += 1
                if self.give_up_after is not None and attempt > self.give_up_after:
                    raise RedisUnavailable(
                        f"Redis at {self.settings.url} unreachable after {attempt} attempts ({what}): {exc}. "
                        "Is redis-server running (adgen up) and ADGEN_REDIS__URL right?"
                    ) from exc
                delay = min(MAX_BACKOFF_S, self.settings.retry_backoff_s * 2 ** min(attempt - 1, 16))
                if self.on_retry is not None:
                    self.on_retry(what, exc)
                log.warning("redis %s failed (attempt %d): %s; retrying in %.2fs", what, attempt, exc, delay)
                await asyncio.sleep(delay)

    async def guarded_writes(self, kind: str, items: Sequence[GuardedWrite]) -> int:
        """Pipelined guarded writes (up to KEYS_PER_CALL keys of one hash slot per script call on a cluster,
        of any slots on one node); returns how many were newer."""
        if not items:
            return 0
        chunks = list(self._script_chunks(items))

        async def run() -> int:
            try:
                return await self._run_guarded(chunks)
            except NoScriptError:  # first use, or a node restarted / failed over: load it and run again
                await self.client.script_load(GUARDED_SET_MANY_LUA)
                return await self._run_guarded(chunks)

        started = time.perf_counter()
        applied = await self.retrying(f"write {kind}", run)  # a replayed chunk is a no-op: the guard holds
        if self.on_write is not None:
            self.on_write(kind, time.perf_counter() - started, len(items))
        return applied

    def _script_chunks(self, items: Sequence[GuardedWrite]) -> list[Sequence[GuardedWrite]]:
        if not self.cluster:
            return [items[i : i + KEYS_PER_CALL] for i in range(0, len(items), KEYS_PER_CALL)]
        by_slot: dict[int, list[GuardedWrite]] = {}
        for item in items:
            by_slot.setdefault(key_slot(item[0].encode()), []).append(item)
        return [group[i : i + KEYS_PER_CALL] for group in by_slot.values() for i in range(0, len(group), KEYS_PER_CALL)]

    async def _run_guarded(self, chunks: Sequence[Sequence[GuardedWrite]]) -> int:
        async with self.client.pipeline(transaction=False) as pipe:  # reset even when execute fails
            for chunk in chunks:
                args: list[object] = []
                for _, version, payload, ttl, strict in chunk:
                    args += [version, payload, ttl, 1 if strict else 0]
                # execute_command: redis-py's cluster pipeline blocks its `evalsha` helper, not the command
                pipe.execute_command("EVALSHA", GUARDED_SET_MANY_SHA, len(chunk), *[c[0] for c in chunk], *args)
            return sum(int(r) for r in await pipe.execute())

    async def pipelined(self, what: str, build: Callable[[Any], None], transaction: bool = False) -> list[Any]:
        """Run the commands `build(pipe)` queues as one pipeline (retried as a whole)."""

        async def run() -> list[Any]:
            async with self.client.pipeline(transaction=transaction) as pipe:
                build(pipe)
                return list(await pipe.execute())

        return await self.retrying(what, run)

    async def hget_many(self, keys: Sequence[str], field: str = "data") -> list[bytes | None]:
        if not keys:
            return []
        return await self.pipelined("read", lambda pipe: [pipe.hget(key, field) for key in keys])


def connect(settings: RedisSettings) -> aioredis.Redis | RedisCluster:
    """A single-node client for redis:// and rediss://, a cluster client for redis+cluster:// and
    rediss+cluster:// (comma-separated startup nodes; a cluster has only database 0)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
    if settings.password is not None:
        options["password"] = settings.password.get_secret_value()
    if settings.ssl_ca_certs is not None:
        options["ssl_ca_certs"] = str(settings.ssl_ca_certs)
    scheme = settings.url.partition("://")[0]
    if scheme not in CLUSTER_SCHEMES:
        return aioredis.Redis.from_url(settings.url, **options)
    nodes = cluster_nodes(settings.url)
    if CLUSTER_SCHEMES[scheme] == "rediss":
        options["ssl"] = True
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **options)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """(host, port) of each startup node in a redis+cluster:// URL; ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"{url!r} is not a cluster URL (redis+cluster://host:port[,host:port...])")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, but {url!r} names database {path!r}")
    if "@" in netloc:
        raise ValueError("put the cluster password in ADGEN_REDIS__PASSWORD, not in the URL")
    nodes = []
    for part in filter(None, netloc.split(",")):
        host, colon, port = part.rpartition(":")
        if not colon or not port.isdigit():
            raise ValueError(f"cluster node {part!r} in {url!r} is not host:port")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError(f"no cluster node in {url!r}")
    return nodes
