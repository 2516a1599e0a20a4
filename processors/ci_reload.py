"""Hot reload of the search path's CI model: follow the CI registry's pointer, swap a new version in between
query batches.

A worker started with `model.ci_registry` serves the registry's current CI model version (or the CI build's
own model while the registry is empty) and, every `model.reload_interval_s`, looks at the pointer
(`RegistryFollower`, processors/registry_follower.py). A new version is loaded and checked in a thread of its
own while queries keep being answered by the current one:

1. every file matches the sha256 its version.json records (a corrupt or half-copied version is refused);
2. the CI model loads (its LM's own checksums too);
3. its tokenizer represents the live CI set: every CI tokenizes to known tokens within the LM's embeddings and
   no two CIs alike, so its CI trie over the live set builds (`CIModel.checked_ci_sequences`);
4. the head cache's queries are answered again by it (cached answers always come from the model served), and
   a probe query (the most frequent head query, else a CI's own text) decodes at least one CI of the live set.

Then `SearchService.swap_model` makes the new state (model, trie, mapper, head cache, replaced as one) the
state of the next query batch and ad upsert. A refused version is logged once with the reason
(`CI model version v0003 refused: ...; still serving v0002`, `adgen_ci_model_reloads_total{outcome="refused"}`).
`adgen_ci_model_version{version}` is 1 for the version served, under the label every search result carries
(`SearchResult.model_version`, e.g. v0002-3f2a9c01b7d4); snapshots written afterwards record its fingerprint
and version, and a restarted worker serves the pointer's version again (processors/worker_app.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adgen.index.trie_arrays import TrieArrays
from adgen.model.registry import ModelRegistry
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.query_retrieval import SearchService, ServingState
from adgen.processors.registry_follower import RegistryFollower, VersionRefused
from adgen.search.ci_index import CIError, CIIndex, build_ci_trie, normalise_text
from adgen.search.ci_model import CIModel, CIModelError

CIModelLoader = Callable[[Path], CIModel]


class CIModelRefused(VersionRefused):
    """A CI model the live CI set cannot be served with (the message says why)."""


def check_tokens(model: CIModel, index: CIIndex) -> TrieArrays:
    """The model's CI trie over the live CI set, or CIModelRefused naming a CI it cannot represent (check 3)."""
    try:
        return build_ci_trie(model.checked_ci_sequences(index.ci_set))
    except (CIError, CIModelError) as exc:
        raise CIModelRefused(f"its tokenizer cannot represent the live CI set: {exc}") from exc


def check_probe(state: ServingState, index: CIIndex) -> None:
    """CIModelRefused unless the state's model decodes a CI of the live set for a probe query (check 4)."""
    probe = next(iter(state.head_cache), None) or normalise_text(index.ci_set.texts[0])
    (row,) = state.mapper.model_cis([probe])  # the model alone: lexical matching would hide a broken one
    if not row or not set(row) <= set(range(index.num_cis)):
        raise CIModelRefused(f"the probe query {probe!r} decodes no CI of the live set: {sorted(row)[:5]}")


def servable_state(model: CIModel, service: SearchService) -> ServingState:
    """The state that serves `model` over the service's live CI set, head cache answered again by it, or
    CIModelRefused (checks 3-4). Decodes every head query: call it off the serving path."""
    state = service.state_for(model, check_tokens(model, service.index))
    check_probe(state, service.index)
    return state


def check_served(service: SearchService) -> None:
    """CIModelRefused unless the service's own model passes checks 3-4 (a worker starting on it)."""
    check_tokens(service.model, service.index)
    check_probe(service.state, service.index)


class CIModelReloader(RegistryFollower):
    """Follows the CI registry's pointer; loads, checks and swaps in new CI model versions (module docstring)."""

    what = "CI model"
    kind = "ci"

    def __init__(
        self,
        registry: ModelRegistry,
        serving: str | None,
        service: SearchService,
        load: CIModelLoader,
        metrics: WorkerMetrics,
        interval_s: float,
    ) -> None:
        """`serving`: the registry version the service serves (None: the CI build's own model)."""
        label = service.model_version
        super().__init__(registry, serving, label, metrics.ci_model_version, metrics.ci_model_reloads, interval_s)
        self.service = service
        self.load = load

    def load_checked(self, version: str, path: Path) -> ServingState:
        return servable_state(self.load(path), self.service)

    def swap(self, loaded: ServingState) -> str:
        self.service.swap_model(loaded)
        return loaded.model.model_version
