"""The offline build end to end on a tiny catalogue: CI set, model, every ad indexed, head cache, snapshot."""

from __future__ import annotations

import json

from adgen.core.catalogue import Item
from adgen.processors.query_retrieval import SearchConfig, SearchService
from adgen.search.ci_data import QueryIntent
from adgen.search.ci_index import CleaningConfig, load_latest_snapshot
from adgen.search.ci_model import CIModelConfig
from adgen.search.ci_pipeline import CIBuildConfig, build_search_index, split_queries

TYPES = ["nitrile gloves", "glass beakers", "digital multimeter", "safety goggles"]
BRANDS = ["Acme", "Labco"]


def _items() -> dict[str, Item]:
    items = {}
    for t, ptype in enumerate(TYPES):
        for b, brand in enumerate(BRANDS):
            for n in range(2):
                ad_id = f"ad{t}{b}{n}"
                items[ad_id] = Item(
                    item_id=ad_id,
                    title=f"{brand} {ptype} model {n}",
                    brand=brand,
                    categories=("Lab", ptype.split()[-1]),
                    product_type=ptype,
                    attributes=("durable",),
                )
    return items


def test_build_indexes_every_ad_with_cis_from_the_set_and_writes_a_loadable_snapshot(tmp_path):
    items = _items()
    queries = [
        QueryIntent(query_id="q1", text="top rated nitrile gloves", intent="nitrile gloves", exact_ads=["ad000"]),
        QueryIntent(query_id="q2", text="top rated glass beakers", intent="glass beakers", exact_ads=["ad100"]),
    ]
    config = CIBuildConfig(
        cleaning=CleaningConfig(min_ads=2, max_ad_share=0.6),
        model=CIModelConfig(vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, format_epochs=8, batch_size=32),
        head_cache_size=2,
        top_cis=3,
        beams=4,
    )
    report = build_search_index(items, tmp_path, config, queries, ["nitrile gloves", "nitrile gloves", "beakers"])
    assert report.ads_without_cis == 0
    assert report.templates == ["top rated {}"]  # mined from the two training queries
    assert report.head_cache_entries == 2
    assert json.loads((tmp_path / "build_report.json").read_text())["cis"] == report.cis
    assert (tmp_path / "train" / "metrics.json").is_file()

    snap = load_latest_snapshot(tmp_path / "snapshots")
    assert "durable nitrile gloves" in snap.ci_set.texts and "acme nitrile gloves" in snap.ci_set.texts
    index = snap.to_index()
    index.check_consistency()
    assert set(index.ad_cis) == set(items)
    gloves = snap.ci_set.id_of("nitrile gloves")
    assert {a for a, w in index.ads_of(gloves).items() if w == 1.0} == {a for a in items if a.startswith("ad0")}

    service = SearchService.from_snapshot(tmp_path / "snapshots", tmp_path / "model", SearchConfig(beams=4, top_cis=3))
    hit = service.search("Nitrile Gloves")
    assert hit.source == "cache" and hit.ads
    miss = service.search("something else entirely")
    assert miss.source == "model" and all(0 <= c.ci_id < len(snap.ci_set.texts) for c in miss.cis)


def test_query_split_holds_out_queries_for_evaluation_only():
    class Label:
        def __init__(self, i: int) -> None:
            self.query_id, self.text, self.intent = f"q{i}", f"text {i}", "category:A>Lawn Care"
            self.relevance = {"a": 2, "b": 1}

    train, held_out = split_queries([Label(i) for i in range(200)], eval_share=0.5)
    assert len(train) + len(held_out) == 200 and 60 < len(held_out) < 140
    assert not {q.query_id for q in train} & {q.query_id for q in held_out}
    assert train[0].intent == "Lawn Care" and train[0].exact_ads == ["a"]
