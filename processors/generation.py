"""Generation: ad request -> priority group + budget + debounce -> batched decode -> top-K ads in Redis.

The behaviour-window agent hands every changed window here (`observe`); a window with a newer ad request
joins the priority queue (one entry per user, ARPU group decides the order). A single loop drains the
queue: it waits up to the batch deadline to fill a batch, takes as many users as the budget pays for (the
worker's own token bucket, or the one every worker shares through Redis: processors/shared_budget.py),
drops the ones the debounce rejects (nothing changed, too soon, already served) without charging them,
builds prompts from the windows, decodes the batch in a worker thread against one index view, and writes
the lists to Redis with the request's event time as the guard version.

The generator is read once per batch, so `swap_generator` (the model reloader, processors/model_reload.py)
takes effect between batches: a batch is decoded, and its lists labelled, by exactly one model version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from adgen.core.checksums import weights_label
from adgen.core.clock import utc_now
from adgen.core.config import BudgetSettings, ModelSettings, WindowSettings
from adgen.model.ad_head import AdPrior
from adgen.model.baselines import ad_ids
from adgen.model.pool_priors import PoolPrior, PopularityPrior, combine
from adgen.processors.ad_indexer import IndexView, LiveAdIndex
from adgen.processors.feature_store import FeatureStore, GeneratedAd, UserAds
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.scheduler import (
    ArpuGroups,
    ArpuReservoir,
    FixedGroups,
    GenerationQueue,
    GenerationScheduler,
    LastGeneration,
    PendingRequest,
    TokenBucket,
    debounce,
)
from adgen.processors.shared_budget import Budget, LocalBudget
from adgen.processors.window_state import NO_TIME, UserWindow
from adgen.processors.worker_parts import Component

if TYPE_CHECKING:
    from adgen.model.prompts import PromptOptions
    from adgen.model.recipe import ServingRecipe

log = logging.getLogger(__name__)
#: LEADRE's beam width for a checkpoint whose recipe records none (and no ADGEN_MODEL__BEAMS).
DEFAULT_BEAMS = 20


class Generator(Protocol):
    """Turns windows into ranked ads against one index view (the LEADRE model, or anything with this shape)."""

    model_version: str

    def token_offset(self, sid_vocabulary: Sequence[str]) -> int: ...

    def generate(self, windows: Sequence[UserWindow], view: IndexView) -> list[list[GeneratedAd]]: ...


class LeadreGenerator:
    """Prompt builder + trie-constrained beam search over a checkpoint dir (`lm/` + `tokenizer/`, or both in one),
    on the decoder backend `model.backend` names."""

    def __init__(self, checkpoint: Path, model: ModelSettings, window: WindowSettings) -> None:
        from adgen.model.backends import load_backend
        from adgen.model.checkpoint_layout import CheckpointLayout
        from adgen.model.recipe import ServingRecipe, load_recipe
        from adgen.model.tokenizer import load_tokenizer

        checkpoint = Path(checkpoint)
        layout = CheckpointLayout.of(checkpoint)
        self.checkpoint = checkpoint
        self.tokenizer = load_tokenizer(layout.tokenizer_dir)
        self.backend = load_backend(model, layout.lm_dir)  # ADGEN_MODEL__BACKEND: torch (default) or tensorrt_llm
        # prompts are built and scored the way this checkpoint was trained (model/recipe.py); the window settings
        # bound what the prompt may hold (never more behaviours or a longer prompt than the worker keeps/allows)
        self.recipe = load_recipe(layout.recipe_dir) if layout.recipe_dir is not None else ServingRecipe()
        self.options = serving_options(self.recipe, layout.recipe_dir is not None, model, window)
        #: ads with their own ad-ID token in this checkpoint; ads added since training are written as <ad_unk>
        self.ad_vocabulary = self.recipe.ad_vocabulary
        self.ad_tokens = None  # built once: a recipe/tokenizer mismatch is refused at start-up, not per request
        if self.options.ad_id_tokens:
            from adgen.model.ad_tokens import AdTokens

            self.ad_tokens = AdTokens(self.tokenizer, self.ad_vocabulary)
        if self.recipe.ad_prior_weight > 0 and self.ad_tokens is None:
            raise ValueError(f"{layout.recipe_dir}: the recipe's ad_prior_weight needs prompts.ad_id_tokens")
        self._prior: tuple[str, PoolPrior | None] | None = None  # the pool priors of the last index version decoded
        # the evaluated width unless ADGEN_MODEL__BEAMS says otherwise: the pool priors re-rank the beam's ads
        self.k = model.top_k
        self.beams = max(model.beams or self.recipe.beams or DEFAULT_BEAMS, model.top_k)
        if (self.recipe.popularity or self.recipe.transitions) and (self.recipe.beams or 0) > self.beams:
            log.warning(
                "%s was evaluated with a %d-wide beam, whose finished ads its pool priors re-rank; this worker "
                "decodes %d-wide (ADGEN_MODEL__BEAMS), so it serves other lists than were evaluated",
                checkpoint,
                self.recipe.beams,
                self.beams,
            )
        transitions = self.recipe.transitions
        self._transitions = transitions.counts() if transitions is not None else None
        self.model_version = weights_label(checkpoint.name, layout.lm_dir.glob("*.safetensors"))

    def token_offset(self, sid_vocabulary: Sequence[str]) -> int:
        from adgen.model.tokenizer import token_offset

        return token_offset(self.tokenizer, sid_vocabulary)

    def generate(self, windows: Sequence[UserWindow], view: IndexView) -> list[list[GeneratedAd]]:
        from adgen.model.prompts import PromptBuilder

        if view.trie is None:
            return [[] for _ in windows]
        builder = PromptBuilder(
            self.tokenizer,
            view.items,
            view.sids.__getitem__,
            options=self.options,
            ad_vocabulary=self.ad_tokens or self.ad_vocabulary,
        )
        prompts, recents = [], []
        for w in windows:
            history = w.to_history()
            # behaviour on ads this index never saw has no S-ID to show: leave it out of the prompt
            events = [e for e in history.events if not e.kind.startswith("ad_") or e.ref in view.sids]
            now = w.last_request_ts if w.last_request_ts > NO_TIME else None
            prompts.append(builder.user_prompt(events, history.profile, now=now).ids)
            recents.append(ad_ids(history.events))  # the transition prior reads every recent ad, as evaluated
        k = min(self.k, len(view.leaf_items))
        results = self.backend.generate(
            prompts,
            view.trie,
            k=k,
            beams=max(self.beams, k),
            renormalize=self.recipe.renormalize,
            ad_prior=combine([self._ad_prior(view), self._transition_prior(recents, view)]),
        )
        return [
            [
                GeneratedAd(ad_id=view.leaf_items[leaf], sid=list(view.sids[view.leaf_items[leaf]]), score=s)
                for leaf, s in r
            ]
            for r in results
        ]

    def _ad_prior(self, view: IndexView) -> PoolPrior | None:
        """The recipe's pool priors (next-ad head, popularity) over this index version's leaves, rebuilt only when
        the version changes; an ad added after training has no ad-ID token and a count of 0."""
        head = self.recipe.ad_prior_weight > 0 and self.ad_tokens is not None
        popularity = self.recipe.popularity
        if not head and popularity is None:
            return None
        if self._prior is None or self._prior[0] != view.version:
            leaves = view.leaf_items
            pairs = (
                list((leaves.leaf_of(a), a) for a in leaves) if hasattr(leaves, "leaf_of") else list(enumerate(leaves))
            )
            priors: list[PoolPrior | None] = [
                AdPrior.build(pairs, self.ad_tokens, self.recipe.ad_prior_weight) if head and self.ad_tokens else None,
                PopularityPrior.build(pairs, popularity.counts, popularity.weight) if popularity else None,
            ]
            self._prior = (view.version, combine(priors))
        return self._prior[1]

    def _transition_prior(self, recents: Sequence[Sequence[str]], view: IndexView) -> PoolPrior | None:
        """The recipe's transition prior, one row per window from its own recent ads (None when the recipe has none)."""
        if self._transitions is None or self.recipe.transitions is None:
            return None
        leaves = view.leaf_items
        value_of = leaves.leaf_values if hasattr(leaves, "leaf_values") else {a: v for v, a in enumerate(leaves)}
        return self._transitions.prior(value_of, recents, self.recipe.transitions.weight)


def serving_options(
    recipe: ServingRecipe, has_recipe: bool, model: ModelSettings, window: WindowSettings
) -> PromptOptions:
    """The checkpoint's trained prompt options, bounded by what the worker keeps (window) and allows (model)."""
    trained = recipe.prompts
    if not has_recipe:  # a checkpoint from before recipes: the settings' budget, as then
        trained = trained.model_copy(update={"max_prompt_tokens": model.max_prompt_tokens})
    return trained.model_copy(
        update={
            "max_prompt_tokens": min(model.max_prompt_tokens, trained.max_prompt_tokens),
            "max_events": min(window.max_events, trained.max_events),
            "window_days": float(window.days)
            if trained.window_days is None
            else min(float(window.days), trained.window_days),
        }
    )


class GenerationService(Component):
    """The generation component: owns the queue, the budget and the decode loop; the behaviour-window
    component hands it changed windows through `observe`."""

    def __init__(
        self,
        budget: BudgetSettings,
        live: LiveAdIndex,
        generator: Generator,
        store: FeatureStore,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        shared: Budget | None = None,
    ) -> None:
        """`shared`: the budget every worker shares (processors/shared_budget.py); None = this worker's own."""
        super().__init__()
        self.budget = budget
        self.live = live
        self.generator = generator
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.reservoir: ArpuReservoir | FixedGroups
        if budget.arpu_edges is not None or shared is not None:  # groups must mean the same on every worker
            edges = budget.arpu_edges
            self.reservoir = FixedGroups(
                ArpuGroups(edges) if edges is not None else ArpuGroups.log_spaced(budget.user_groups)
            )
        else:
            self.reservoir = ArpuReservoir(budget.user_groups, seed=seed)
        self.scheduler = GenerationScheduler(
            GenerationQueue(budget.user_groups, budget.queue_capacity),
            TokenBucket(budget.generations_per_second, budget.burst, clock()),
        )
        self.allowance: Budget = shared or LocalBudget(self.scheduler.bucket, self.scheduler.served_by_group)
        self._windows: dict[str, UserWindow] = {}
        self._received: dict[str, float] = {}
        self._first_pending_at: float | None = None
        self._wake = asyncio.Event()
        # every decode on one thread: one OpenMP team and one malloc arena (model/allocator.py) are reused
        # instead of a fresh pair per pooled thread, and the prefix cache is only ever touched from there
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adgen-decode")
        self.generated_users = 0

    # ---- intake (window agent) -----------------------------------------------------------------------

    def observe(self, updates: Sequence[tuple[UserWindow, bool]]) -> None:
        """Refresh pending users' windows; queue users with a newer request."""
        now = self.clock()
        for window, new_request in updates:
            user = window.user_id
            if user in self._windows:
                self._windows[user] = window
            if not new_request or window.last_request_ts <= NO_TIME:
                continue
            self.reservoir.observe(window.profile.arpu)
            group = self.reservoir.groups.group_of(window.profile.arpu)
            self._windows[user] = window
            self._received.setdefault(user, now)
            dropped = self.scheduler.offer(PendingRequest(user, group, window.last_request_ts, window.last_request_id))
            if dropped is not None:
                self.metrics.dropped.labels(str(dropped.group)).inc()
                self._windows.pop(dropped.user_id, None)
                self._received.pop(dropped.user_id, None)
            if self._first_pending_at is None:
                self._first_pending_at = now
        self._update_depth()
        self._wake.set()

    def swap_generator(self, generator: Generator) -> None:
        """Serve `generator` from the next batch on (the batch being decoded finishes with the old one)."""
        self.generator = generator

    def _update_depth(self) -> None:
        self.metrics.queue_depth.set(len(self.scheduler.queue))
        for group, depth in enumerate(self.scheduler.queue.depth_by_group()):
            self.metrics.queue_depth_by_group.labels(str(group)).set(depth)

    # ---- the loop -------------------------------------------------------------------------------------

    @Component.task
    async def _generate(self) -> None:
        await self.run(lambda: self.should_stop)

    async def on_shutdown(self) -> None:
        self._decoder.shutdown(wait=False)

    async def run(self, should_stop: Callable[[], bool]) -> None:
        deadline_s = self.budget.batch_deadline_ms / 1000
        while not should_stop():
            now = self.clock()
            queued = len(self.scheduler.queue)
            self.metrics.budget_tokens.set(self.allowance.tokens(now))
            if not queued:
                self._first_pending_at = None
                self._wake.clear()
                await self.allowance.idle()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                continue
            if self.live.view.trie is None:
                await asyncio.sleep(0.2)  # no live ad yet: the index is still catching up
                continue
            wait = self.allowance.wait_time(now)
            first = self._first_pending_at if self._first_pending_at is not None else now
            if queued < self.budget.batch_size and now - first < deadline_s:
                wait = max(wait, deadline_s - (now - first))
            if wait > 0:
                await asyncio.sleep(min(wait, 0.5))
                continue
            await self.step(now)

    async def step(self, now: float) -> int:
        """One batch: take what the budget allows, debounce, decode, publish. Returns users generated."""
        generator = self.generator  # one model version per batch, whatever a reload swaps in meanwhile
        groups = self.scheduler.queue.peek_groups(self.budget.batch_size)
        if not groups:
            return 0
        grant = await self.allowance.acquire(groups, now)
        candidates = self.scheduler.queue.pop(grant.granted)
        self._first_pending_at = self.clock() if len(self.scheduler.queue) else None
        if not candidates:
            await self.allowance.settle(grant, [], now)
            return 0
        view = self.live.view
        published = await self.store.user_ads([c.user_id for c in candidates])
        chosen: list[tuple[PendingRequest, UserWindow]] = []
        for c in candidates:
            window = self._windows.pop(c.user_id, None)
            if window is None:
                continue
            last = published[c.user_id]
            decision = debounce(
                window.last_request_ts,
                window.fingerprint,
                LastGeneration(request_ts=last.request_time.timestamp(), fingerprint=last.window_fingerprint)
                if last
                else None,
                self.budget.min_regen_interval_s,
                list_has_dead_ads=bool(last) and any(a.ad_id not in view.live for a in last.ads),
            )
            if decision.generate:
                chosen.append((c, window))
            else:
                self.metrics.skipped.labels(decision.value).inc()
                self._received.pop(c.user_id, None)
        self._update_depth()
        await self.allowance.settle(grant, [c.group for c, _ in chosen], now)
        if not chosen:
            return 0
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        lists = await loop.run_in_executor(self._decoder, generator.generate, [w for _, w in chosen], view)
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        generated_at = utc_now()
        records = [
            UserAds(
                user_id=w.user_id,
                ads=ads,
                model_version=generator.model_version,
                index_version=view.version,
                index_watermark=view.watermark,
                request_time=datetime.fromtimestamp(w.last_request_ts, UTC),
                window_fingerprint=w.fingerprint,
                priority_group=c.group,
                generated_at=generated_at,
            )
            for (c, w), ads in zip(chosen, lists, strict=True)
        ]
        await self.store.write_user_ads(records)
        done = self.clock()
        for c, _ in chosen:
            self.metrics.generations.labels(str(c.group)).inc()
            received = self._received.pop(c.user_id, None)
            if received is not None:
                self.metrics.request_latency.observe(done - received)
        self.generated_users += len(chosen)
        return len(chosen)


def set_torch_threads(n: int = 2) -> None:
    """The machine is shared: never more than two intra-op threads for decoding."""
    torch.set_num_threads(max(1, min(n, torch.get_num_threads())))


def write_untrained_checkpoint(
    directory: Path, sid_vocabulary: Sequence[str], corpus: Sequence[str], seed: int = 0
) -> Path:
    """A randomly initialised small LM + a tokenizer holding this index's S-ID tokens, in the worker's layout.

    For smoke tests and benchmarks before `adgen train` has produced a model: its lists are valid ads
    (the trie guarantees that) but meaningless, and it must never be presented as a trained result.
    """
    from adgen.model.lm import LMConfig, build_lm, save_lm
    from adgen.model.prompts import fixed_texts
    from adgen.model.tokenizer import build_tokenizer, save_tokenizer

    directory = Path(directory)
    tokenizer = build_tokenizer([*fixed_texts(), *corpus], extra_tokens=list(sid_vocabulary), vocab_size=512)
    config = LMConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=2, seed=seed)
    save_lm(build_lm(config), directory / "lm")
    save_tokenizer(tokenizer, directory / "tokenizer")
    (directory / "UNTRAINED").write_text("random initialisation: valid but meaningless ad lists\n")
    return directory
