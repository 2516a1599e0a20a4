"""Task construction: curriculum order, augmentation counts, positive-interaction reuse."""

from __future__ import annotations

import pytest

from adgen.core.catalogue import Dataset, HistoryEvent, Item, UserHistory, UserProfile, leave_one_out
from adgen.model.prompts import PromptBuilder, PromptOptions
from adgen.model.tasks import TaskOptions, curriculum_stages, select_targets, stage_examples
from adgen.model.tokenizer import build_tokenizer

DAY = 86_400.0
ITEMS = {f"ad{i}": Item(item_id=f"ad{i}", title=f"Ad number {i}", categories=(f"Cat{i % 2}",)) for i in range(6)}
SIDS = {f"ad{i}": (i % 3, i // 3, 0) for i in range(6)}
SID_VOCAB = [f"<{lvl}_{c}>" for lvl, n in zip("abc", (3, 2, 1), strict=True) for c in range(n)]


def _dataset() -> Dataset:
    users = {}
    for u in range(3):
        ads = [
            f"ad{(u + j) % 6}" for j in range(5)
        ]  # 5 ad clicks -> 2 train (the first has no prefix), 1 valid, 1 test
        events = [HistoryEvent(ts=j * DAY, kind="ad_click", ref=a) for j, a in enumerate(ads)]
        users[f"u{u}"] = UserHistory(user_id=f"u{u}", profile=UserProfile(age=20 + u, sex="m"), events=events)
    return Dataset(name="toy", items=ITEMS, users=users)


@pytest.fixture(scope="module")
def builder():
    tok = build_tokenizer(["Ad number 1 Predict the next ad Profile age sex days ago"] * 5, SID_VOCAB, vocab_size=350)
    return PromptBuilder(tok, ITEMS, SIDS.__getitem__, options=PromptOptions(max_prompt_tokens=512))


def test_curricula_order_ex_then_im_then_main_by_default():
    assert curriculum_stages("ex_im_main") == [["ex"], ["im"], ["main"]]
    assert curriculum_stages("mixed") == [["ex", "im", "main"]]
    assert curriculum_stages("main_only") == [["main"]]
    with pytest.raises(ValueError, match="unknown curriculum 'backwards'"):
        curriculum_stages("backwards")


def test_positive_reuse_gives_one_example_per_earlier_ad_and_off_gives_one_per_user():
    split = leave_one_out(_dataset())
    assert len(split.train) == 3 * 2
    latest = select_targets(split.train, reuse_positives=False)
    assert [(e.user_id, len(e.history)) for e in latest] == [("u0", 2), ("u1", 2), ("u2", 2)]


def test_augmentation_counts_and_variants(builder):
    data = _dataset()
    split = leave_one_out(data)
    opts = TaskOptions(templates_per_example=3, align_templates=2)
    main = stage_examples(["main"], builder, data, split.train, list(ITEMS), opts)
    assert len(main) == 6 * 3
    assert len({tuple(p) for p, _ in main[:3]}) == 3  # three different templates / profile orders
    ex = stage_examples(["ex"], builder, data, split.train, list(ITEMS), opts)
    assert len(ex) == 6 * 2
    mixed = stage_examples(["ex", "im", "main"], builder, data, split.train, list(ITEMS), opts)
    assert len(mixed) == 12 + 18 + 18


def test_responses_are_the_target_sids_and_im_prompts_hide_sids(builder):
    data = _dataset()
    split = leave_one_out(data)
    tok = builder.tokenizer
    im = stage_examples(["im"], builder, data, split.train[:1], [], TaskOptions())
    prompt, response = im[0]
    target = split.train[0].target
    assert tok.convert_ids_to_tokens(response) == [f"<a_{SIDS[target][0]}>", f"<b_{SIDS[target][1]}>", "<c_0>"]
    assert "<a_" not in tok.decode(prompt)
    main = stage_examples(["main"], builder, data, split.train[:1], [], TaskOptions())
    assert "<a_" in tok.decode(main[0][0])
