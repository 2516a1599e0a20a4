"""The lag component: every few seconds, each input's consumer lag onto the `adgen_consumer_lag` gauge.

Each input component measures its own lag where its consumer lives (the window consumer's thread, the ad
reader's poll thread, Faust's consumer for search queries) and exposes it as `lag()`; this component only
publishes what they report, so no component reaches into another's consumer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from adgen.processors.metrics import WorkerMetrics
from adgen.processors.worker_parts import Component

LAG_EVERY_S = 5.0


class LagSource(Protocol):
    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus next offset, per (topic, partition) it consumes; a hint (tansu_quirks 2)."""
        ...


class LagReporter(Component):
    def __init__(self, metrics: WorkerMetrics, sources: Sequence[LagSource]) -> None:
        super().__init__()
        self.metrics = metrics
        self.sources = list(sources)

    @Component.timer(LAG_EVERY_S)
    async def _report(self) -> None:
        self.report()

    def report(self) -> None:
        for source in self.sources:
            for (topic, partition), lag in source.lag().items():
                self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
