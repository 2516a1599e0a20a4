"""Asyncio micro-batcher: many single requests in, few batched model calls out, with back-pressure.

The nearline path receives one generation request at a time, but the decoder is several times cheaper per
prompt in batches. Requests wait until `max_batch` have arrived or `max_delay_s` has passed since the
first of them, whichever comes first; the batch then runs in one worker thread (the event loop keeps
serving the stream) and each request's future gets its own result. The queue is bounded: when
`capacity` requests are already waiting, `submit` raises `QueueFull` (or, with `wait=True`, awaits room),
so a slow model slows the consumer down instead of growing memory.

    batcher = MicroBatcher(lambda prompts: search.generate(prompts, trie, k=20), max_batch=16, max_delay_s=0.05)
    async with batcher:
        items = await batcher.submit(prompt_ids)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


class QueueFull(RuntimeError):
    """The micro-batcher already holds `capacity` waiting requests; shed load or retry later."""


class BatcherClosed(RuntimeError):
    """The micro-batcher is stopped (or was never started) and takes no requests."""


@dataclass
class BatcherStats:
    batches: int = 0
    requests: int = 0
    full_batches: int = 0
    deadline_batches: int = 0
    failed_batches: int = 0
    sizes: list[int] = field(default_factory=list)


_STOP = object()


class MicroBatcher(Generic[Req, Res]):
    """Collects requests into batches for `run_batch(list[Req]) -> list[Res]` (one result per request, in order)."""

    def __init__(
        self,
        run_batch: Callable[[list[Req]], Sequence[Res]],
        max_batch: int = 16,
        max_delay_s: float = 0.05,
        capacity: int = 1024,
    ) -> None:
        if max_batch < 1 or capacity < 1 or max_delay_s < 0:
            raise ValueError(
                f"need max_batch >= 1, capacity >= 1, max_delay_s >= 0; got {max_batch}, {capacity}, {max_delay_s}"
            )
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.capacity = capacity
        self.stats = BatcherStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = True

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if not self._closed:
            return
        self._queue = asyncio.Queue(maxsize=self.capacity)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microbatch")
        self._closed = False
        self._task = asyncio.create_task(self._loop(), name="microbatcher")

    async def stop(self) -> None:
        """Finish every request already accepted, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        assert self._queue is not None and self._task is not None
        await self._queue.put(_STOP)  # waits for room: the loop keeps draining
        await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> MicroBatcher[Req, Res]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def submit(self, request: Req, wait: bool = False) -> Res:
        """Queue one request and await its result. Raises QueueFull when full (unless `wait`)."""
        if self._closed or self._queue is None:
            raise BatcherClosed(
                "the micro-batcher is not running; use `async with batcher:` or `await batcher.start()`"
            )
        future: asyncio.Future[Res] = asyncio.get_running_loop().create_future()
        if wait:
            await self._queue.put((request, future))
        else:
            try:
                self._queue.put_nowait((request, future))
            except asyncio.QueueFull:
                raise QueueFull(
                    f"{self.capacity} requests already waiting for the model; shed load or retry later"
                ) from None
        return await future

    async def _collect(self, first: tuple[Req, asyncio.Future]) -> tuple[list[tuple[Req, asyncio.Future]], bool]:
        """The batch started by `first`; also whether a stop marker was met."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [first]
        deadline = loop.time() + self.max_delay_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch, stopping = await self._collect(first)
            live = [(req, fut) for req, fut in batch if not fut.cancelled()]
            self._record(len(batch))
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [req for req, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} requests")
            except Exception as exc:  # every caller of this batch gets the failure, the loop goes on
                self.stats.failed_batches += 1
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), res in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
        if stopping:  # drain whatever arrived behind the stop marker (none can: submit is closed)
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    _, fut = self._queue.get_nowait()
                    if not fut.done():
                        fut.set_exception(BatcherClosed("the micro-batcher stopped"))

    def _record(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.requests += size
        self.stats.sizes.append(size)
        if size >= self.max_batch:
            self.stats.full_batches += 1
        else:
            self.stats.deadline_batches += 1
