"""What both hot reloaders share: follow a registry's pointer, load and check a new version off the serving
path, swap it in between batches, refuse a bad one once.

Every `model.reload_interval_s` the follower reads the pointer (model/registry.py). When it names a version
other than the one served and not refused before, the version's files are verified against their sha256 and
the subclass loads and checks it in a thread of its own (`load_checked`), while the worker keeps serving the
current one. A version that passes is swapped in (`swap`); any failure refuses it with one `log.error`
naming the reason, counts it under `outcome="refused"`, and the current version keeps serving. The follower
looks again only when the pointer moves (a new publish, `adgen model use`, `adgen model rollback`).

Subclasses: `ModelReloader` (the LEADRE generator, processors/model_reload.py) and `CIModelReloader` (the
search path's CI model, processors/ci_reload.py).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from adgen.model.registry import ModelRegistry, RegistryError
from adgen.processors.worker_parts import Component

log = logging.getLogger(__name__)


class VersionRefused(RuntimeError):
    """A registry version this worker cannot serve (the message says why)."""


class RegistryFollower(Component):
    """Follows `registry`'s pointer and swaps checked versions in (see the module docstring)."""

    what = "model"  # how log lines name a version: "<what> version v0003 refused: ..."
    kind = "leadre"  # the VersionInfo.kind this follower serves; a version of another kind is refused

    def __init__(
        self,
        registry: ModelRegistry,
        serving: str | None,
        served_label: str,
        version_gauge: Gauge,
        reloads: Counter,
        interval_s: float,
    ) -> None:
        """`serving`: the registry version served (None: a model from outside the registry); `served_label`:
        the label its outputs carry, marked 1 on `version_gauge`."""
        super().__init__()
        self.registry = registry
        self.serving = serving
        self.served_label = served_label
        self.version_gauge = version_gauge
        self.reloads = reloads
        self.interval_s = interval_s
        self.refused: dict[str, str] = {}
        version_gauge.labels(served_label).set(1)

    # -- what a subclass provides ---------------------------------------------------------------------------
    def load_checked(self, version: str, path: Path) -> Any:
        """Load the verified version at `path` and check it can serve here (raise to refuse it); runs in a
        thread, off the serving path."""
        raise NotImplementedError

    def swap(self, loaded: Any) -> str:
        """Serve `loaded` from the next batch on; returns the label its outputs carry."""
        raise NotImplementedError

    # -- the loop -------------------------------------------------------------------------------------------
    @Component.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval_s)
            if not self.should_stop:
                await self.check()

    async def check(self) -> str | None:
        """Swap to the pointer's version if it is new and passes every check; returns the version swapped in."""
        try:
            wanted = self.registry.current()
        except (OSError, ValueError) as exc:  # a pointer being replaced, or garbage: try again next time
            log.warning(
                "%s registry %s: cannot read its pointer (%s); still serving %s",
                self.what,
                self.registry.root,
                exc,
                self.serving or self.served_label,
            )
            return None
        if wanted is None or wanted == self.serving or wanted in self.refused:
            return None
        try:
            loaded = await asyncio.to_thread(self._load_checked, wanted)
        except Exception as exc:  # any failure to load or check refuses the version, never the worker
            self.refused[wanted] = str(exc)
            self.reloads.labels("refused").inc()
            log.error(
                "%s version %s refused: %s; still serving %s", self.what, wanted, exc, self.serving or self.served_label
            )
            return None
        label = self.swap(loaded)
        self.version_gauge.labels(self.served_label).set(0)
        self.version_gauge.labels(label).set(1)
        self.reloads.labels("loaded").inc()
        log.warning(
            "%s version %s serving from the next batch (was %s)", self.what, wanted, self.serving or self.served_label
        )
        self.serving, self.served_label = wanted, label
        return wanted

    def _load_checked(self, version: str) -> Any:
        try:
            path = self.registry.verify(version)
            kind = self.registry.info(version).kind
        except RegistryError as exc:
            raise VersionRefused(str(exc)) from exc
        if kind != self.kind:
            raise VersionRefused(
                f"it is a {kind} model, this registry serves {self.kind} models (published to the wrong one?)"
            )
        return self.load_checked(version, path)
