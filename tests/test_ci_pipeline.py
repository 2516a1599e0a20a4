"""The offline build end to end on a tiny catalogue and query log: split, CI set, model with epochs chosen on
validation, every ad indexed, serving settings tuned on validation, head cache, snapshot; and what the
build must never see (held-out queries)."""

from __future__ import annotations

import json

import pytest

import adgen.search.ci_pipeline as pipeline
from adgen.core.catalogue import Item
from adgen.processors.query_retrieval import SearchService
from adgen.search.ci_index import CleaningConfig, load_latest_snapshot
from adgen.search.ci_model import CIModelConfig
from adgen.search.ci_pipeline import CIBuildConfig, build_search_index, load_split
from adgen.search.ci_serving import ServingConfig
from adgen.search.ci_tuning import TuningGrid
from adgen.search.query_log import LoggedQuery, QueryLog
from adgen.search.query_split import split_leaks

TYPES = ["nitrile gloves", "glass beakers", "digital multimeter", "safety goggles"]
BRANDS = ["Acme", "Labco"]
TEMPLATES = ["top rated {}", "{} near me", "cheap {}", "{} deals"]


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


def _log(items: dict[str, Item]) -> QueryLog:
    queries = []
    for ptype in TYPES:
        for brand in [*BRANDS, ""]:
            phrase = f"{brand.lower()} {ptype}".strip()
            exact = {a: 2 for a, item in items.items() if item.product_type == ptype and brand in item.brand}
            related = {a: 1 for a, item in items.items() if item.product_type == ptype and a not in exact}
            for template in TEMPLATES:
                queries.append(
                    LoggedQuery(
                        query_id=f"q{len(queries):03d}",
                        text=template.format(phrase),
                        intent=f"{brand}|{ptype}",
                        relevance={**related, **exact},
                        count=1 + len(queries) % 3,
                        first_ts=float(len(queries)),
                    )
                )
    return QueryLog(queries=queries)


TINY = CIBuildConfig(
    cleaning=CleaningConfig(min_ads=2, max_ad_share=0.6),
    model=CIModelConfig(vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, format_epochs=6, batch_size=32),
    head_cache_size=5,
    serving=ServingConfig(top_cis=3, beams=4, ad_beams=6),
    grid=TuningGrid(
        beams=[4],
        score_floor=[None],
        cis_per_ad=[0, 2],
        model_weight=[0.5],
        lexical_weight=[0.0, 0.5, 1.0],
        lexical_top=[3],
        strip_templates=[False, True],
        ad_match_weight=[0.0, 0.5],
        relative_floor=[0.0, 0.2, 0.6],
        min_link_weight=[0.0, 0.5],
        lexical_min_share=[0.0, 0.5],
    ),
)


def _build(items, log, out):  # type: ignore[no-untyped-def]
    """Build, recording what the CI model is trained on."""
    seen: dict[str, list] = {}
    real_train = pipeline.train_ci_model

    def spy(know, fmt, ci_set, out_dir, config, valid_fn=None):  # type: ignore[no-untyped-def]
        seen.update(know=list(know), fmt=list(fmt), ci_texts=list(ci_set.texts))
        return real_train(know, fmt, ci_set, out_dir, config, valid_fn)

    pipeline.train_ci_model = spy
    try:
        report = build_search_index(items, out, TINY, log, progress=False)
    finally:
        pipeline.train_ci_model = real_train
    return report, seen


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    items, log = _items(), _log(_items())
    out = tmp_path_factory.mktemp("ci")
    report, seen = _build(items, log, out)
    return items, log, out, report, seen


def test_build_indexes_every_ad_and_writes_a_loadable_snapshot_with_tuned_settings(built):
    items, _, out, report, _ = built
    assert report.ads_without_catalogue_cis == 0 and report.query_targets > 0
    assert set(report.templates) <= set(TEMPLATES) and report.templates
    assert report.head_cache_entries == 5
    assert 1 <= report.epochs_trained <= 6 and report.best_epoch is not None
    assert json.loads((out / "train" / "format" / "metrics.json").read_text())["epochs"][0]["valid"]["valid_score"] >= 0
    snap = load_latest_snapshot(out / "snapshots")
    index = snap.to_index()
    index.check_consistency()
    assert set(index.ad_cis) == set(items)
    gloves = snap.ci_set.id_of("nitrile gloves")
    assert {a for a, w in index.ads_of(gloves).items() if w == 1.0} == {a for a in items if a.startswith("ad0")}

    saved = ServingConfig.load(out)
    assert saved == report.serving and saved.templates == report.templates
    assert report.tuning is not None
    floor_rows = [r for r in report.tuning.rows if r.stage == "floor"]
    names = ("lexical_min_share", "min_link_weight", "relative_floor")
    tried = [tuple(r.settings[name] for name in names) for r in floor_rows]
    shares = (0.0, 0.5) if saved.lexical_weight > 0 else (0.0,)  # the share needs lexical evidence
    assert tried == [(share, link, floor) for share in shares for link in (0.0, 0.5) for floor in (0.0, 0.2, 0.6)]
    kept = floor_rows[tried.index(tuple(getattr(saved, name) for name in names))]
    assert report.tuning.served_valid.ndcg10 == pytest.approx(kept.ndcg10)
    assert report.tuning.served_valid.off_intent10 == pytest.approx(kept.off_intent10)

    service = SearchService.from_build(out)
    assert service.config == saved
    head = next(iter(service.head_cache))
    hit = service.search(head)
    assert hit.source == "cache" and hit.ads
    miss = service.search("something else entirely")
    assert miss.source == "model" and all(0 <= c.ci_id < len(snap.ci_set.texts) for c in miss.cis)


def test_cached_answers_equal_what_the_served_path_computes(built):
    _, _, out, _, _ = built
    service = SearchService.from_build(out)
    fresh = SearchService.from_build(out)
    fresh.head_cache.clear()
    for query in list(service.head_cache)[:5]:
        cached, computed = service.search(query), fresh.search(query)
        assert cached.source == "cache" and computed.source == "model"
        # batched (build) and single-query decoding differ in float rounding only
        assert {c.ci_id: c.prob for c in cached.cis} == pytest.approx({c.ci_id: c.prob for c in computed.cis}, abs=1e-4)
        ads = {a.ad_id: a.score for a in computed.ads}
        assert {a.ad_id: a.score for a in cached.ads} == pytest.approx(ads, abs=1e-4)


def test_tuned_validation_score_is_what_the_saved_service_scores(built):
    from adgen.commands.search_quality import service_retriever
    from adgen.search.ci_eval import evaluate

    _, log, out, report, _ = built
    split = load_split(out, log)
    service = SearchService.from_build(out)
    service.head_cache.clear()
    again = evaluate("served", service_retriever(service), split.valid, progress=False)
    assert again.ndcg10 == pytest.approx(report.tuning.served_valid.ndcg10)
    assert again.hr == pytest.approx(report.tuning.served_valid.hr)
    # the relative floor too: the same lists, as short as validation scored them
    assert again.avg_ads_per_query == pytest.approx(report.tuning.served_valid.avg_ads_per_query)
    assert again.off_intent10 == pytest.approx(report.tuning.served_valid.off_intent10)


def test_the_floor_chosen_on_validation_is_what_serving_applies(built):
    """The build picks the relative floor by `choose_floor` over its validation rows, writes it to
    serving.json, and the loaded service cuts its lists there (the same service at floor 0 does not)."""
    _, log, out, report, _ = built
    rows = [r for r in report.tuning.rows if r.stage == "floor"]
    best = max(r.objective for r in rows)
    within = [r for r in rows if r.objective >= best - TINY.grid.floor_tolerance]
    strength = ("relative_floor", "min_link_weight", "lexical_min_share")
    fewest = min(within, key=lambda r: (r.off_intent10, *(r.settings[name] for name in strength)))
    chosen = report.serving.relative_floor
    assert fewest.settings["relative_floor"] == chosen
    assert fewest.settings["min_link_weight"] == report.serving.min_link_weight
    assert fewest.settings["lexical_min_share"] == report.serving.lexical_min_share
    # in this world every ad of the catalogue reaches a query's union; a floor halves that at no cost
    assert chosen > 0
    assert ServingConfig.load(out).relative_floor == chosen
    service = SearchService.from_build(out)
    unfloored = SearchService.from_build(out, relative_floor=0.0)
    assert service.config.relative_floor == chosen
    shorter = 0
    for query in load_split(out, log).valid:
        ads = [a.score for a in service.search(query.text).ads]
        assert ads and min(ads) >= chosen * max(ads)
        full = [a.score for a in unfloored.search(query.text).ads]
        assert full[: len(ads)] == pytest.approx(ads)  # a prefix of the unfloored list
        shorter += len(full) > len(ads)
    assert shorter > 0


def test_an_override_of_how_queries_become_cis_empties_the_head_cache(built):
    """The cached answers were computed with the saved settings: a query-side override must not serve them."""
    _, _, out, report, _ = built
    assert SearchService.from_build(out).head_cache
    assert SearchService.from_build(out, top_n=7, relative_floor=0.0).head_cache  # ranking side: kept
    changed = SearchService.from_build(out, lexical_min_share=0.95)
    assert not changed.head_cache and changed.config.lexical_min_share == 0.95 != report.serving.lexical_min_share
    head = next(iter(SearchService.from_build(out).head_cache))
    assert changed.search(head).source == "model"


def test_held_out_labels_never_reach_the_build(built, tmp_path):
    """Scrambling every validation and test judgement leaves the CI set and the training data unchanged
    (test judgements change nothing at all: the same settings are chosen)."""
    items, log, out, report, seen = built
    split = load_split(out, log)
    assert split_leaks(split) == [] and split.valid and split.test and split.train
    ads = sorted(items)

    def scrambled(names: tuple[str, ...]) -> QueryLog:
        held = {q.query_id for name in names for q in getattr(split, name)}
        queries = [
            q.model_copy(update={"relevance": {ads[(i * 7) % len(ads)]: 2, ads[(i * 3) % len(ads)]: 1}})
            if q.query_id in held
            else q
            for i, q in enumerate(log.queries)
        ]
        return QueryLog(queries=queries)

    test_report, test_seen = _build(items, scrambled(("test",)), tmp_path / "test")
    assert test_seen == seen
    assert test_report.serving == report.serving and test_report.best_epoch == report.best_epoch
    _, both_seen = _build(items, scrambled(("valid", "test")), tmp_path / "both")
    assert both_seen == seen  # validation picks settings; it never becomes training data
    assert any(p.prompt.startswith("query: ") for p in seen["fmt"])


def test_the_worker_and_ci_serve_load_the_build_with_its_validated_settings(built, tmp_path):
    """`adgen worker` (load_search) and `adgen ci serve` (_service) serve the fused path the build tuned,
    not defaults: same settings, same answer as the evaluated `SearchService.from_build`."""
    from adgen.commands.search import _service
    from adgen.core.config import PathSettings, Settings
    from adgen.processors.worker_app import load_search

    _, log, out, _, _ = built
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "ci").symlink_to(out, target_is_directory=True)
    settings = Settings(paths=PathSettings(index=tmp_path / "index"))
    evaluated = SearchService.from_build(out)
    assert evaluated.config != ServingConfig()  # tuned: loading defaults instead would fail below
    query = load_split(out, log).test[0].text
    for service in (load_search(settings), _service(settings, out)):
        assert service is not None and service.config == ServingConfig.load(out) == evaluated.config
        got, want = service.search(query), evaluated.search(query)
        assert got.source == want.source and got.index_version == want.index_version
        # torch thread counts differ between the loaders (float rounding only)
        assert {c.ci_id: c.prob for c in got.cis} == pytest.approx({c.ci_id: c.prob for c in want.cis}, abs=1e-4)
        assert {a.ad_id: a.score for a in got.ads} == pytest.approx({a.ad_id: a.score for a in want.ads}, abs=1e-4)


def test_the_experiment_records_the_chosen_floor_and_the_docs_render_it(built, tmp_path):
    """`evaluate_build` (what `adgen ci experiment` writes) scores the service as loaded, cuts included,
    records the cuts next to the other settings and the same service without them; the docs block renders it."""
    import numpy as np

    from adgen.commands.search_quality import SERVED, SERVED_NO_FLOOR, evaluate_build
    from adgen.figures.search import RESULT, has_floor, search_floor
    from adgen.figures.sources import Sources

    items, log, out, report, _ = built

    def encode(texts):  # type: ignore[no-untyped-def]  # a cheap stand-in for the sentence encoder
        return np.array([[t.count(c) for c in "aeiourstln"] for t in texts], dtype=np.float32) + 1e-3

    payload = evaluate_build(out, items, log, encode, progress=False)
    assert payload["serving"]["relative_floor"] == report.serving.relative_floor > 0
    assert payload["floor_tolerance"] == TINY.grid.floor_tolerance and has_floor(payload)
    served = next(r for r in payload["rows"] if r["method"] == SERVED)
    bare = payload["served_without_floor"]
    assert bare["method"] == SERVED_NO_FLOOR and bare["avg_ads_per_query"] > served["avg_ads_per_query"]
    if report.serving.min_link_weight == 0 and report.serving.lexical_min_share == 0:
        assert served["ndcg10"] <= bare["ndcg10"]  # a score floor alone only shortens lists: never gains a hit

    (tmp_path / RESULT).parent.mkdir(parents=True)
    (tmp_path / RESULT).write_text(json.dumps({"data": "tiny", **payload}))
    block = search_floor(Sources(tmp_path))
    assert f"relative floor **{report.serving.relative_floor:g}**" in block
    chosen = (report.serving.lexical_min_share, report.serving.min_link_weight, report.serving.relative_floor)
    cuts = ", ".join(f"{c:g}" for c in chosen)
    assert f"| 0 | {cuts} | " in block  # world seed 0's test row
    assert "World seed 1: not measured yet" in block
