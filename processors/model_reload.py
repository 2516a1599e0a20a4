"""Hot reload: the worker follows the model registry's pointer and swaps a new version in between batches.

Every `model.reload_interval_s` the reloader reads the registry's pointer (model/registry.py). When it
names a version other than the one served, the version is loaded and checked in a thread of its own, off
the serving path (the decoder keeps decoding with the current model meanwhile):

1. every file matches the sha256 its version.json records (a corrupt or half-copied version is refused);
2. the weights load (the LM's own checksums too) and the tokenizer holds the live index's S-ID vocabulary at
   the very token offset the live trie was built with (another offset would make the trie name other tokens);
3. the version was trained against the RQ-VAE the live index codes ads with (same S-ID, same ad);
4. the recipe's prompt plus an S-ID fits the model's positions;
5. one probe list is decoded against the live index view: K distinct live ads, or it is refused.

Then `GenerationService.swap_generator` makes it the model of the next batch. A refused version is logged
once with the reason (`adgen_model_reloads_total{outcome="refused"}`) and the current one keeps serving; the
reloader tries again only when the pointer moves (a new publish, `adgen model use`, `adgen model rollback`).
`adgen_model_version{version}` is 1 for the version being served, under the name every list it generates
carries in Redis (`UserAds.model_version`: the registry version and a digest of its weights, e.g. v0002-3f2a9c01b7d4).
The polling, refusing and swapping are `RegistryFollower`'s (processors/registry_follower.py, shared with the
CI model's reloader); this module holds what is LEADRE's: the checks and the generator swap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adgen.core.catalogue import UserProfile
from adgen.model.registry import ModelRegistry
from adgen.processors.ad_indexer import LiveAdIndex
from adgen.processors.generation import GenerationService, Generator, LeadreGenerator
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.registry_follower import RegistryFollower, VersionRefused
from adgen.processors.window_state import UserWindow, WindowEntry

GeneratorLoader = Callable[[Path], Generator]


class ModelRefused(VersionRefused):
    """A version the live index cannot be served with (the message says why)."""


def probe_window(live: LiveAdIndex) -> UserWindow:
    """A one-click window on a live ad: enough to show a loaded model decodes valid lists here."""
    view = live.view
    ad = next(iter(view.leaf_items), None)  # any live ad: leaf 0 may belong to a deleted one
    if ad is None:
        raise ModelRefused("the live index holds no ad to probe the model with")
    item = view.items.get(ad)
    entry = WindowEntry(1.0, "probe", "ad_click", ad, item.title if item else "", "")
    return UserWindow(user_id="probe", events=[entry], profile=UserProfile(), newest_ts=1.0, last_request_ts=2.0)


def check_compatible(generator: Generator, registry: ModelRegistry, version: str, live: LiveAdIndex) -> None:
    """Raise ModelRefused unless `generator` (loaded from `version`) can serve the live index (checks 2-5)."""
    try:
        offset = generator.token_offset(live.sid_vocabulary)
    except ValueError as exc:
        raise ModelRefused(f"its tokenizer lacks the live index's S-ID vocabulary: {exc}") from exc
    if offset != live.token_offset:
        raise ModelRefused(
            f"its tokenizer puts the S-ID tokens at id {offset}, the live trie was built for id {live.token_offset}"
        )
    info = registry.info(version)
    if info.index is not None and info.index.rqvae_version != live.ad_index.model_version:
        raise ModelRefused(
            f"it was trained against the RQ-VAE {info.index.rqvae_version}, the live index codes ads with "
            f"{live.ad_index.model_version}: its S-IDs would name other ads"
        )
    if isinstance(generator, LeadreGenerator):
        found: object = generator.backend  # the torch backend's model config; other backends skip this check
        for name in ("search", "runner", "model", "config"):
            found = getattr(found, name, None)
        positions = getattr(found, "max_position_embeddings", None)
        depth = len(live.ad_index.sid_map.codebook_sizes)
        if positions is not None and generator.options.max_prompt_tokens + depth > positions:
            raise ModelRefused(
                f"its recipe's prompts ({generator.options.max_prompt_tokens} tokens) plus an S-ID ({depth}) exceed "
                f"the model's {positions} positions"
            )
    view = live.view
    if view.trie is None:
        return  # no live ad to decode against yet: checks 1-4 must do
    (ads,) = generator.generate([probe_window(live)], view)
    ids = [a.ad_id for a in ads]
    if not ids or len(set(ids)) != len(ids) or not set(ids) <= view.live:
        raise ModelRefused(f"its probe list is not distinct live ads: {ids[:5]}")


class ModelReloader(RegistryFollower):
    """Follows the registry's pointer; loads, checks and swaps in new LEADRE versions (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        serving: str,
        generation: GenerationService,
        live: LiveAdIndex,
        load: GeneratorLoader,
        metrics: WorkerMetrics,
        interval_s: float,
    ) -> None:
        label = generation.generator.model_version
        super().__init__(registry, serving, label, metrics.model_version, metrics.model_reloads, interval_s)
        self.generation = generation
        self.live = live
        self.load = load

    def load_checked(self, version: str, path: Path) -> Generator:
        generator = self.load(path)
        check_compatible(generator, self.registry, version, self.live)
        return generator

    def swap(self, loaded: Generator) -> str:
        self.generation.swap_generator(loaded)
        return loaded.model_version
