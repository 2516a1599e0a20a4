"""Pool priors (model/pool_priors.py): the popularity prior's arithmetic, exactness in both beam-search loops,
and the recipe that carries it to serving."""

from __future__ import annotations

import math

import pytest
import torch

from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.pool_priors import PopularityPrior, SumPrior, TransitionCounts, ad_counts, combine
from adgen.model.recipe import PopularitySettings, ServingRecipe, TransitionSettings
from tests.test_ad_head import ITEMS, tiny_lm  # noqa: F401 (fixture)
from tests.test_decoding import PROMPTS, brute_force

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEG_INF = float("-inf")


def test_ad_counts_count_every_occurrence() -> None:
    assert ad_counts([["a", "b", "a"], ["b"], []]) == {"a": 2, "b": 2}


def test_popularity_adds_weight_times_log1p_count_and_keeps_empty_slots_empty() -> None:
    prior = PopularityPrior.build([(0, "a"), (1, "b"), (2, "new")], {"a": 9, "b": 0}, weight=0.5)
    scores = torch.tensor([[-1.0, -2.0, -3.0, NEG_INF]])
    values = torch.tensor([[0, 1, 2, -1]])
    got = prior.rescore(torch.zeros(1, 4), scores, values)
    assert torch.allclose(got[0, :3], torch.tensor([-1.0 + 0.5 * math.log(10), -2.0, -3.0]))
    assert got[0, 3] == NEG_INF


def test_a_prior_over_no_leaves_changes_nothing() -> None:
    prior = PopularityPrior.build([], {"a": 3}, weight=1.0)
    scores = torch.tensor([[-1.0, NEG_INF]])
    got = prior.rescore(torch.zeros(1, 2), scores, torch.tensor([[5, -1]]))
    assert got[0, 0] == -1.0 and got[0, 1] == NEG_INF


def test_combine_sums_priors_and_drops_absent_ones() -> None:
    a = PopularityPrior.build([(0, "a")], {"a": 3}, 1.0)
    b = PopularityPrior.build([(0, "a")], {"a": 3}, 2.0)
    assert combine([None, None]) is None and combine([a, None]) is a
    both = combine([a, b])
    assert isinstance(both, SumPrior)
    got = both.rescore(torch.zeros(1, 1), torch.tensor([[0.0]]), torch.tensor([[0]]))
    assert torch.allclose(got, torch.tensor([[3.0 * math.log(4)]]))


def _counts() -> dict[str, int]:
    return {f"a{v}": (v * 7) % 11 for v in range(len(ITEMS))}  # uneven, some zero


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_the_search_ranks_its_pool_by_s_id_score_plus_popularity(tiny_lm, weight) -> None:  # noqa: F811
    trie = TrieArrays.from_sequences(ITEMS, list(range(len(ITEMS))))
    prior = PopularityPrior.build(((v, f"a{v}") for v in range(len(ITEMS))), _counts(), weight)
    k = 5
    got = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS, trie, k=k, beams=len(ITEMS), ad_prior=prior)
    bonus = torch.tensor([weight * math.log1p(_counts()[f"a{v}"]) for v in range(len(ITEMS))])
    moved = 0
    for prompt, row in zip(PROMPTS, got, strict=True):
        sid = brute_force(tiny_lm, prompt, ITEMS)
        expected = (sid + bonus).topk(k)
        assert [v for v, _ in row] == expected.indices.tolist()
        assert torch.allclose(torch.tensor([s for _, s in row]), expected.values, atol=1e-4)
        moved += [v for v, _ in row] != sid.topk(k).indices.tolist()
    assert moved > 0  # the prior moves ads here: the check above is not vacuous


def test_the_request_level_loop_applies_the_same_prior(tiny_lm) -> None:  # noqa: F811
    """The loop the TensorRT-LLM backend runs (fed by a plain forward pass) re-ranks exactly as the torch decoder."""
    from adgen.model.backend_trtllm import RequestBeamSearch

    def next_logprobs(sequences: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([tiny_lm(torch.tensor([s])).logits[0, -1] for s in sequences])

    trie = TrieArrays.from_sequences(ITEMS, list(range(len(ITEMS))))
    prior = PopularityPrior.build(((v, f"a{v}") for v in range(len(ITEMS))), _counts(), 2.0)
    expected = ConstrainedBeamSearch(tiny_lm).generate(PROMPTS, trie, k=5, beams=8, ad_prior=prior)
    got = RequestBeamSearch(next_logprobs, tiny_lm.config.vocab_size).generate(
        PROMPTS, trie, k=5, beams=8, ad_prior=prior
    )
    assert [[v for v, _ in r] for r in got] == [[v for v, _ in r] for r in expected]


def test_the_recipe_carries_the_prior_and_refuses_a_non_positive_weight() -> None:
    recipe = ServingRecipe(popularity=PopularitySettings(weight=0.2, counts={"a": 3}))
    again = ServingRecipe.model_validate_json(recipe.model_dump_json())
    assert again.popularity is not None and again.popularity.counts == {"a": 3}
    assert ServingRecipe().popularity is None  # older recipes load without it
    with pytest.raises(ValueError, match="greater than 0"):
        PopularitySettings(weight=0.0, counts={})


def test_transition_counts_weight_each_later_ad_by_one_over_its_gap() -> None:
    counts = TransitionCounts.from_sequences([["a", "b", "c"], ["a", "c"]], window=2)
    assert counts.following["a"] == {"b": 1.0, "c": 0.5 + 1.0}
    assert counts.following["b"] == {"c": 1.0}
    assert "c" not in counts.following  # nothing followed it
    with pytest.raises(ValueError, match="window"):
        TransitionCounts.from_sequences([], window=0)


def test_transition_bonus_reads_the_last_window_ads_the_older_weighted_less() -> None:
    counts = TransitionCounts.from_sequences([["x", "a"], ["y", "a"], ["y", "b"], ["z", "c"]], window=2)
    # most recent "y" (1/1), then "x" (1/2); "z" is outside the window of 2
    assert counts.bonus(["z", "x", "y"]) == {"a": 1.0 + 0.5, "b": 1.0}
    assert counts.bonus([]) == {}


def test_transition_prior_adds_weight_times_log1p_bonus_row_by_row() -> None:
    counts = TransitionCounts.from_sequences([["a", "b"], ["a", "b"], ["b", "c"]], window=1)
    leaf_value = {"a": 0, "b": 1, "c": 2}
    prior = counts.prior(leaf_value, [["a"], ["b"]], weight=0.5)
    scores = torch.tensor([[-1.0, -2.0, NEG_INF], [-1.0, -2.0, -3.0]])
    values = torch.tensor([[1, 2, -1], [1, 2, 0]])
    got = prior.rescore(torch.zeros(2, 3), scores, values)
    expected = torch.tensor([[-1.0 + 0.5 * math.log(3), -2.0, NEG_INF], [-1.0, -2.0 + 0.5 * math.log(2), -3.0]])
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.allclose(got[torch.isfinite(got)], expected[torch.isfinite(expected)])
    with pytest.raises(ValueError, match="prompts"):
        prior.rescore(torch.zeros(1, 3), scores[:1], values[:1])


def test_the_search_slices_a_per_prompt_prior_with_its_chunks(tiny_lm) -> None:  # noqa: F811
    """Decoded in chunks of 2 prompts, each prompt is still re-ranked by its own row (exact against brute force)."""
    trie = TrieArrays.from_sequences(ITEMS, list(range(len(ITEMS))))
    ads = {f"a{v}": v for v in range(len(ITEMS))}
    recents = [[f"a{(3 * i) % len(ITEMS)}"] for i in range(len(PROMPTS))]
    sequences = [[f"a{(3 * i) % len(ITEMS)}", f"a{(5 * i + 1) % len(ITEMS)}"] for i in range(len(PROMPTS))]
    counts = TransitionCounts.from_sequences(sequences * 3, window=1)
    prior = counts.prior(ads, recents, weight=2.0)
    k = 5
    got = ConstrainedBeamSearch(tiny_lm, max_batch_prompts=2).generate(
        PROMPTS, trie, k=k, beams=len(ITEMS), ad_prior=prior
    )
    assert len(PROMPTS) > 2  # more than one chunk
    moved = 0
    for prompt, recent, row in zip(PROMPTS, recents, got, strict=True):
        sid = brute_force(tiny_lm, prompt, ITEMS)
        bonus = counts.bonus(recent)
        expected = (sid + torch.tensor([2.0 * math.log1p(bonus.get(f"a{v}", 0.0)) for v in range(len(ITEMS))])).topk(k)
        assert [v for v, _ in row] == expected.indices.tolist()
        moved += [v for v, _ in row] != sid.topk(k).indices.tolist()
    assert moved > 0  # the prior moves ads here: the check above is not vacuous


def test_the_recipe_carries_the_transition_prior() -> None:
    settings = TransitionSettings(weight=0.3, window=2, following={"a": {"b": 1.5}})
    again = ServingRecipe.model_validate_json(ServingRecipe(transitions=settings).model_dump_json())
    assert again.transitions is not None and again.transitions.counts().bonus(["a"]) == {"b": 1.5}
    assert ServingRecipe().transitions is None  # older recipes load without it
    with pytest.raises(ValueError, match="greater than 0"):
        TransitionSettings(weight=0.0, window=1, following={})
