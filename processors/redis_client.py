"""The one Redis client of adgen: connection (TLS, password), retry with backoff, pipelined guarded writes.

Every store (the feature store's user/ad keys, the search path's `ci:*` and `search:*` keys) goes through
it, so TLS (`rediss://` + `redis.ssl_ca_certs`), the password and the retry policy are set in one place.
Values written with a guard are hashes `{v: <version>, data: <JSON>}`: a small Lua script writes `data`
only if the new version (event time in ms) is newer, so a late or replayed write never overwrites a newer
one and replaying a topic from any offset converges. The worker retries without limit while Redis is
unreachable (it stalls rather than losing a write; retrying a half-applied guarded pipeline is harmless);
readers give up after `redis.max_retries` attempts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, BusyLoadingError, ConnectionError, TimeoutError

from adgen.core.config import RedisSettings
from adgen.processors.redis_keys import RedisKeys

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 5.0

# For each KEYS[i], ARGV[4i-3..4i] = version, JSON payload, ttl seconds (0 = keep), strict (1: an equal version is
# not newer).
# Returns how many keys were newer and written. (One call per chunk of keys keeps a window batch to a few
# round trips; on Redis Cluster the keys of one call would have to share a hash slot.)
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
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
        if settings.password is not None:
            options["password"] = settings.password.get_secret_value()
        if settings.ssl_ca_certs is not None:
            options["ssl_ca_certs"] = str(settings.ssl_ca_certs)
        self.client = aioredis.Redis.from_url(settings.url, **options)
        self._guarded_set_many = self.client.register_script(GUARDED_SET_MANY_LUA)

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
            except (ConnectionError, TimeoutError, BusyLoadingError, OSError) as exc:
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
        """Pipelined guarded writes (KEYS_PER_CALL keys per script call); returns how many were newer."""
        if not items:
            return 0

        async def run() -> int:
            async with self.client.pipeline(transaction=False) as pipe:  # reset even when execute fails
                for start in range(0, len(items), KEYS_PER_CALL):
                    chunk = items[start : start + KEYS_PER_CALL]
                    args: list[object] = []
                    for _, version, payload, ttl, strict in chunk:
                        args += [version, payload, ttl, 1 if strict else 0]
                    await self._guarded_set_many(keys=[c[0] for c in chunk], args=args, client=pipe)
                return sum(int(r) for r in await pipe.execute())

        started = time.perf_counter()
        applied = await self.retrying(f"write {kind}", run)
        if self.on_write is not None:
            self.on_write(kind, time.perf_counter() - started, len(items))
        return applied

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
