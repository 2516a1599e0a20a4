"""Training and retraining refuse data their prompt budget would strip of its ad targets (model/tasks.py, retrain.py).

The CI failure this guards against: at a budget where newer content behaviour filled each user's sequence, only
6 of 96 sequences kept a click to learn from, retraining learnt ad alignment alone, and the gate's verdict against
a random parent was a coin flip.
"""

from pathlib import Path

import numpy as np
import pytest

from adgen.core.catalogue import HistoryEvent, Item, UserHistory, UserProfile
from adgen.index.semantic_ids import SemanticIdMap, sid_vocabulary
from adgen.model.prompts import PromptOptions
from adgen.model.recipe import ServingRecipe, save_recipe
from adgen.model.retrain import RetrainConfig, RetrainError, retrain
from adgen.processors.generation import write_untrained_checkpoint

DAY = 86_400.0
ADS = [f"ad{n}" for n in range(8)]
CODES = np.array([[n // 4, n % 4] for n in range(8)])
WATCHED = "a long documentary about the history of deep sea fishing fleets and their boats"


def histories(videos_before_last_click: int) -> dict[str, UserHistory]:
    """Twelve users with four clicks each; `videos_before_last_click` watched videos come between the third click
    and the fourth (the hold-out), so they are the newest behaviour of each training sequence."""
    users = {}
    for u in range(12):
        clicks = [HistoryEvent(ts=j * DAY, kind="ad_click", ref=ADS[(u + j) % 8]) for j in range(4)]
        watched = [
            HistoryEvent(ts=2.5 * DAY + j, kind="content_complete", ref=f"c{j}", title=WATCHED)
            for j in range(videos_before_last_click)
        ]
        users[f"u{u}"] = UserHistory(
            user_id=f"u{u}", profile=UserProfile(age=30, sex="f"), events=[*clicks[:3], *watched, clicks[3]]
        )
    return users


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, SemanticIdMap, dict[str, Item]]:
    sid_map = SemanticIdMap.build(ADS, CODES, (2, 4, 4))
    checkpoint = write_untrained_checkpoint(tmp_path / "parent", sid_vocabulary(sid_map.codebook_sizes), [WATCHED])
    save_recipe(ServingRecipe(prompts=PromptOptions(layout="sequence", max_prompt_tokens=96)), checkpoint)
    catalogue = {a: Item(item_id=a, title=f"ad number {a}", categories=("Tools",)) for a in ADS}
    return checkpoint, sid_map, catalogue


def test_sequences_without_targets_are_refused_with_the_fix(
    setup: tuple[Path, SemanticIdMap, dict[str, Item]], tmp_path: Path
) -> None:
    checkpoint, sid_map, catalogue = setup
    config = RetrainConfig(epochs=1, eval_users=4, torch_threads=1)
    with pytest.raises(RetrainError, match=r"only 0 of 12 users' sequences keep an ad target.*max_prompt_tokens=96"):
        retrain(checkpoint, histories(videos_before_last_click=30), sid_map, catalogue, tmp_path / "work", config)
    # the same users without the videos keep their clicks: retraining runs and says what it trained on
    result = retrain(checkpoint, histories(videos_before_last_click=0), sid_map, catalogue, tmp_path / "work", config)
    assert result.data["user_samples"] == result.data["users_with_holdout"] == 12


def test_a_popularity_prior_is_kept_with_counts_from_the_data_retrained_on(
    setup: tuple[Path, SemanticIdMap, dict[str, Item]], tmp_path: Path
) -> None:
    from adgen.model.recipe import PopularitySettings, load_recipe

    checkpoint, sid_map, catalogue = setup
    stale = PopularitySettings(weight=0.3, counts={"ad0": 1000, "gone": 5})
    save_recipe(
        ServingRecipe(prompts=PromptOptions(layout="sequence", max_prompt_tokens=96), popularity=stale), checkpoint
    )
    config = RetrainConfig(epochs=1, eval_users=4, torch_threads=1)
    result = retrain(checkpoint, histories(videos_before_last_click=0), sid_map, catalogue, tmp_path / "work", config)
    saved = load_recipe(result.candidate_dir).popularity
    assert saved is not None and saved.weight == 0.3
    # each user's three clicks before the hold-out: 12 users x 3 = 36 clicks over 8 ads, none of the stale ones
    assert sum(saved.counts.values()) == 36 and set(saved.counts) <= set(ADS)
    assert saved.counts == {a: sum(1 for u in range(12) for j in range(3) if ADS[(u + j) % 8] == a) for a in ADS}


def test_training_refuses_the_same_data_at_the_same_budget(setup: tuple[Path, SemanticIdMap, dict[str, Item]]) -> None:
    """`adgen train` builds its sequences with the same function: it refuses too, naming the settings to change."""
    from adgen.core.catalogue import Dataset, SplitExample
    from adgen.model.prompts import PromptBuilder
    from adgen.model.tasks import SequenceBudgetError, sequence_examples
    from adgen.model.tokenizer import load_tokenizer

    checkpoint, sid_map, catalogue = setup
    tokenizer = load_tokenizer(checkpoint / "tokenizer")
    options = PromptOptions(layout="sequence", max_prompt_tokens=96)
    builder = PromptBuilder(tokenizer, catalogue, sid_map.sid_of, options=options)

    def examples(videos: int) -> tuple[Dataset, list[SplitExample]]:
        users = histories(videos)
        split = [SplitExample(user_id=u, history=h.events[:-1], target=h.events[-1].ref) for u, h in users.items()]
        return Dataset(name="t", items=catalogue, users=users), split

    data, split = examples(30)
    with pytest.raises(SequenceBudgetError, match=r"only 0 of 12 .*max_prompt_tokens=96.*prompts.max_prompt_tokens"):
        sequence_examples(builder, data, split)
    data, split = examples(0)
    assert len(sequence_examples(builder, data, split)) == 12
