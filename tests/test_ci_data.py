"""CI training data: catalogue candidates, training-query targets and templates, the two stages, the LLM source."""

from __future__ import annotations

import socket

import pytest

from adgen.core.catalogue import Item
from adgen.search.ci_data import (
    AD_PROMPT,
    CIDataError,
    OpenAICompatibleCISource,
    QueryTarget,
    format_pairs,
    item_ci_candidates,
    knowledge_pairs,
    propose_cis,
    query_targets,
    strip_template,
    title_key_phrases,
)
from adgen.search.ci_index import CISet, CleaningConfig, build_ci_set
from adgen.search.query_log import LoggedQuery

GLOVES = Item(
    item_id="g1",
    title="Acme Nitrile Exam Gloves, Powder Free, Large",
    brand="Acme",
    categories=("Industrial & Scientific", "Lab Supplies", "Gloves"),
    product_type="nitrile gloves",
    attributes=("powder free", "large"),
)


def test_item_candidates_cover_category_brand_type_attributes_and_title():
    cands = item_ci_candidates(GLOVES)
    assert "Gloves" in cands
    assert "Acme Gloves" in cands
    assert "Acme nitrile gloves" in cands
    assert "powder free nitrile gloves" in cands
    assert "nitrile exam" not in cands  # structured fields present: no title n-grams
    real = GLOVES.model_copy(update={"product_type": "", "attributes": ()})
    assert "nitrile exam" in item_ci_candidates(real)  # real catalogue: title bigram, brand removed
    assert all(c != "Industrial & Scientific" for c in cands)


def test_title_key_phrases_skip_brand_and_stopword_edges():
    phrases = title_key_phrases("Acme Pack of 10 Glass Beakers for Lab", brand="Acme", max_phrases=10)
    assert "glass beakers" in phrases
    assert not any(p.startswith("acme") or p.endswith(" for") or p.startswith("of ") for p in phrases)


def test_training_pairs_target_only_cis_from_the_set():
    items = {
        f"g{i}": GLOVES.model_copy(update={"item_id": f"g{i}", "title": f"Acme gloves model {i}"}) for i in range(4)
    }
    items["b1"] = Item(item_id="b1", title="Glass beaker 250 ml", categories=("Lab Supplies", "Beakers"))
    proposals = propose_cis(items)
    ci_set, assignment, _ = build_ci_set(proposals, embed=None, cfg=CleaningConfig(min_ads=2, max_ad_share=1.0))
    targets = [QueryTarget(text="cheap nitrile gloves", ci=ci_set.id_of("nitrile gloves"), f1=1.0)]
    fmt = format_pairs(items, ci_set, assignment, targets)
    know = knowledge_pairs(items, ci_set, assignment)
    assert fmt and know
    assert {p.response for p in fmt} <= set(ci_set.texts)
    assert any(p.prompt.startswith("query: cheap nitrile gloves") and p.response == "nitrile gloves" for p in fmt)
    assert any(
        p.prompt
        == AD_PROMPT.format(
            text="Acme gloves model 0 | Lab Supplies > Gloves | nitrile gloves | brand Acme | powder free | large"
        )
        for p in fmt
    )
    assert all(p.stage == "knowledge" for p in know)
    assert any(p.response == "Lab Supplies > Gloves" for p in know)


def test_propose_cis_on_empty_catalogue_is_a_clear_error():
    with pytest.raises(CIDataError, match="catalogue is empty"):
        propose_cis({})


def test_unreachable_llm_endpoint_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = OpenAICompatibleCISource(f"http://127.0.0.1:{port}/v1", model="any", timeout_s=2)
    with pytest.raises(CIDataError, match=r"failed for ad .g1.*--llm-url"):
        source.propose(GLOVES)


def test_templates_are_mined_from_training_queries_and_wrap_every_ci():
    from adgen.search.ci_data import augmented_query_pairs, mine_templates

    pairs = [
        ("Top rated photo printer", "photo printer"),
        ("top rated lawn care", "lawn care"),
        ("lawn care near me", "lawn care"),
        ("dog bed near me", "dog bed"),
        ("bcakpack", "backpack"),  # typo: no template
    ]
    templates = mine_templates(pairs)
    assert templates == ["top rated {}", "{} near me"]
    ci_set = CISet(texts=["glass beakers", "safety goggles"], support=[1, 1])
    pairs = augmented_query_pairs(ci_set, templates, per_ci=2, typo_rate=0.0)
    assert len(pairs) == 4 and {p.response for p in pairs} == set(ci_set.texts)
    assert any(p.prompt == "query: top rated glass beakers\nintent:" for p in pairs)


def test_strip_template_finds_the_intention_inside_a_query():
    templates = ["top rated {}", "{} near me", "good {} to buy", "buy {} online"]
    assert strip_template("top rated lawn care", templates) == "lawn care"
    assert strip_template("good dog bed to buy", templates) == "dog bed"
    assert strip_template("lawn care", templates) == "lawn care"
    assert strip_template("near me", templates) == "near me"  # nothing would be left
    assert strip_template("top rated lawn care near me", templates) == "lawn care near me"  # one template only


def _logged(qid: str, text: str, grades: dict[str, int]) -> LoggedQuery:
    return LoggedQuery(query_id=qid, text=text, relevance=grades, first_ts=0.0)


def test_query_targets_pick_the_ci_whose_ads_match_the_judged_ads():
    ci_set = CISet(texts=["gloves", "nitrile gloves", "acme gloves", "beakers"], support=[4, 2, 2, 1])
    assignment = {"g0": [0, 1], "g1": [0, 1], "g2": [0, 2], "g3": [0, 2], "b0": [3]}
    targets = query_targets(
        [
            _logged("1", "cheap Nitrile gloves", {"g0": 2, "g1": 2, "g2": 1}),  # exact set of 'nitrile gloves'
            _logged("2", "gloves for the lab", {"g0": 2, "g1": 2, "g2": 2, "g3": 2}),
            _logged("3", "something", {"b0": 1}),  # no ad of grade 2: no target
            _logged("4", "mixed", {"g0": 2, "b0": 2, "g2": 2}),  # best F1 0.57 < 0.6
        ],
        ci_set,
        assignment,
        min_f1=0.6,
    )
    assert [(t.text, ci_set.texts[t.ci], t.f1) for t in targets] == [
        ("cheap nitrile gloves", "nitrile gloves", 1.0),
        ("gloves for the lab", "gloves", 1.0),
    ]


def test_typing_noise_changes_one_word_and_is_seeded():
    import random

    from adgen.search.ci_data import noisy

    a = [noisy("digital multimeter", random.Random(s), rate=1.0) for s in range(20)]
    assert a == [noisy("digital multimeter", random.Random(s), rate=1.0) for s in range(20)]
    assert all(x != "digital multimeter" and len(x.split()) == 2 for x in a if x)
    assert noisy("digital multimeter", random.Random(0), rate=0.0) == "digital multimeter"
