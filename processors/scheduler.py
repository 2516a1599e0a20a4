"""Who gets a fresh ad list next: ARPU user groups, a priority queue, one token-bucket budget, a debounce.

Pure logic with explicit clocks (`now` arguments), so every policy is testable without a worker. LEADRE
serves priority users first within a fixed compute budget: users fall into `n` ARPU groups (higher ARPU,
higher group), the queue always yields the highest group first, and one token bucket (generations per
second, with a burst) is shared by all groups, so under load low-value users wait or are dropped while
high-value users are still served.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel


class ArpuGroups:
    """Maps an ARPU value to a group 0..n-1 by ascending edges (group n-1 holds the most valuable users)."""

    def __init__(self, edges: Sequence[float]) -> None:
        if list(edges) != sorted(edges):
            raise ValueError(f"ARPU group edges must be ascending, got {list(edges)}")
        self.edges: tuple[float, ...] = tuple(float(e) for e in edges)

    @property
    def n_groups(self) -> int:
        return len(self.edges) + 1

    def group_of(self, arpu: float) -> int:
        return bisect.bisect_right(self.edges, arpu)

    @classmethod
    def log_spaced(cls, n_groups: int, low: float = 0.1, high: float = 1000.0) -> ArpuGroups:
        """Default edges before any ARPU was observed: geometric between `low` and `high`."""
        if n_groups < 1 or not 0 < low < high:
            raise ValueError(f"need n_groups >= 1 and 0 < low < high, got {n_groups}, {low}, {high}")
        if n_groups == 1:
            return cls([])
        ratio = (high / low) ** (1.0 / (n_groups - 2)) if n_groups > 2 else 1.0
        return cls([low * ratio**i for i in range(n_groups - 1)])

    @classmethod
    def from_values(cls, values: Sequence[float], n_groups: int) -> ArpuGroups:
        """Quantile edges so each group holds about the same number of users (ties share a group)."""
        if not values:
            return cls.log_spaced(n_groups)
        ordered = sorted(values)
        edges = []
        for i in range(1, n_groups):
            q = ordered[min(len(ordered) - 1, (i * len(ordered)) // n_groups)]
            edges.append(q)
        return cls(sorted(edges))


class ArpuReservoir:
    """A seeded reservoir sample of observed ARPUs that refits the group edges as users arrive."""

    def __init__(self, n_groups: int, capacity: int = 10_000, refit_every: int = 500, seed: int = 0) -> None:
        self.n_groups = n_groups
        self.capacity = capacity
        self.refit_every = refit_every
        self._rng = random.Random(seed)
        self._sample: list[float] = []
        self._seen = 0
        self.groups = ArpuGroups.log_spaced(n_groups)

    def observe(self, arpu: float) -> None:
        self._seen += 1
        if len(self._sample) < self.capacity:
            self._sample.append(arpu)
        else:
            j = self._rng.randrange(self._seen)
            if j < self.capacity:
                self._sample[j] = arpu
        if self._seen % self.refit_every == 0 or self._seen == min(self.refit_every, 50):
            self.groups = ArpuGroups.from_values(self._sample, self.n_groups)


class FixedGroups:
    """ARPU groups with fixed edges: the same numbering on every worker (a shared budget needs that)."""

    def __init__(self, groups: ArpuGroups) -> None:
        self.groups = groups

    def observe(self, arpu: float) -> None:
        return None


class TokenBucket:
    """`rate` tokens per second up to `burst`; one token pays for one user's generation."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def available(self, now: float) -> int:
        """Whole tokens that can be spent right now."""
        self._refill(now)
        return int(self._tokens)

    def spend(self, n: int, now: float) -> None:
        self._refill(now)
        if n > self._tokens + 1e-9:
            raise ValueError(f"cannot spend {n} tokens, only {self._tokens:.2f} available")
        self._tokens -= n

    def wait_time(self, now: float, n: int = 1) -> float:
        """Seconds until `n` whole tokens are available (0 if they are)."""
        self._refill(now)
        return max(0.0, (n - self._tokens) / self.rate)


@dataclass
class PendingRequest:
    """One user's outstanding ad request; a newer request from the same user replaces it."""

    user_id: str
    group: int
    request_ts: float
    request_id: str = ""


@dataclass
class GenerationQueue:
    """Bounded, one entry per user; pops the highest group first, oldest first within a group.

    When full, a request from a group above the lowest queued group evicts that group's oldest entry;
    otherwise the incoming request is the one dropped. Both cases are reported to the caller.
    """

    n_groups: int
    capacity: int
    _groups: list[dict[str, PendingRequest]] = field(init=False)
    _where: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {self.capacity}")
        self._groups = [{} for _ in range(self.n_groups)]

    def __len__(self) -> int:
        return len(self._where)

    def depth_by_group(self) -> list[int]:
        return [len(g) for g in self._groups]

    def push(self, request: PendingRequest) -> PendingRequest | None:
        """Queue the request; returns the request that was dropped to make room (or this one), else None."""
        if not 0 <= request.group < self.n_groups:
            raise ValueError(f"group {request.group} outside 0..{self.n_groups - 1}")
        old_group = self._where.pop(request.user_id, None)
        if old_group is not None:
            old = self._groups[old_group].pop(request.user_id)
            if (old.request_ts, old.request_id) > (request.request_ts, request.request_id):
                request = old  # a late, older request never replaces a newer one
        dropped = None
        if len(self._where) >= self.capacity:
            lowest = next(i for i, g in enumerate(self._groups) if g)
            if request.group <= lowest:
                return request
            victim_id = next(iter(self._groups[lowest]))
            dropped = self._groups[lowest].pop(victim_id)
            del self._where[victim_id]
        self._groups[request.group][request.user_id] = request
        self._where[request.user_id] = request.group
        return dropped

    def peek_groups(self, n: int) -> list[int]:
        """Groups of the next `n` requests `pop` would return (best first), without taking them."""
        out: list[int] = []
        for index in range(self.n_groups - 1, -1, -1):
            out += [index] * min(len(self._groups[index]), n - len(out))
            if len(out) >= n:
                break
        return out

    def pop(self, n: int) -> list[PendingRequest]:
        out: list[PendingRequest] = []
        for group in reversed(self._groups):
            while group and len(out) < n:
                user_id = next(iter(group))
                out.append(group.pop(user_id))
                del self._where[user_id]
            if len(out) >= n:
                break
        return out


class Decision(StrEnum):
    FIRST = "first"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    TOO_SOON = "too_soon"
    STALE = "stale"
    INDEX_CHANGED = "index_changed"

    @property
    def generate(self) -> bool:
        return self in (Decision.FIRST, Decision.CHANGED, Decision.INDEX_CHANGED)


class LastGeneration(BaseModel):
    """What the debounce needs to know about the list currently published for a user."""

    request_ts: float
    fingerprint: str


def debounce(
    request_ts: float,
    fingerprint: str,
    last: LastGeneration | None,
    min_interval_s: float,
    list_has_dead_ads: bool = False,
) -> Decision:
    """Regenerate only when the prompt inputs changed and the minimum interval (event time) has passed.

    A published list that holds ads deleted or paused since is regenerated at the next newer request.
    """
    if last is None:
        return Decision.FIRST
    if request_ts <= last.request_ts:
        return Decision.STALE
    if list_has_dead_ads:
        return Decision.INDEX_CHANGED
    if fingerprint == last.fingerprint:
        return Decision.UNCHANGED
    if request_ts - last.request_ts < min_interval_s:
        return Decision.TOO_SOON
    return Decision.CHANGED


@dataclass
class GenerationScheduler:
    """Queue + budget together: `take` returns up to `max_n` users the budget can pay for, best first."""

    queue: GenerationQueue
    bucket: TokenBucket
    served_by_group: list[int] = field(init=False)
    dropped_by_group: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.served_by_group = [0] * self.queue.n_groups
        self.dropped_by_group = [0] * self.queue.n_groups

    def offer(self, request: PendingRequest) -> PendingRequest | None:
        dropped = self.queue.push(request)
        if dropped is not None:
            self.dropped_by_group[dropped.group] += 1
        return dropped

    def take(self, max_n: int, now: float) -> list[PendingRequest]:
        """Pop candidates without paying; call `charge` for the ones actually generated."""
        return self.queue.pop(min(max_n, self.bucket.available(now)))

    def charge(self, requests: Sequence[PendingRequest], now: float) -> None:
        self.bucket.spend(len(requests), now)
        for r in requests:
            self.served_by_group[r.group] += 1

    def wait_time(self, now: float) -> float:
        return self.bucket.wait_time(now) if len(self.queue) else float("inf")
