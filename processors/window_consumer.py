"""The behaviour-window consumer: user-behavior -> window rows, below Faust, in a thread the worker owns.

Faust's per-event machinery (Event objects, conductor, stream iteration) caps a Faust agent at ~8k
events/s here even when it only counts, so the windows path uses a confluent-kafka group consumer
(librdkafka fetches and batches in C) in its own thread; the Faust loop keeps generation, the ad index
and search responsive. One batch, in order, and the input offsets are committed only at the end:

    consume(n) -> decode in one pass (bad ones: dead letters, produced at once without waiting)
    -> fold per user (processors/behavior_windows.py) -> changelog rows acknowledged by the broker
    -> rows + changelog position in RocksDB -> window features in Redis and updates handed to generation
    (on the worker's loop) -> the batch's dead letters acknowledged -> commit offsets

So a commit never passes an event whose effects are not durable nor a bad event whose dead letter is not,
and a crash anywhere replays the batch into the idempotent fold (its letters may then arrive twice, never
zero times). A flood of bad input costs a decode, a produce() and a counter per event: no log line, no
exception and no round trip per event. Broker or Redis down: every step retries with backoff; nothing is
skipped.
A newly assigned partition is first restored from the changelog (processors/window_changelog.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from adgen.core.config import Settings
from adgen.processors.behavior_windows import WindowUpdate, fold_batch, windows_in_store
from adgen.processors.feature_store import FeatureStore, UserWindowFeatures
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.window_changelog import AckedProducer, ChangelogRestorer, Record, Stopping, backoff
from adgen.processors.window_state import NO_TIME, AdLookup, UserEvent, WindowLimits
from adgen.processors.window_store import WindowStore
from adgen.processors.worker_parts import Component, Readiness
from adgen.streams.app import decode_batch
from adgen.streams.dlq_producer import DeadLetterProducer
from adgen.streams.topics import USER_BEHAVIOR, topic_name

log = logging.getLogger(__name__)

#: Behaviour events per batch and the longest a partial batch waits.
BATCH_SIZE = 5000
BATCH_WAIT_S = 0.2
LAG_EVERY_S = 2.0

#: Writes a batch's window features to Redis and hands its updates to generation; blocks until both are done.
Publish = Callable[[Sequence[UserWindowFeatures], Sequence[WindowUpdate]], None]


def group_id(settings: Settings) -> str:
    """Its own group next to the Faust app's (`app_id`): the two consume different topics."""
    return f"{settings.worker.app_id}-windows"


class WindowConsumer:
    """Runs in one thread (`run`); `stop()` from any thread makes it finish without committing a half batch."""

    def __init__(
        self,
        settings: Settings,
        store: WindowStore,
        metrics: WorkerMetrics,
        publish: Publish,
        *,
        ad_lookup: AdLookup | None = None,
        on_assigned: Callable[[list[int]], None] | None = None,
        batch_size: int = BATCH_SIZE,
        batch_wait_s: float = BATCH_WAIT_S,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.publish = publish
        self.ad_lookup = ad_lookup
        self.on_assigned = on_assigned
        self.batch_size, self.batch_wait_s = batch_size, batch_wait_s
        self.limits = WindowLimits(days=settings.window.days, max_events=settings.window.max_events)
        self.topic = topic_name(USER_BEHAVIOR, settings.kafka.topic_prefix)
        self.stopping = stopping or threading.Event()
        self.writer = AckedProducer(settings, self.stopping)
        self.dead_letters = DeadLetterProducer(
            settings, self.stopping, on_retry=metrics.dead_letter_retries.labels(USER_BEHAVIOR.name).inc
        )
        self.restorer = ChangelogRestorer(settings, store, self.writer)
        self.consumer = Consumer(
            {
                **settings.kafka.consumer_config(),
                "group.id": group_id(settings),
                "enable.auto.commit": False,  # commits only after a batch is durable
                "auto.offset.reset": "earliest",
            }
        )
        self.assigned: set[int] = set()
        self.positions: dict[int, int] = {}  # changelog position of the local rows, per assigned partition
        self.uncommitted: dict[int, int] = {}  # partition -> next offset, processed but not committed yet
        self.events = 0  # good events applied (for benchmarks and tests)
        self.lag: dict[tuple[str, int], int] = {}  # measured in this thread, published by the lag component
        self._lag_at = 0.0

    def stop(self) -> None:
        self.stopping.set()

    # ---- the loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until `stop()`; leaves the group on the way out."""
        self.consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not self.stopping.is_set():
                messages = self.consumer.consume(self.batch_size, self.batch_wait_s)
                if self.stopping.is_set():
                    break  # a restore may have been cut short: process nothing more
                if messages:
                    self._process_until_done(messages)
                self._measure_lag()
        except Stopping:
            log.info("window consumer stopping with a batch unfinished; it is replayed on the next start")
        finally:
            for close in (self.consumer.close, self.restorer.close, self.writer.close, self.dead_letters.close):
                try:
                    close()
                except Exception:  # shutting down: report, keep closing the rest
                    log.exception("closing the window consumer")

    def _process_until_done(self, messages: list[Message]) -> None:
        """A batch that fails for an unexpected reason is retried as it is: never skipped, never committed."""
        attempt = 0
        while True:
            try:
                self.process(messages)
                return
            except Stopping:
                raise
            except Exception:
                delay = backoff(attempt)
                attempt += 1
                log.exception("window batch failed (attempt %d); retrying it in %.1fs", attempt, delay)
                if self.stopping.wait(delay):
                    raise Stopping("shutting down while a batch kept failing") from None

    def process(self, messages: Sequence[Message]) -> None:
        """One batch, end to end (see the module docstring); raises Stopping if cut short."""
        started = time.perf_counter()
        batch = decode_batch(self.settings, messages)
        if unassigned := set(batch.next_offsets) - self.assigned:  # cannot happen: assignment restores first
            raise RuntimeError(f"messages of unassigned partitions {sorted(unassigned)}")
        deliveries = self.dead_letters.send(batch.letters) if batch.letters else None  # acked while we fold
        events: dict[int, list[UserEvent]] = {}
        for event, partition, _ in batch.events:
            events.setdefault(partition, []).append(event)  # type: ignore[arg-type]
        folded = fold_batch(self.store, events, self.limits, self.ad_lookup)
        changelog = self.writer.changelog
        records: list[Record] = [(changelog, p, user, row) for p, rows in folded.rows.items() for user, row in rows]
        written = self.writer.write(records) if records else {}
        self.metrics.window_uncommitted_events.set(len(batch.events))  # the batch is in flight from here
        for partition, rows in folded.rows.items():
            landed = written[(changelog, partition)]
            # the local position may skip our own rows only when nobody else's lie in between
            position = landed.last + 1 if landed.contiguous and landed.first == self.positions.get(partition) else None
            self.store.write(partition, rows, position)
            if position is not None:
                self.positions[partition] = position
        if folded.features or folded.updates:
            self.publish(folded.features, folded.updates)
        if deliveries is not None:
            if not self.dead_letters.wait(deliveries):
                raise Stopping("shutting down before the batch's dead letters were acknowledged")
            self.metrics.count_dead_letters(USER_BEHAVIOR.name, batch.kinds())
        good = len(batch.events)
        self.events += good
        self.metrics.events.labels(USER_BEHAVIOR.name).inc(good)
        self.metrics.window_batch_users.observe(folded.users)
        self.metrics.window_batch_seconds.observe(time.perf_counter() - started)
        for partition, offset in batch.next_offsets.items():
            self.uncommitted[partition] = max(offset, self.uncommitted.get(partition, 0))
        self._commit()

    def _commit(self) -> None:
        """Commit what is durable; a failed commit is retried with the next batch (offsets only grow)."""
        offsets = [TopicPartition(self.topic, p, o) for p, o in self.uncommitted.items() if p in self.assigned]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit of %s failed (%s); the next batch commits them", offsets, exc.args[0])
            return
        self.uncommitted.clear()
        self.metrics.window_commits.inc()
        self.metrics.window_uncommitted_events.set(0)

    # ---- rebalance (called by librdkafka inside consume(), in this thread) ---------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Restore each partition from the changelog before a single event of it is consumed."""
        restored: list[int] = []
        for tp in partitions:
            attempt = 0
            while not self.stopping.is_set():
                try:
                    rows = self.restorer.restore(tp.partition)
                    self.positions[tp.partition] = self.store.position(tp.partition)
                    restored.append(tp.partition)
                    if rows:
                        log.info("restored %d window rows of partition %d from the changelog", rows, tp.partition)
                    break
                except Stopping:
                    return
                except Exception:
                    delay = backoff(attempt)
                    attempt += 1
                    log.exception("restoring partition %d failed; retrying in %.1fs", tp.partition, delay)
                    self.stopping.wait(delay)
        if self.stopping.is_set():
            return
        self.assigned = {tp.partition for tp in partitions}
        if self.on_assigned is not None:
            try:
                self.on_assigned(restored)
            except Stopping:
                return

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Batches are processed between consume() calls, so none is in flight here: commit what is done."""
        self._commit()
        revoked = {tp.partition for tp in partitions}
        self.assigned -= revoked
        for partition in revoked:
            self.uncommitted.pop(partition, None)
            self.positions.pop(partition, None)
        # the local rows stay with their position: when a partition comes back, its restore reads only what
        # another worker wrote to the changelog meanwhile

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (session expired): another worker may own them already, so nothing may be committed."""
        lost = {tp.partition for tp in partitions}
        log.warning("lost partitions %s of %s; uncommitted batches will be replayed by their owner", lost, self.topic)
        self.assigned -= lost
        for partition in lost:
            self.uncommitted.pop(partition, None)
            self.positions.pop(partition, None)

    def _measure_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S or not self.assigned:
            return
        self._lag_at = now
        tps = [TopicPartition(self.topic, p) for p in sorted(self.assigned)]
        try:
            lag = {}
            for tp in self.consumer.position(tps):
                if tp.offset < 0:
                    continue
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                # Tansu's high watermark can read low (tansu_quirks 2): the gauge is a hint, never a decision
                lag[(self.topic, tp.partition)] = max(0, high - tp.offset)
            self.lag = lag  # one reference swap: the lag component reads it from the event loop
        except KafkaException as exc:
            log.debug("lag measurement skipped: %s", exc)


def loop_publisher(
    loop: asyncio.AbstractEventLoop,
    write: Callable[[Sequence[UserWindowFeatures], Sequence[WindowUpdate]], Awaitable[Any]],
    stopping: threading.Event,
) -> Publish:
    """A Publish that runs the async `write` on `loop` (where the Redis client lives) and waits for it."""

    def publish(features: Sequence[UserWindowFeatures], updates: Sequence[WindowUpdate]) -> None:
        future = asyncio.run_coroutine_threadsafe(write(features, updates), loop)
        while True:
            try:
                future.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                if stopping.is_set():
                    future.cancel()
                    raise Stopping("shutting down while Redis was being written") from None

    return publish


async def run_in_thread(consumer: WindowConsumer, stop_timeout_s: float = 15.0) -> None:
    """Run the consumer in a daemon thread until it ends or this task is cancelled (worker shutdown)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def target() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # reported by the awaiting task
            log.exception("window consumer thread crashed")
            _settle(loop, done, exc)
        else:
            _settle(loop, done, None)

    thread = threading.Thread(target=target, name="behavior-windows", daemon=True)
    thread.start()
    try:
        await asyncio.shield(done)
    finally:
        consumer.stop()
        await asyncio.to_thread(thread.join, stop_timeout_s)


def _settle(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], exc: BaseException | None) -> None:
    def settle() -> None:
        if not done.done():
            done.set_result(None) if exc is None else done.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)


class WindowObserver(Protocol):
    """Who hears about changed windows besides Redis (the generation component)."""

    def observe(self, updates: Sequence[WindowUpdate]) -> None: ...


class BehaviorWindows(Component):
    """The behaviour-window component: owns user-behavior, the local window store and the consumer thread.

    Why below Faust: see the module docstring (Faust's per-event path tops out far below 20k events/s here;
    the batch consumer keeps the same guarantees as a Faust table with changelog). It starts consuming once
    the ad index has caught up (clicks need ad titles and categories), and hands every batch's window
    features to Redis and its changed windows to generation, on the worker's event loop.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore,
        generation: WindowObserver,
        metrics: WorkerMetrics,
        readiness: Readiness,
        ad_lookup: AdLookup | None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.generation = generation
        self.metrics = metrics
        self.readiness = readiness
        self.ad_lookup = ad_lookup
        self.window_store = WindowStore(settings.paths.state / "windows" / settings.worker.app_id)
        self.consumer: WindowConsumer | None = None

    @property
    def ready(self) -> bool:
        return self.consumer is not None and bool(self.consumer.assigned) and super().ready

    def lag(self) -> dict[tuple[str, int], int]:
        return dict(self.consumer.lag) if self.consumer is not None else {}

    async def _publish(self, features: Sequence[UserWindowFeatures], updates: Sequence[WindowUpdate]) -> None:
        if features:
            await self.store.write_user_windows(features)
        if updates:
            self.generation.observe(updates)

    @Component.task
    async def _consume(self) -> None:
        await self.readiness.wait(Readiness.INDEX_CAUGHT_UP)
        loop = asyncio.get_running_loop()

        def requeue_unserved(partitions: list[int]) -> None:
            """Requests acknowledged but not yet served (restart, rebalance) are queued again; runs in the
            consumer thread after a restore. The debounce drops the ones already published."""
            pending = [
                (w, True) for w in windows_in_store(self.window_store, partitions) if w.last_request_ts > NO_TIME
            ]
            if pending:
                log.info("re-queueing %d users with ad requests from partitions %s", len(pending), partitions)
                loop.call_soon_threadsafe(self.generation.observe, pending)

        stopping = threading.Event()
        self.consumer = WindowConsumer(
            self.settings,
            self.window_store,
            self.metrics,
            loop_publisher(loop, self._publish, stopping),
            ad_lookup=self.ad_lookup,
            on_assigned=requeue_unserved,
            stopping=stopping,
        )
        try:
            await run_in_thread(self.consumer)
        finally:
            self.window_store.close()
