"""Prompt builder golden cases: layout, positive-only merged sequence, summary, ablations, token budget."""

from __future__ import annotations

import pytest

from adgen.core.catalogue import ContentItem, HistoryEvent, Item, UserProfile
from adgen.model.prompts import PromptBuilder, PromptError, PromptOptions
from adgen.model.tokenizer import build_tokenizer

DAY = 86_400.0
SIDS = {"ad1": (1, 2, 0), "ad2": (3, 0, 1), "ad3": (1, 1, 0)}
ITEMS = {
    "ad1": Item(item_id="ad1", title="Trail running shoes", categories=("Sports", "Running"), brand="Fleet"),
    "ad2": Item(item_id="ad2", title="Jazz concert tickets", categories=("Music", "Live")),
    "ad3": Item(item_id="ad3", title="Yoga mat", categories=("Sports", "Yoga"), description="Thick non slip mat."),
}
CONTENT = {"c1": ContentItem(content_id="c1", title="Marathon training tips", categories=("Sports",))}
PROFILE = UserProfile(age=34, sex="female", residence="city", arpu=12.0)
HISTORY = [
    HistoryEvent(ts=0 * DAY, kind="ad_click", ref="ad1"),
    HistoryEvent(ts=1 * DAY, kind="content_play", ref="c1", title="Marathon training tips"),  # not positive
    HistoryEvent(ts=2 * DAY, kind="content_complete", ref="c1", title="Marathon training tips"),
    HistoryEvent(ts=5 * DAY, kind="ad_conversion", ref="ad2"),
    HistoryEvent(ts=9 * DAY, kind="content_search", ref="q", title="yoga for beginners", category="Sports"),
]
SID_VOCAB = [f"<{lvl}_{c}>" for lvl, n in zip("abc", (4, 4, 2), strict=True) for c in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Predict the next ad this user will click. Profile: age sex residence Interests: times days ago"] * 10
    return build_tokenizer(corpus, SID_VOCAB, vocab_size=400)


def _builder(tokenizer, **options) -> PromptBuilder:
    options.setdefault("max_prompt_tokens", 512)  # the toy BPE has few merges; real prompts are far shorter
    return PromptBuilder(tokenizer, ITEMS, SIDS.__getitem__, CONTENT, PromptOptions(**options))


def test_main_prompt_matches_golden_text(tokenizer):
    prompt = _builder(tokenizer).user_prompt(HISTORY, PROFILE)
    assert prompt.text == (
        "<soft_prompt> Predict the next ad this user will click.\n"
        "Profile: age 34, sex female, residence city\n"
        "Interests: Sports^3 times, Music^1 times\n"
        "Behaviour: 9 days ago^click^<a_1><b_2><c_0>; 7 days ago^watch^Marathon training tips; "
        "4 days ago^convert^<a_3><b_0><c_1>; 0 days ago^search^yoga for beginners\n"
        "Next ad:"
    )
    assert prompt.behaviours_kept == prompt.behaviours_total == 4
    assert tokenizer.decode(prompt.ids) == prompt.text


def test_implicit_alignment_writes_ads_as_titles(tokenizer):
    text = _builder(tokenizer).user_prompt(HISTORY, PROFILE, ads_as="text").text
    assert "9 days ago^click^Trail running shoes;" in text and "<a_" not in text


def test_ablations_drop_content_behaviours_summary_and_profile(tokenizer):
    no_content = _builder(tokenizer, include_content=False).user_prompt(HISTORY, PROFILE).text
    assert (
        "watch" not in no_content and "search" not in no_content and "Interests: Music^1 times, Sports^1" in no_content
    )
    bare = _builder(tokenizer, include_summary=False, include_profile=False).user_prompt(HISTORY, PROFILE).text
    assert "Interests" not in bare and "Profile" not in bare and "Behaviour: 9 days ago" in bare


def test_profile_field_order_follows_the_given_order(tokenizer):
    text = _builder(tokenizer).user_prompt(HISTORY, PROFILE, profile_order=["residence", "age", "sex"]).text
    assert "Profile: residence city, age 34, sex female\n" in text


def test_budget_drops_oldest_behaviour_first_and_is_exact(tokenizer):
    full = _builder(tokenizer).user_prompt(HISTORY, PROFILE)
    budget = len(full.ids) - 3
    cut = _builder(tokenizer, max_prompt_tokens=budget).user_prompt(HISTORY, PROFILE)
    assert len(cut.ids) <= budget
    assert cut.behaviours_kept < 4
    assert "Behaviour: 7 days ago^watch" in cut.text or "Behaviour: 4 days ago^convert" in cut.text
    assert "0 days ago^search^yoga for beginners\nNext ad:" in cut.text  # the newest survives
    assert tokenizer.decode(cut.ids) == cut.text


def test_budget_smaller_than_fixed_parts_is_a_clear_error(tokenizer):
    with pytest.raises(PromptError, match="max_prompt_tokens=16"):
        _builder(tokenizer, max_prompt_tokens=16).user_prompt(HISTORY, PROFILE)


def test_window_keeps_only_recent_behaviours(tokenizer):
    text = _builder(tokenizer, window_days=5).user_prompt(HISTORY, PROFILE).text
    assert "Behaviour: 4 days ago^convert" in text and "Interests: Music^1 times, Sports^1 times" in text


def test_alignment_prompt_describes_the_ad_and_response_is_its_sid(tokenizer):
    builder = _builder(tokenizer)
    prompt = builder.alignment_prompt("ad3")
    assert prompt.text == (
        "<soft_prompt> Give the semantic ID of this ad.\nAd: Yoga mat\nCategory: Sports > Yoga\n"
        "Description: Thick non slip mat.\nID:"
    )
    assert tokenizer.convert_ids_to_tokens(builder.response_ids("ad3")) == ["<a_1>", "<b_1>", "<c_0>"]
    with pytest.raises(PromptError, match="unknown ad 'nope'"):
        builder.alignment_prompt("nope")


# -- the sequence layout (every ad a target in one pass) ----------------------------------------------------------
LONG_HISTORY = [*HISTORY, HistoryEvent(ts=12 * DAY, kind="ad_click", ref="ad3")]


def test_sequence_labels_exactly_the_s_id_tokens_of_each_ad(tokenizer):
    builder = _builder(tokenizer, layout="sequence")
    seq = builder.sequence(LONG_HISTORY, PROFILE)
    labelled = [(i, t) for i, (t, lab) in enumerate(zip(seq.ids, seq.labels, strict=True)) if lab != -100]
    assert all(seq.ids[i] == seq.labels[i] for i, _ in labelled)
    expected = [t for ad in ("ad1", "ad2", "ad3") for t in builder.response_ids(ad)]
    assert [t for _, t in labelled] == expected
    assert "watch^Marathon training tips" in seq.text and "search^yoga for beginners" in seq.text
    assert "Profile: age 34" in seq.text and "Interests" not in seq.text  # no summary: it would count later ads
    assert "+3d convert^<a_3><b_0><c_1> Jazz concert tickets" in seq.text


def test_every_target_sees_exactly_the_serving_prompt_of_its_prefix(tokenizer):
    """Leak-free by construction: the tokens before a clicked ad's S-ID in the training sequence are the prompt the
    server builds from the behaviour before that click (ending in the "click^" cue). Nothing later reaches it."""
    builder = _builder(tokenizer, layout="sequence")
    full = builder.sequence(LONG_HISTORY, PROFILE)
    starts = [i for i, lab in enumerate(full.labels) if lab != -100 and full.labels[i - 1] == -100]
    ads = [n for n, e in enumerate(LONG_HISTORY) if e.kind in ("ad_click", "ad_conversion")]
    assert len(starts) == len(ads) == 3
    checked = 0
    for start, n in zip(starts, ads, strict=True):
        if LONG_HISTORY[n].kind != "ad_click":  # the cue announces a click; a conversion's prefix says "convert^"
            continue
        served = builder.sequence(LONG_HISTORY[:n], PROFILE, now=LONG_HISTORY[n].ts, cue=True)
        assert served.ids == full.ids[:start]
        checked += 1
    assert checked == 2


def test_sid_only_layout_is_the_ads_s_ids_back_to_back(tokenizer):
    builder = _builder(tokenizer, layout="sid_only")
    seq = builder.sequence(LONG_HISTORY, PROFILE)
    sids = [t for ad in ("ad1", "ad2", "ad3") for t in builder.response_ids(ad)]
    assert seq.ids[-len(sids) :] == sids and seq.labels[-len(sids) :] == sids
    assert all(label == -100 for label in seq.labels[: -len(sids)])
    assert builder.user_prompt(LONG_HISTORY, PROFILE).ids == seq.ids  # serving: the next S-ID follows directly


def test_sequence_over_budget_drops_the_oldest_behaviours_first(tokenizer):
    full = _builder(tokenizer, layout="sequence").sequence(LONG_HISTORY, PROFILE)
    cut = _builder(tokenizer, layout="sequence", max_prompt_tokens=len(full.ids) - 3).sequence(LONG_HISTORY, PROFILE)
    assert cut.behaviours_kept < full.behaviours_kept
    assert full.ids[-20:] == cut.ids[-20:]  # the newest behaviours are kept verbatim
