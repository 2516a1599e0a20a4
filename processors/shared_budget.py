"""The generation budget: one token bucket per worker, or one for every worker through Redis.

LEADRE balances its engine instances with global counters: the compute budget is the cluster's, and the
priority order (ARPU groups) is too. `budget.shared` switches between

- `LocalBudget`: the worker's own token bucket (processors/scheduler.py), N workers = N budgets;
- `SharedBudget`: one bucket and one priority order in Redis, changed only by one Lua script, so any number
  of workers together generate at most `generations_per_second` (plus `burst`), highest groups first.

How the shared order works: each worker asks for tokens for its best queued requests (their groups, best
first) and says which group heads its queue. The script refills the bucket by Redis's own clock (`TIME`: no
worker clock skew), records this worker's head group, and grants tokens only to requests whose group is at
least the highest head group any *other* live worker reports, so a lower group anywhere waits while a higher
group waits elsewhere. A worker's report expires after `budget.demand_ttl_s` (a dead worker never blocks the
rest) and is cleared as soon as its queue empties. Granted tokens the debounce does not use are handed back
(`settle`), and served users are counted per group in Redis for everyone to see.

Groups must mean the same thing on every worker: with a shared budget the ARPU group edges are fixed
(`budget.arpu_edges`, else log-spaced), never fitted from what one worker happened to see.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from adgen.core.config import BudgetSettings
from adgen.processors.redis_client import RedisClient
from adgen.processors.scheduler import TokenBucket

#: Blocked by a higher group elsewhere: ask again after this long.
BLOCKED_POLL_S = 0.05

# KEYS: bucket hash, demand hash, served hash.
# ARGV: rate/s, burst, worker id, demand ttl ms, head group (-1 = idle), then the groups of the requests asked for
# (best first; none = only report). Returns {granted, tokens after (milli-tokens), floor group}.
ACQUIRE_LUA = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local me, ttl, head = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(b[1]) or burst
local stamp = tonumber(b[2]) or now
if now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * rate / 1000)
  stamp = now
end
if head >= 0 then
  redis.call('HSET', KEYS[2], me, head .. ':' .. now)
else
  redis.call('HDEL', KEYS[2], me)
end
local floor = -1
local demand = redis.call('HGETALL', KEYS[2])
for i = 1, #demand, 2 do
  if demand[i] ~= me then
    local sep = string.find(demand[i + 1], ':')
    local group = tonumber(string.sub(demand[i + 1], 1, sep - 1))
    local at = tonumber(string.sub(demand[i + 1], sep + 1))
    if now - at > ttl then
      redis.call('HDEL', KEYS[2], demand[i])
    elseif group > floor then
      floor = group
    end
  end
end
local granted = 0
for i = 6, #ARGV do
  if tokens - granted < 1 or tonumber(ARGV[i]) < floor then break end
  granted = granted + 1
end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(stamp))
return {granted, math.floor(tokens * 1000), floor}
"""

# KEYS: bucket hash, served hash. ARGV: burst, tokens handed back, then (group, users served) pairs.
SETTLE_LUA = """
local burst, back = tonumber(ARGV[1]), tonumber(ARGV[2])
if back > 0 then
  local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens')) or burst
  redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(burst, tokens + back)))
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""


@dataclass(frozen=True)
class Grant:
    """How many of the requests asked for may be generated now, and when to ask again if none."""

    granted: int
    retry_after_s: float = 0.0


class Budget(Protocol):
    """What the generation loop needs from a budget (local or shared)."""

    async def acquire(self, groups: Sequence[int], now: float) -> Grant:
        """Tokens for up to len(groups) requests (their ARPU groups, best first); the caller generates at most
        `granted` users and then calls `settle` with the groups it actually served."""
        ...

    async def settle(self, grant: Grant, served: Sequence[int], now: float) -> None: ...

    async def idle(self) -> None:
        """The worker's queue is empty: stop holding back other workers' lower groups."""
        ...

    def tokens(self, now: float) -> float: ...

    def wait_time(self, now: float) -> float:
        """Seconds until asking again is worth it (0: now)."""
        ...


class LocalBudget:
    """The worker's own token bucket; charging only what was served is exact here (one loop, one bucket)."""

    def __init__(self, bucket: TokenBucket, served_by_group: list[int]) -> None:
        self.bucket = bucket
        self.served_by_group = served_by_group

    async def acquire(self, groups: Sequence[int], now: float) -> Grant:
        granted = min(len(groups), self.bucket.available(now))
        return Grant(granted, 0.0 if granted else self.bucket.wait_time(now))

    async def settle(self, grant: Grant, served: Sequence[int], now: float) -> None:
        self.bucket.spend(len(served), now)
        for group in served:
            self.served_by_group[group] += 1

    async def idle(self) -> None:
        return None

    def tokens(self, now: float) -> float:
        return float(self.bucket.available(now))

    def wait_time(self, now: float) -> float:
        return self.bucket.wait_time(now)


def worker_id() -> str:
    """Unique per worker process (host, pid, random part: a restarted worker is a new participant)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SharedBudget:
    """The cluster's one bucket and priority order in Redis (see the module docstring)."""

    def __init__(
        self,
        settings: BudgetSettings,
        redis: RedisClient,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.clock = clock
        self.name = name or worker_id()
        keys = redis.keys
        self.bucket_key, self.demand_key, self.served_key = (
            keys.budget_bucket(),
            keys.budget_demand(),
            keys.budget_served(),
        )
        self._acquire = redis.client.register_script(ACQUIRE_LUA)
        self._settle = redis.client.register_script(SETTLE_LUA)
        self._tokens = float(settings.burst)
        self._retry_at = 0.0
        self._reported = False

    async def _call(self, script: object, what: str, keys: list[str], args: list[object]) -> list[int] | int:
        """One script call, retried like every Redis operation (redis-py reloads a script a node lost)."""
        return await self.redis.retrying(what, lambda: script(keys=keys, args=args))  # type: ignore[operator]

    async def acquire(self, groups: Sequence[int], now: float) -> Grant:
        s = self.settings
        head = groups[0] if groups else -1
        granted, milli, floor = await self._call(  # type: ignore[misc]
            self._acquire,
            "acquire budget",
            [self.bucket_key, self.demand_key, self.served_key],
            [s.generations_per_second, s.burst, self.name, round(s.demand_ttl_s * 1000), head, *groups],
        )
        self._reported = head >= 0
        self._tokens = milli / 1000
        retry = 0.0
        if not granted and groups:
            blocked = int(floor) > groups[0]
            retry = BLOCKED_POLL_S if blocked else max(BLOCKED_POLL_S, (1 - self._tokens) / s.generations_per_second)
        self._retry_at = self.clock() + retry
        return Grant(int(granted), retry)

    async def settle(self, grant: Grant, served: Sequence[int], now: float) -> None:
        back = grant.granted - len(served)
        counts: dict[int, int] = {}
        for group in served:
            counts[group] = counts.get(group, 0) + 1
        if back <= 0 and not counts:
            return
        pairs = [x for group, n in sorted(counts.items()) for x in (group, n)]
        await self._call(
            self._settle, "settle budget", [self.bucket_key, self.served_key], [self.settings.burst, back, *pairs]
        )

    async def idle(self) -> None:
        if self._reported:
            await self.acquire([], self.clock())

    def tokens(self, now: float) -> float:
        return self._tokens

    def wait_time(self, now: float) -> float:
        return max(0.0, self._retry_at - now)

    async def served_by_group(self) -> dict[int, int]:
        """Users served per ARPU group by every worker together."""
        raw = await self.redis.retrying("read served", lambda: self.redis.client.hgetall(self.served_key))
        return {int(k): int(v) for k, v in raw.items()}
