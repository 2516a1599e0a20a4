"""Generation service on a real redis-server and the real decoder (tiny random-init model: valid ads,
meaningless order): priority under a tight budget, debounce, deleted ads, guarded publishing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from adgen.core.catalogue import Item
from adgen.core.config import BudgetSettings, ModelSettings, RedisSettings, WindowSettings
from adgen.index.semantic_ids import SemanticIdMap, sid_vocabulary
from adgen.model.backends import BackendUnavailable
from adgen.processors.ad_indexer import IndexView
from adgen.processors.feature_store import FeatureStore
from adgen.processors.generation import GenerationService, LeadreGenerator, write_untrained_checkpoint
from adgen.processors.metrics import WorkerMetrics
from adgen.processors.window_state import UserWindow, WindowLimits, apply_events
from adgen.runtime import RedisServer
from adgen.streams.events import AdClick, AdRequest, ContentComplete, ProfileUpdate

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, tzinfo=UTC)
SIZES = (8, 8, 4)
ADS = [f"ad{i:02d}" for i in range(40)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Live:
    def __init__(self, view: IndexView) -> None:
        self.view = view


def make_view(sid_map: SemanticIdMap, offset: int, version: str) -> IndexView:
    trie, leaf_items = sid_map.trie_arrays(offset)
    items = {a: Item(item_id=a, title=f"product {a}", categories=(f"Cat{int(a[2:]) % 4}",)) for a in ADS}
    return IndexView(version, trie, tuple(leaf_items), {a: SIDS[a] for a in ADS}, items, frozenset(leaf_items), T0)


SIDS: dict[str, tuple[int, ...]] = {}


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> LeadreGenerator:
    root = tmp_path_factory.mktemp("gen")
    corpus = [f"product {a} Cat{i % 4}" for i, a in enumerate(ADS)] * 3
    ckpt = write_untrained_checkpoint(root / "ckpt", sid_vocabulary(fresh_sid_map().codebook_sizes), corpus)
    return LeadreGenerator(ckpt, ModelSettings(top_k=5, beams=5), WindowSettings())


def fresh_sid_map() -> SemanticIdMap:
    """A fresh map per test (tests mutate it), same codes every time."""
    codes = np.random.default_rng(0).integers(0, 8, size=(len(ADS), 2))
    sid_map = SemanticIdMap.build(ADS, codes, SIZES)
    SIDS.update({a: sid_map.sid_of(a) for a in ADS})
    return sid_map


@pytest.fixture
def redis_settings(tmp_path: Path) -> Iterator[RedisSettings]:
    with RedisServer(tmp_path / "redis") as srv:
        yield RedisSettings(url=srv.url, env="test")


def window(user: str, arpu: float, request_minutes: float, extra: int = 0) -> UserWindow:
    events: list = [ProfileUpdate(event_id=f"{user}-p", event_time=T0, user_id=user, age=30, arpu=arpu)]
    for j in range(4 + extra):
        at = T0 + timedelta(minutes=j + 1)
        events.append(AdClick(event_id=f"{user}-c{j}", event_time=at, user_id=user, ad_id=ADS[(j * 3) % len(ADS)]))
        events.append(
            ContentComplete(event_id=f"{user}-v{j}", event_time=at, user_id=user, content_id=f"v{j}", category="Cat1")
        )
    events.append(
        AdRequest(
            event_id=f"{user}-r{request_minutes}", event_time=T0 + timedelta(minutes=request_minutes), user_id=user
        )
    )
    return apply_events(UserWindow(user_id=user), events, WindowLimits())


def service_for(generator, redis_settings, view, budget: BudgetSettings, clock: Clock) -> GenerationService:
    return GenerationService(budget, Live(view), generator, FeatureStore(redis_settings), WorkerMetrics(), clock=clock)


def test_high_value_users_are_served_first_within_the_budget(generator, redis_settings) -> None:
    sid_map = fresh_sid_map()
    view = make_view(sid_map, generator.token_offset(sid_vocabulary(SIZES)), "v1")
    clock = Clock()
    budget = BudgetSettings(user_groups=25, generations_per_second=2, burst=2, batch_size=4, min_regen_interval_s=0)
    arpus = [0.2, 500.0, 3.0, 40.0, 0.9, 120.0, 8.0, 15.0]

    async def go() -> list[list[str]]:
        service = service_for(generator, redis_settings, view, budget, clock)
        service.observe([(window(f"u{i}", a, 100), True) for i, a in enumerate(arpus)])
        rounds = []
        while len(service.scheduler.queue):
            before = set(service.scheduler.queue._where)
            assert await service.step(clock()) <= 2  # never more than the budget allows
            rounds.append(sorted(before - set(service.scheduler.queue._where)))
            clock.now += 1.0
        lists = await service.store.user_ads([f"u{i}" for i in range(len(arpus))])
        assert all(v is not None and len(v.ads) == 5 for v in lists.values())
        by_arpu = sorted(range(len(arpus)), key=lambda i: arpus[i])
        groups = [lists[f"u{i}"].priority_group for i in by_arpu]
        assert groups == sorted(groups) and groups[0] < groups[-1]  # the published group follows ARPU
        await service.store.close()
        return rounds

    rounds = asyncio.run(go())
    by_value = [f"u{i}" for i in sorted(range(len(arpus)), key=lambda i: -arpus[i])]
    assert rounds == [sorted(by_value[i : i + 2]) for i in range(0, len(arpus), 2)]


def test_unchanged_window_is_not_regenerated_but_a_changed_one_is(generator, redis_settings) -> None:
    view = make_view(fresh_sid_map(), generator.token_offset(sid_vocabulary(SIZES)), "v1")
    clock = Clock()
    budget = BudgetSettings(generations_per_second=100, burst=100, min_regen_interval_s=0)

    async def go() -> None:
        service = service_for(generator, redis_settings, view, budget, clock)
        service.observe([(window("u1", 5.0, 100), True)])
        assert await service.step(clock()) == 1
        first = (await service.store.user_ads(["u1"]))["u1"]
        service.observe([(window("u1", 5.0, 200), True)])  # newer request, same behaviour
        assert await service.step(clock()) == 0
        service.observe([(window("u1", 5.0, 300, extra=1), True)])  # one more click since
        assert await service.step(clock()) == 1
        second = (await service.store.user_ads(["u1"]))["u1"]
        assert second.request_time > first.request_time and second.window_fingerprint != first.window_fingerprint
        await service.store.close()

    asyncio.run(go())


def test_a_list_holding_a_deleted_ad_is_regenerated_without_it(generator, redis_settings) -> None:
    sid_map = fresh_sid_map()
    offset = generator.token_offset(sid_vocabulary(SIZES))
    live = Live(make_view(sid_map, offset, "v1"))
    clock = Clock()
    budget = BudgetSettings(generations_per_second=100, burst=100, min_regen_interval_s=10**6)

    async def go() -> None:
        service = GenerationService(budget, live, generator, FeatureStore(redis_settings), WorkerMetrics(), clock=clock)
        service.observe([(window("u1", 5.0, 100), True)])
        await service.step(clock())
        first = (await service.store.user_ads(["u1"]))["u1"]
        victim = first.ads[0].ad_id
        sid_map.remove(victim)
        live.view = make_view(sid_map, offset, "v2")
        service.observe([(window("u1", 5.0, 101), True)])  # unchanged window, well within the interval
        assert await service.step(clock()) == 1
        second = (await service.store.user_ads(["u1"]))["u1"]
        assert victim not in {a.ad_id for a in second.ads} and second.index_version == "v2"
        assert all(a.ad_id in live.view.live and tuple(a.sid) == SIDS[a.ad_id] for a in second.ads)
        await service.store.close()

    asyncio.run(go())


def test_the_prefix_cache_budget_comes_from_settings_and_zero_turns_it_off(tmp_path: Path) -> None:
    ckpt = write_untrained_checkpoint(tmp_path / "ckpt", sid_vocabulary(fresh_sid_map().codebook_sizes), ["an ad"])
    bounded = LeadreGenerator(ckpt, ModelSettings(prefix_cache_mb=8), WindowSettings())
    assert (
        bounded.backend.search.prefix_cache is not None and bounded.backend.search.prefix_cache.max_bytes == 8 * 2**20
    )
    unbounded = LeadreGenerator(ckpt, ModelSettings(prefix_cache_mb=0), WindowSettings())
    assert unbounded.backend.search.prefix_cache is None


def test_model_backend_setting_selects_the_generators_decoder(tmp_path: Path) -> None:
    """`model.backend` is not decoration: torch builds the torch decoder, tensorrt_llm is really attempted
    (and, without a GPU, refused with a reason instead of silently falling back to torch)."""
    ckpt = write_untrained_checkpoint(tmp_path / "ckpt", sid_vocabulary(fresh_sid_map().codebook_sizes), ["an ad"])
    assert LeadreGenerator(ckpt, ModelSettings(backend="torch"), WindowSettings()).backend.name == "torch"
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/test_backends.py runs the real TensorRT-LLM comparison")
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU"):
        LeadreGenerator(ckpt, ModelSettings(backend="tensorrt_llm"), WindowSettings())


def test_the_generator_builds_prompts_and_scores_the_way_its_checkpoint_was_trained(tmp_path: Path) -> None:
    """A checkpoint trained on the sequence layout with trie scoring is served with that layout and scoring: the
    generator's lists equal a direct renormalised search over the very prompt training would have built."""
    from adgen.model.decoding import ConstrainedBeamSearch
    from adgen.model.prompts import PromptBuilder, PromptOptions
    from adgen.model.recipe import ServingRecipe, save_recipe

    sid_map = fresh_sid_map()
    ckpt = write_untrained_checkpoint(tmp_path / "ckpt", sid_vocabulary(sid_map.codebook_sizes), ["product ad"])
    trained = PromptOptions(layout="sequence", ad_text="title", show_time=True, max_prompt_tokens=300)
    save_recipe(ServingRecipe(prompts=trained, scoring="trie"), ckpt)
    gen = LeadreGenerator(ckpt, ModelSettings(top_k=5, beams=5), WindowSettings())
    assert gen.options.layout == "sequence" and gen.options.ad_text == "title" and gen.recipe.renormalize
    view = make_view(sid_map, gen.token_offset(sid_vocabulary(sid_map.codebook_sizes)), "v1")
    w = window("u1", arpu=5.0, request_minutes=30)
    got = gen.generate([w], view)[0]

    history = w.to_history()
    builder = PromptBuilder(gen.tokenizer, view.items, view.sids.__getitem__, options=gen.options)
    prompt = builder.user_prompt(history.events, history.profile, now=w.last_request_ts).ids
    assert "click^" in gen.tokenizer.decode(prompt[-4:])  # ends in the cue the sequence layout trains on
    search = ConstrainedBeamSearch(gen.backend.search.runner.model)
    expected = search.generate([prompt], view.trie, k=5, beams=5, renormalize=True)[0]
    assert [(view.leaf_items[v], round(s, 5)) for v, s in expected] == [(g.ad_id, round(g.score, 5)) for g in got]
    plain = search.generate([prompt], view.trie, k=5, beams=5)[0]
    assert [round(s, 5) for _, s in plain] != [round(g.score, 5) for g in got]  # the scoring really differs


def serve_with_ad_tokens(
    tmp_path: Path, beams: int, ad_prior_weight: float = 0.0, popularity=None, transitions=None
) -> tuple[LeadreGenerator, IndexView, UserWindow, list[str], list[int], list]:
    """An untrained checkpoint whose recipe knows every other ad (the rest stand for ads added after training),
    served by a LeadreGenerator: (generator, view, window, known ads, the prompt training would build, its list)."""
    from adgen.model.ad_tokens import ad_token_names
    from adgen.model.prompts import PromptBuilder, PromptOptions
    from adgen.model.recipe import ServingRecipe, save_recipe

    sid_map = fresh_sid_map()
    known = list(ADS[::2])
    vocab = [*sid_vocabulary(sid_map.codebook_sizes), *ad_token_names(len(known))]
    ckpt = write_untrained_checkpoint(tmp_path / "ckpt", vocab, ["product ad"])
    trained = PromptOptions(layout="sequence", ad_text="none", ad_id_tokens=True, max_prompt_tokens=300)
    recipe = ServingRecipe(
        prompts=trained,
        scoring="trie",
        ad_vocabulary=known,
        ad_prior_weight=ad_prior_weight,
        popularity=popularity,
        transitions=transitions,
    )
    save_recipe(recipe, ckpt)
    gen = LeadreGenerator(ckpt, ModelSettings(top_k=5, beams=beams), WindowSettings())
    view = make_view(sid_map, gen.token_offset(sid_vocabulary(sid_map.codebook_sizes)), "v1")
    w = window("u1", arpu=5.0, request_minutes=30)
    got = gen.generate([w], view)[0]
    history = w.to_history()
    builder = PromptBuilder(gen.tokenizer, view.items, view.sids.__getitem__, options=gen.options, ad_vocabulary=known)
    prompt = builder.user_prompt(history.events, history.profile, now=w.last_request_ts).ids
    return gen, view, w, known, prompt, got


def test_a_checkpoint_with_ad_id_tokens_is_served_with_them_and_unknown_ads_as_ad_unk(tmp_path: Path) -> None:
    """The recipe's ad vocabulary reaches the worker's prompts: ads the checkpoint knows are written with their own
    token, ads added since training with <ad_unk>; the lists are a search over exactly that prompt."""
    from adgen.model.ad_tokens import AD_UNK_TOKEN, AdTokens
    from adgen.model.decoding import ConstrainedBeamSearch

    gen, view, w, known, prompt, got = serve_with_ad_tokens(tmp_path, beams=5)
    history = w.to_history()
    tokens = AdTokens(gen.tokenizer, known)
    clicked = {e.ref for e in history.events if e.kind == "ad_click"}
    assert clicked & set(known) and clicked - set(known)  # the window holds both kinds of ad
    for ad in clicked:
        token = tokens.id_of(ad)
        assert token in prompt
        assert (gen.tokenizer.convert_ids_to_tokens(token) == AD_UNK_TOKEN) == (ad not in known)
    search = ConstrainedBeamSearch(gen.backend.search.runner.model)
    expected = search.generate([prompt], view.trie, k=5, beams=5, renormalize=True)[0]
    assert [(view.leaf_items[v], round(s, 5)) for v, s in expected] == [(g.ad_id, round(g.score, 5)) for g in got]


def test_a_recipe_naming_ad_tokens_its_tokenizer_lacks_is_refused_at_start_up(tmp_path: Path) -> None:
    from adgen.model.prompts import PromptOptions
    from adgen.model.recipe import ServingRecipe, save_recipe

    sid_map = fresh_sid_map()
    ckpt = write_untrained_checkpoint(tmp_path / "ckpt", sid_vocabulary(sid_map.codebook_sizes), ["product ad"])
    options = PromptOptions(layout="sequence", ad_id_tokens=True, max_prompt_tokens=300)
    save_recipe(ServingRecipe(prompts=options, scoring="trie", ad_vocabulary=list(ADS)), ckpt)
    with pytest.raises(ValueError, match="ad tokens"):
        LeadreGenerator(ckpt, ModelSettings(top_k=5, beams=5), WindowSettings())


def test_a_recipe_with_a_next_ad_prior_is_served_with_it(tmp_path: Path) -> None:
    """The recipe's ad_prior_weight reaches the worker: its lists are the direct search re-ranked by the next-ad
    prior over this index version's leaves (known ads by their token, new ads neutral), and differ from plain S-ID
    scores."""
    from adgen.model.ad_head import AdPrior
    from adgen.model.ad_tokens import AdTokens
    from adgen.model.decoding import ConstrainedBeamSearch

    gen, view, _, known, prompt, got = serve_with_ad_tokens(tmp_path, beams=10, ad_prior_weight=3.0)
    search = ConstrainedBeamSearch(gen.backend.search.runner.model)
    prior = AdPrior.build(enumerate(view.leaf_items), AdTokens(gen.tokenizer, known), 3.0)
    expected = search.generate([prompt], view.trie, k=5, beams=10, renormalize=True, ad_prior=prior)[0]
    assert [(view.leaf_items[v], round(s, 4)) for v, s in expected] == [(g.ad_id, round(g.score, 4)) for g in got]
    plain = search.generate([prompt], view.trie, k=5, beams=10, renormalize=True)[0]
    assert [round(s, 4) for _, s in plain] != [round(g.score, 4) for g in got]
    assert gen._ad_prior(view) is gen._ad_prior(view)  # built once per index version


def test_a_recipe_with_a_popularity_prior_is_served_with_it(tmp_path: Path) -> None:
    """The recipe's popularity prior reaches the worker: its lists are the direct search re-ranked by weight x
    log(1 + count) over this index version's leaves (ads without a count get none), and differ from plain scores."""
    from adgen.model.decoding import ConstrainedBeamSearch
    from adgen.model.pool_priors import PopularityPrior
    from adgen.model.recipe import PopularitySettings

    counts = {ad: 50 * (i % 3) for i, ad in enumerate(ADS)}
    settings = PopularitySettings(weight=2.0, counts=counts)
    gen, view, _, _, prompt, got = serve_with_ad_tokens(tmp_path, beams=10, popularity=settings)
    search = ConstrainedBeamSearch(gen.backend.search.runner.model)
    prior = PopularityPrior.build(enumerate(view.leaf_items), counts, 2.0)
    expected = search.generate([prompt], view.trie, k=5, beams=10, renormalize=True, ad_prior=prior)[0]
    assert [(view.leaf_items[v], round(s, 4)) for v, s in expected] == [(g.ad_id, round(g.score, 4)) for g in got]
    plain = search.generate([prompt], view.trie, k=5, beams=10, renormalize=True)[0]
    assert [v for v, _ in plain] != [v for v, _ in expected]


def test_a_recipe_with_a_transition_prior_is_served_with_it(tmp_path: Path) -> None:
    """The recipe's transition prior reaches the worker: the window's own recent ads pick its row, and the list is
    the direct search re-ranked by weight x log(1 + how often each ad followed them), unlike plain scores."""
    from adgen.model.baselines import ad_ids
    from adgen.model.decoding import ConstrainedBeamSearch
    from adgen.model.pool_priors import TransitionCounts
    from adgen.model.recipe import TransitionSettings

    events = window("u1", arpu=5.0, request_minutes=30).to_history().events  # the window serve_with_ad_tokens serves
    recent = ad_ids([e for e in events if e.ref in ADS or not e.kind.startswith("ad_")])
    assert recent  # the window holds ads the prior can read
    following = {recent[-1]: {ad: 30.0 for ad in ADS[3::4]}}  # what followed the window's last ad in "training"
    settings = TransitionSettings(weight=2.0, window=1, following=following)
    gen, view, _, _, prompt, got = serve_with_ad_tokens(tmp_path, beams=10, transitions=settings)
    search = ConstrainedBeamSearch(gen.backend.search.runner.model)
    value_of = {ad: v for v, ad in enumerate(view.leaf_items)}
    prior = TransitionCounts(1, following).prior(value_of, [recent], 2.0)
    expected = search.generate([prompt], view.trie, k=5, beams=10, renormalize=True, ad_prior=prior)[0]
    assert [(view.leaf_items[v], round(s, 4)) for v, s in expected] == [(g.ad_id, round(g.score, 4)) for g in got]
    plain = search.generate([prompt], view.trie, k=5, beams=10, renormalize=True)[0]
    assert [v for v, _ in plain] != [v for v, _ in expected]


def test_the_worker_decodes_as_wide_as_the_checkpoint_was_evaluated_unless_told_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ADGEN_MODEL__BEAMS unset: the recipe's eval.beams (its pool priors re-rank that beam's ads), 20 for a
    checkpoint whose recipe records none; set, it wins, and a narrower width than evaluated is logged."""
    from adgen.model.recipe import ServingRecipe, TransitionSettings, save_recipe
    from adgen.processors.generation import DEFAULT_BEAMS

    sid_map = fresh_sid_map()
    ckpt = write_untrained_checkpoint(tmp_path / "ckpt", sid_vocabulary(sid_map.codebook_sizes), ["product ad"])
    assert LeadreGenerator(ckpt, ModelSettings(top_k=5), WindowSettings()).beams == DEFAULT_BEAMS  # no recipe
    priors = TransitionSettings(weight=2.0, window=1, following={ADS[0]: {ADS[1]: 3.0}})
    save_recipe(ServingRecipe(beams=12, transitions=priors), ckpt)
    assert LeadreGenerator(ckpt, ModelSettings(top_k=5), WindowSettings()).beams == 12
    assert LeadreGenerator(ckpt, ModelSettings(top_k=15), WindowSettings()).beams == 15  # never below top_k
    assert "evaluated with a 12-wide beam" not in caplog.text
    assert LeadreGenerator(ckpt, ModelSettings(top_k=5, beams=8), WindowSettings()).beams == 8
    assert "evaluated with a 12-wide beam" in caplog.text
