"""Choosing the serving settings on validation queries, in four stages.

1. decoding: beam width and score floor of the CI model (the pure CI path, catalogue + model CIs per ad);
2. ads: model CIs kept per ad and their weight against catalogue CIs (pure CI path);
3. fusion: lexical CI matching's share, its top-k, template stripping, query-ad match inside CIs (served);
4. floor: the three cuts of the served list, lexical share (`lexical_min_share`), support (`min_link_weight`)
   and score (`relative_floor`), tried together (`choose_floor`).

Each stage keeps the best setting of the stages before it. The objective is the mean of NDCG@10 and HR@50
on validation, the two figures the CI path must win on; test queries are never seen here. Every row of
the search lands in the build report, so the choice can be audited.

The floor needs a rule of its own: a cut only removes ads, and a score cut only the tail of a list, which can
never raise HR or NDCG, so the objective alone would keep no cut. Cuts buy precision instead: the cuts kept are
the ones serving the fewest off-intent ads in the top 10 among those that cost the objective at most
`floor_tolerance` against the best. (The support cut can raise the objective: the ads it drops may sit above
relevant ones.)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated

from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from adgen.index.trie_arrays import TrieArrays
from adgen.search.ci_data import strip_template
from adgen.search.ci_eval import MethodReport, Retrieved, score_answers
from adgen.search.ci_index import CIIndex, CISet
from adgen.search.ci_model import CIModel, query_cis
from adgen.search.ci_serving import (
    LexicalCIMatcher,
    ServingConfig,
    ad_ci_weights,
    fuse,
    lexical_distribution,
    rank_ads,
)
from adgen.search.query_log import LoggedQuery

CIRows = list[dict[int, float]]  # one {CI id: probability} (or cosine) per validation query


class TuningGrid(BaseModel):
    """The settings tried per stage (simplest first: on a tie the earlier one is kept)."""

    beams: list[int] = [10, 20, 40]
    score_floor: list[float | None] = [None, -6.0, -3.0]
    cis_per_ad: list[int] = [0, 5, 15, 30]
    model_weight: list[float] = [0.25, 0.5, 1.0]
    lexical_weight: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0]
    lexical_top: list[int] = [5, 10, 20]
    strip_templates: list[bool] = [False, True]
    ad_match_weight: list[float] = [0.0, 0.5]
    relative_floor: list[Annotated[float, Field(ge=0, lt=1)]] = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
    min_link_weight: list[Annotated[float, Field(ge=0, le=1)]] = [0.0, 0.1, 0.2, 0.5, 1.0]
    lexical_min_share: list[Annotated[float, Field(ge=0, lt=1)]] = [0.0, 0.3, 0.5, 0.7]
    floor_tolerance: float = Field(
        0.005, ge=0, description="Validation objective a relative floor may cost (0.005: half a point)."
    )


class TuningRow(BaseModel):
    stage: str
    settings: dict[str, object]
    objective: float
    ndcg10: float
    hr50: float
    hr10: float
    map: float
    ads_per_query: float | None = None
    off_intent10: float | None = None


class TuningResult(BaseModel):
    pure: ServingConfig
    served: ServingConfig
    pure_valid: MethodReport
    served_valid: MethodReport
    rows: list[TuningRow]


def objective(report: MethodReport) -> float:
    """Mean of NDCG@10 and HR@50: the two figures the CI path is judged on."""
    return (report.ndcg10 + report.hr["HR@50"]) / 2


class Cuts(BaseModel):
    """The served list's three cuts (see `search/ci_serving.py`)."""

    relative_floor: float = 0.0
    min_link_weight: float = 0.0
    lexical_min_share: float = 0.0

    def strength(self) -> tuple[float, float, float]:
        """Order of preference on a tie: the lower score floor, then support cut, then lexical share."""
        return self.relative_floor, self.min_link_weight, self.lexical_min_share


def choose_floor(candidates: Sequence[tuple[Cuts, MethodReport]], tolerance: float) -> tuple[Cuts, MethodReport]:
    """The (cuts, report) serving the fewest off-intent ads in the top 10 among those whose objective is
    within `tolerance` of the best candidate's; ties keep the weaker cuts (`Cuts.strength`)."""
    if not candidates:
        raise ValueError("no cut to choose from: a list of the grid's cuts is empty")
    best = max(objective(report) for _, report in candidates)
    kept = [(cuts, report) for cuts, report in candidates if objective(report) >= best - tolerance]
    return min(kept, key=lambda cr: (cr[1].off_intent10 or 0.0, *cr[0].strength()))


def build_index(
    ci_set: CISet,
    catalogue: Mapping[str, Sequence[int]],
    generated: Mapping[str, Sequence[tuple[int, float]]],
    config: ServingConfig,
    version: str | None = None,
) -> CIIndex:
    """The CI index for a set of ads: catalogue CIs plus the kept model CIs per `config`."""
    index = CIIndex(ci_set, version=version)
    for ad in sorted(set(catalogue) | set(generated)):
        weights = ad_ci_weights(catalogue.get(ad, ()), generated.get(ad, ()), config.cis_per_ad, config.model_weight)
        if weights:
            index.set_ad(ad, weights)
    return index


def tune_serving(
    ci_model: CIModel,
    trie: TrieArrays,
    ci_set: CISet,
    catalogue: Mapping[str, Sequence[int]],
    generated: Mapping[str, Sequence[tuple[int, float]]],
    valid: Sequence[LoggedQuery],
    base: ServingConfig,
    grid: TuningGrid | None = None,
    min_grade: int = 2,
    progress: bool = True,
) -> TuningResult:
    """Pick the pure-CI and the served settings on `valid` (see module doc)."""
    grid = grid or TuningGrid()
    if not valid:
        raise ValueError("no validation queries to tune on; the query log needs labelled queries")
    texts = [q.normalised for q in valid]
    rows: list[TuningRow] = []

    def score(
        stage: str,
        settings: dict[str, object],
        ci_rows: CIRows,
        index: CIIndex,
        match: CIRows | None = None,
        match_weight: float = 0.0,
        cuts: Cuts | None = None,
    ) -> MethodReport:
        cuts = cuts or Cuts()
        answers = []
        for i, cis in enumerate(ci_rows):
            row_match = match[i] if match else None
            ranked = rank_ads(
                index, cis, base.top_n, row_match, match_weight, cuts.relative_floor, cuts.min_link_weight
            )
            answers.append(Retrieved(ads=[a for a, _ in ranked], num_cis=len(cis)))
        report = score_answers(stage, valid, answers, [], min_grade)
        rows.append(
            TuningRow(
                stage=stage,
                settings=settings,
                objective=objective(report),
                ndcg10=report.ndcg10,
                hr50=report.hr["HR@50"],
                hr10=report.hr["HR@10"],
                map=report.map,
                ads_per_query=report.avg_ads_per_query,
                off_intent10=report.off_intent10,
            )
        )
        return report

    decode_grid = list(itertools.product(grid.beams, grid.score_floor))
    bar = tqdm(total=len(decode_grid), desc="tune decoding (validation)", disable=not progress, leave=False)
    base_index = build_index(ci_set, catalogue, generated, base)
    decoded: dict[tuple[int, float | None], list[dict[int, float]]] = {}
    best: tuple[float, int, float | None, MethodReport] | None = None
    for beams, floor in decode_grid:
        decoded[beams, floor] = query_cis(ci_model, trie, texts, base.top_cis, max(beams, base.top_cis), floor)
        report = score("decoding", {"beams": beams, "score_floor": floor}, decoded[beams, floor], base_index)
        if best is None or objective(report) > best[0]:
            best = (objective(report), beams, floor, report)
        bar.update(1)
    bar.close()
    assert best is not None
    pure = base.model_copy(
        update={"beams": best[1], "score_floor": best[2], "lexical_weight": 0.0, **Cuts().model_dump()}
    )
    model_rows = decoded[pure.beams, pure.score_floor]

    best_ads: tuple[float, ServingConfig, CIIndex, MethodReport] | None = None
    for per_ad, weight in itertools.product(grid.cis_per_ad, grid.model_weight):
        cfg = pure.model_copy(update={"cis_per_ad": per_ad, "model_weight": weight})
        index = build_index(ci_set, catalogue, generated, cfg)
        report = score("ads", {"cis_per_ad": per_ad, "model_weight": weight}, model_rows, index)
        if best_ads is None or objective(report) > best_ads[0]:
            best_ads = (objective(report), cfg, index, report)
    assert best_ads is not None
    _, pure, pure_index, pure_report = best_ads

    matcher = LexicalCIMatcher(ci_set.texts)
    sims = {
        strip: matcher.similarities([strip_template(t, base.templates) if strip else t for t in texts])
        for strip in grid.strip_templates
    }
    best_served: tuple[float, ServingConfig, MethodReport, CIRows | None] | None = None
    for weight, top, strip, match_w in itertools.product(
        grid.lexical_weight, grid.lexical_top, grid.strip_templates, grid.ad_match_weight
    ):
        if weight == 0 and top != grid.lexical_top[0]:
            continue  # the lexical top-k does nothing without lexical evidence
        if weight == 0 and match_w == 0 and strip != grid.strip_templates[0]:
            continue  # neither does template stripping
        rows_sims = sims[strip]
        fused = [
            fuse(m, lexical_distribution(r, top, base.lexical_temperature), weight)
            for m, r in zip(model_rows, rows_sims, strict=True)
        ]
        match = [{int(i): float(r[i]) for i in r.nonzero()[0]} for r in rows_sims] if match_w > 0 else None
        settings = {"lexical_weight": weight, "lexical_top": top, "strip_templates": strip, "ad_match_weight": match_w}
        report = score("fusion", settings, fused, pure_index, match, match_w)
        if best_served is None or objective(report) > best_served[0]:
            best_served = (objective(report), pure.model_copy(update=settings), report, match)
    assert best_served is not None
    _, served, _, match = best_served

    candidates = []
    shares = sorted({0.0, *grid.lexical_min_share}) if served.lexical_weight > 0 else [0.0]
    for share in shares:  # the lexical share changes the query's CIs; the other two cuts only the ranking
        fused = [
            fuse(m, lexical_distribution(r, served.lexical_top, base.lexical_temperature, share), served.lexical_weight)
            for m, r in zip(model_rows, sims[served.strip_templates], strict=True)
        ]
        for link, floor in itertools.product(sorted({0.0, *grid.min_link_weight}), sorted({0.0, *grid.relative_floor})):
            cuts = Cuts(relative_floor=floor, min_link_weight=link, lexical_min_share=share)
            report = score("floor", cuts.model_dump(), fused, pure_index, match, served.ad_match_weight, cuts)
            candidates.append((cuts, report))
    cuts, served_report = choose_floor(candidates, grid.floor_tolerance)
    served = served.model_copy(update=cuts.model_dump())
    return TuningResult(pure=pure, served=served, pure_valid=pure_report, served_valid=served_report, rows=rows)
