"""The micro-batcher: batches close on size or deadline, results reach the right caller, bounded queue."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest

from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm
from adgen.model.microbatch import BatcherClosed, MicroBatcher, QueueFull


class Recorder:
    """A batch function that doubles each request and remembers the batches it saw."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(list(batch))
        self.threads.add(threading.current_thread().name)
        return [2 * x for x in batch]


def test_a_full_batch_runs_without_waiting_for_the_deadline():
    async def scenario() -> tuple[list[int], Recorder, MicroBatcher]:
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch=4, max_delay_s=30.0)
        async with batcher:
            results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(8))), timeout=10)
        return results, rec, batcher

    results, rec, batcher = asyncio.run(scenario())
    assert results == [2 * i for i in range(8)]
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batcher.stats.full_batches == 2 and batcher.stats.deadline_batches == 0
    assert rec.threads and all(name.startswith("microbatch") for name in rec.threads)


def test_a_partial_batch_runs_when_the_deadline_passes():
    async def scenario() -> tuple[list[int], Recorder, MicroBatcher]:
        rec = Recorder()
        batcher = MicroBatcher(rec, max_batch=100, max_delay_s=0.05)
        async with batcher:
            results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3))), timeout=10)
        return results, rec, batcher

    results, rec, batcher = asyncio.run(scenario())
    assert results == [0, 2, 4]
    assert rec.batches == [[0, 1, 2]]
    assert batcher.stats.deadline_batches == 1


def test_a_full_queue_rejects_with_queue_full_and_recovers():
    release = threading.Event()

    def slow(batch: list[int]) -> list[int]:
        release.wait(10)
        return batch

    async def scenario() -> tuple[list[int], str]:
        batcher = MicroBatcher(slow, max_batch=1, max_delay_s=0.0, capacity=2)
        async with batcher:
            running = asyncio.create_task(batcher.submit(0))
            while batcher.stats.batches == 0:  # request 0 is taken and now blocks the worker
                await asyncio.sleep(0.001)
            queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull, match="2 requests already waiting") as info:
                await batcher.submit(3)
            release.set()
            results = await asyncio.wait_for(asyncio.gather(running, *queued), timeout=10)
            results.append(await batcher.submit(4))  # room again
        return results, str(info.value)

    results, message = asyncio.run(scenario())
    assert results == [0, 1, 2, 4]
    assert "shed load" in message


def test_waiting_submit_gets_in_once_there_is_room():
    release = threading.Event()

    def slow(batch: list[int]) -> list[int]:
        release.wait(10)
        return batch

    async def scenario() -> list[int]:
        batcher = MicroBatcher(slow, max_batch=1, max_delay_s=0.0, capacity=1)
        async with batcher:
            first = asyncio.create_task(batcher.submit(0))
            while batcher.stats.batches == 0:
                await asyncio.sleep(0.001)
            second = asyncio.create_task(batcher.submit(1))
            third = asyncio.create_task(batcher.submit(2, wait=True))  # queue full: waits instead of raising
            await asyncio.sleep(0.01)
            assert not third.done()
            release.set()
            return await asyncio.wait_for(asyncio.gather(first, second, third), timeout=10)

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_a_failing_batch_fails_each_of_its_requests_and_the_batcher_continues():
    calls = itertools.count()

    def flaky(batch: list[int]) -> list[int]:
        if next(calls) == 0:
            raise ValueError("model exploded")
        return batch

    async def scenario() -> tuple[list[object], int]:
        batcher = MicroBatcher(flaky, max_batch=2, max_delay_s=0.05)
        async with batcher:
            first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
            second = await batcher.submit(3)
        return [*first, second], batcher.stats.failed_batches

    results, failed = asyncio.run(scenario())
    assert [str(r) for r in results[:2]] == ["model exploded", "model exploded"]
    assert results[2] == 3 and failed == 1


def test_submit_before_start_is_a_clear_error():
    async def scenario() -> None:
        await MicroBatcher(Recorder()).submit(1)

    with pytest.raises(BatcherClosed, match="not running"):
        asyncio.run(scenario())


@pytest.mark.usefixtures("one_torch_thread")
def test_batched_decoder_results_equal_direct_calls():
    model = build_lm(LMConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=2, init_std=0.2))
    items = [list(s) for s in itertools.product(range(10, 14), range(20, 24))]
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    search = ConstrainedBeamSearch(model)
    prompts = [[3 + i, 4, 5 + (i % 7), 6] + [7] * (i % 5) for i in range(10)]
    direct = [search.generate([p], trie, k=4)[0] for p in prompts]

    async def scenario() -> list[list[tuple[int, float]]]:
        batcher = MicroBatcher(lambda batch: search.generate(batch, trie, k=4), max_batch=4, max_delay_s=0.02)
        async with batcher:
            return await asyncio.gather(*(batcher.submit(p) for p in prompts))

    batched = asyncio.run(scenario())
    assert [[v for v, _ in r] for r in batched] == [[v for v, _ in r] for r in direct]
