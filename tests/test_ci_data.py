"""CI training data from the catalogue: candidates, query split, the two training stages, the LLM source."""

from __future__ import annotations

import socket

import pytest

from adgen.core.catalogue import Item
from adgen.search.ci_data import (
    AD_PROMPT,
    CIDataError,
    OpenAICompatibleCISource,
    QueryIntent,
    format_pairs,
    item_ci_candidates,
    knowledge_pairs,
    propose_cis,
    query_split,
    title_key_phrases,
)
from adgen.search.ci_index import CleaningConfig, build_ci_set

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


def test_query_split_is_stable_and_roughly_balanced():
    splits = [query_split(f"q{i}") for i in range(2000)]
    assert splits == [query_split(f"q{i}") for i in range(2000)]
    assert 0.45 < splits.count("eval") / 2000 < 0.55


def test_training_pairs_target_only_cis_from_the_set():
    items = {
        f"g{i}": GLOVES.model_copy(update={"item_id": f"g{i}", "title": f"Acme gloves model {i}"}) for i in range(4)
    }
    items["b1"] = Item(item_id="b1", title="Glass beaker 250 ml", categories=("Lab Supplies", "Beakers"))
    queries = [
        QueryIntent(query_id="q1", text="Cheap Nitrile Gloves!", intent="nitrile gloves", exact_ads=["g0", "g1"])
    ]
    proposals = propose_cis(items, queries)
    ci_set, assignment, _ = build_ci_set(proposals, embed=None, cfg=CleaningConfig(min_ads=2, max_ad_share=1.0))
    fmt = format_pairs(items, ci_set, assignment, queries)
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


def test_intent_labels_become_phrases():
    from adgen.search.ci_data import intent_phrase

    assert intent_phrase("product_type:photo printer|Computers>Printers") == "photo printer"
    assert intent_phrase("attribute_product:LED|floor mats|Automotive>Interior Accessories") == "LED floor mats"
    assert intent_phrase("brand_category:Ferrant|Home & Kitchen>Small Appliances") == "Ferrant Small Appliances"
    assert intent_phrase("category:Garden & Outdoor>Lawn Care") == "Lawn Care"
    assert intent_phrase("plain phrase") == "plain phrase"


def test_templates_are_mined_from_queries_and_wrap_every_ci():
    from adgen.search.ci_data import augmented_query_pairs, mine_templates
    from adgen.search.ci_index import CISet

    queries = [
        QueryIntent(query_id="1", text="Top rated photo printer", intent="photo printer"),
        QueryIntent(query_id="2", text="top rated lawn care", intent="lawn care"),
        QueryIntent(query_id="3", text="lawn care near me", intent="lawn care"),
        QueryIntent(query_id="4", text="dog bed near me", intent="dog bed"),
        QueryIntent(query_id="5", text="bcakpack", intent="backpack"),  # typo: no template
    ]
    templates = mine_templates(queries)
    assert templates == ["top rated {}", "{} near me"]
    ci_set = CISet(texts=["glass beakers", "safety goggles"], support=[1, 1])
    pairs = augmented_query_pairs(ci_set, templates, per_ci=2, typo_rate=0.0)
    assert len(pairs) == 4 and {p.response for p in pairs} == set(ci_set.texts)
    assert any(p.prompt == "query: top rated glass beakers\nintent:" for p in pairs)


def test_typing_noise_changes_one_word_and_is_seeded():
    import random

    from adgen.search.ci_data import noisy

    a = [noisy("digital multimeter", random.Random(s), rate=1.0) for s in range(20)]
    assert a == [noisy("digital multimeter", random.Random(s), rate=1.0) for s in range(20)]
    assert all(x != "digital multimeter" and len(x.split()) == 2 for x in a if x)
    assert noisy("digital multimeter", random.Random(0), rate=0.0) == "digital multimeter"
