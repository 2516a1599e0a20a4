"""What the service serves: query -> CIs (CI model fused with lexical CI matching) -> ranked ads.

Pure logic over a CI index, the CI model and the CI set; no Kafka, Redis or HTTP. The worker's
`SearchService` (processors/query_retrieval.py) and the evaluation both call `CIQueryMapper` and
`rank_ads`, so the evaluated path and the served path are the same code.

Two kinds of evidence pick a query's CIs:

- the CI model's constrained beam search over the CI trie (RARE): beam log-probs -> probabilities;
- lexical matching of the query against the CI texts: character 3-4-gram TF-IDF cosine (scikit-learn's
  `TfidfVectorizer`, chosen over a hand-written n-gram index because it is the same thing, kept by others),
  which survives typos and template words and never picks a CI with no words of the query.

Their mixture `(1 - w) * p_model + w * p_lexical` is the query's CI distribution; `w` and every other knob
of `ServingConfig` is chosen on validation queries (`search/ci_tuning.py`) and stored next to the build.
An ad's score is `sum over the query's CIs of p(ci) * weight(ci, ad)`, plus, optionally, how well the ad's
own CIs match the query's words (ranking ads inside a CI by query-ad match). Two cuts then end the list
where the evidence runs out:

- support: an ad whose every link to the query's CIs weighs below `min_link_weight` is dropped. Such an ad
  is reached only through CIs the model guessed for it with little confidence (catalogue CIs weigh 1.0), which
  is how a road bike or a tent reaches a storage or trackpad query;
- score: ads scoring below `relative_floor * the query's best score` are dropped.

A third cut acts on the query side: lexical CIs whose cosine is below `lexical_min_share` of the query's best
cosine are not proposed at all. Character n-grams let "cycling" reach "recycled chinos"; at temperature 0.05
such a CI gets almost no probability, but every ad of it would still enter the union.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from adgen.core.catalogue import Item
from adgen.index.trie_arrays import TrieArrays
from adgen.search.ci_data import AD_PROMPT, ad_prompt_text, item_ci_candidates, strip_template
from adgen.search.ci_index import CIIndex, CISet
from adgen.search.ci_model import CIModel, probabilities, query_cis

SERVING_FILE = "serving.json"
MATCH_CACHE_SIZE = 4096  # queries whose query-ad match is remembered (a few MB at most)


class ServingConfig(BaseModel):
    """How queries become CIs and ads. Defaults are a starting point; `adgen ci build` tunes them."""

    top_cis: int = Field(10, ge=1, description="B: CIs kept per query from the model.")
    beams: int = Field(20, ge=1)
    score_floor: float | None = Field(-6.0, description="Per-token log-prob below which a CI branch is cut.")
    lexical_weight: float = Field(0.0, ge=0, le=1, description="Share of p(ci | query) from lexical CI matching.")
    lexical_top: int = Field(5, ge=1, description="CIs the lexical matcher proposes per query.")
    lexical_temperature: float = Field(0.05, gt=0, description="Softmax temperature over lexical cosines.")
    lexical_min_share: float = Field(
        0.0, ge=0, lt=1, description="Lexical CIs below this share of the query's best cosine are dropped (0: none)."
    )
    strip_templates: bool = Field(False, description="Match the query without its template ('top rated {}').")
    templates: list[str] = Field(default_factory=list, description="Query templates mined from training queries.")
    ad_match_weight: float = Field(0.0, ge=0, description="Weight of the query-ad match inside the CIs' union.")
    top_n: int = Field(500, ge=1, description="Ads returned per query.")
    relative_floor: float = Field(
        0.0, ge=0, lt=1, description="Ads scoring below this share of the query's best ad are dropped (0: none)."
    )
    min_link_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Ads linked to the query's CIs only by weights below this are dropped (0: none; 1: catalogue "
        "CIs only).",
    )
    cis_per_ad: int = Field(5, ge=0, description="Model-generated CIs kept per ad (on top of catalogue CIs).")
    ad_beams: int = Field(30, ge=1, description="Beams when the model generates an ad's CIs.")
    model_weight: float = Field(0.5, ge=0, le=1, description="Weight of a model CI (x its probability) vs 1.0.")

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SERVING_FILE
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, directory: Path) -> ServingConfig:
        """The tuned settings of a build directory, or the defaults when it has none (older builds)."""
        path = Path(directory) / SERVING_FILE
        return cls.model_validate_json(path.read_text()) if path.is_file() else cls()


#: ServingConfig fields that change a query's CI distribution (what a head cache holds); a new query-side field
#: belongs here too, or `SearchService.from_build` keeps serving cached answers computed without it.
QUERY_SIDE_SETTINGS = (
    "top_cis",
    "beams",
    "score_floor",
    "lexical_weight",
    "lexical_top",
    "lexical_temperature",
    "lexical_min_share",
    "strip_templates",
    "templates",
)


class LexicalCIMatcher:
    """Character n-gram TF-IDF cosine between queries and CI texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, dtype=np.float32)
        self.matrix = self.vectorizer.fit_transform(list(texts) or ["-"]).T.tocsr()
        self.size = len(texts)

    def similarities(self, queries: Sequence[str]) -> np.ndarray:
        """Cosine of every (query, CI) pair, shape [queries, CIs]."""
        if not queries or not self.size:
            return np.zeros((len(queries), self.size), dtype=np.float32)
        return np.asarray((self.vectorizer.transform(list(queries)) @ self.matrix).todense(), dtype=np.float32)


def lexical_distribution(row: np.ndarray, k: int, temperature: float, min_share: float = 0.0) -> dict[int, float]:
    """The top-k CIs of one similarity row as a softmax over cosine / temperature (zero cosines left out, and
    cosines below `min_share` of the best one)."""
    if row.size == 0:
        return {}
    k = min(k, row.size)
    top = np.argpartition(-row, k - 1)[:k]
    top = [int(i) for i in top if row[i] > 0]
    if not top:
        return {}
    best = max(float(row[i]) for i in top)
    top = [i for i in top if float(row[i]) >= min_share * best]
    weights = {i: math.exp((float(row[i]) - best) / temperature) for i in top}
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


def fuse(model: Mapping[int, float], lexical: Mapping[int, float], lexical_weight: float) -> dict[int, float]:
    """(1 - w) * p_model + w * p_lexical; either side alone when the other is empty."""
    if not lexical or lexical_weight == 0:
        return dict(model)
    if not model or lexical_weight == 1:
        return dict(lexical)
    out = {ci: (1 - lexical_weight) * p for ci, p in model.items()}
    for ci, p in lexical.items():
        out[ci] = out.get(ci, 0.0) + lexical_weight * p
    return out


class CIQueryMapper:
    """Normalised queries -> their CI distributions, by the CI model and lexical matching per `config`."""

    def __init__(self, model: CIModel, trie: TrieArrays, ci_set: CISet, config: ServingConfig | None = None) -> None:
        self.model = model
        self.trie = trie
        self.config = config or ServingConfig()
        self.lexical = LexicalCIMatcher(ci_set.texts)
        self._ci_match = functools.lru_cache(maxsize=MATCH_CACHE_SIZE)(self._ci_match_uncached)

    def model_cis(self, normalised: Sequence[str]) -> list[dict[int, float]]:
        cfg = self.config
        return query_cis(self.model, self.trie, normalised, cfg.top_cis, cfg.beams, cfg.score_floor)

    def lexical_input(self, normalised: str) -> str:
        cfg = self.config
        return strip_template(normalised, cfg.templates) if cfg.strip_templates else normalised

    def similarities(self, normalised: Sequence[str]) -> np.ndarray:
        """Lexical cosine of each query (template stripped if configured) with every CI."""
        return self.lexical.similarities([self.lexical_input(q) for q in normalised])

    def __call__(self, normalised: Sequence[str]) -> list[dict[int, float]]:
        cfg = self.config
        if not normalised:
            return []
        model = self.model_cis(normalised) if cfg.lexical_weight < 1 else [{} for _ in normalised]
        if cfg.lexical_weight == 0:
            return model
        return [
            fuse(
                m,
                lexical_distribution(row, cfg.lexical_top, cfg.lexical_temperature, cfg.lexical_min_share),
                cfg.lexical_weight,
            )
            for m, row in zip(model, self.similarities(normalised), strict=True)
        ]

    def ci_match(self, normalised: str) -> Mapping[int, float]:
        """Non-zero lexical cosines of one query with the CIs (the query-ad match of `rank_ads`), or {} when
        the configuration does not use them. Memoised per query (a pure function of the query and the fixed
        CI set): a head-cache hit then costs no TF-IDF transform. Callers must not mutate the result."""
        if self.config.ad_match_weight <= 0:
            return {}
        return self._ci_match(normalised)

    def _ci_match_uncached(self, normalised: str) -> Mapping[int, float]:
        row = self.similarities([normalised])[0]
        return {int(i): float(row[i]) for i in np.flatnonzero(row)}

    def rank(self, index: CIIndex, normalised: str, ci_scores: Mapping[int, float], top_n: int | None = None):
        """The served ranking of one query's ads (`rank_ads` with this configuration)."""
        cfg = self.config
        match = self.ci_match(normalised)
        return rank_ads(
            index, ci_scores, top_n or cfg.top_n, match, cfg.ad_match_weight, cfg.relative_floor, cfg.min_link_weight
        )


def rank_ads(
    index: CIIndex,
    ci_scores: Mapping[int, float],
    top_n: int,
    ci_match: Mapping[int, float] | None = None,
    ad_match_weight: float = 0.0,
    relative_floor: float = 0.0,
    min_link_weight: float = 0.0,
) -> list[tuple[str, float]]:
    """Union of the CIs' ads scored by sum_ci p(ci) * weight(ci, ad), best first (ties by ad id).

    With `ci_match` (query cosine per CI) and `ad_match_weight` > 0, each ad of the union also gains
    `ad_match_weight * max over the ad's own CIs of cosine(query, CI)`: inside one CI, the ad whose other
    intentions share more of the query's words ranks first.

    With `min_link_weight` > 0, ads none of whose links to the query's CIs weighs at least that much are dropped
    before ranking (their score still sums every link). With `relative_floor` > 0, ads scoring below
    `relative_floor * best score` are then dropped, so the list ends where the evidence for the query's intent
    runs out instead of at `top_n` (0 and 0 keep the top `top_n`).

    Reads one immutable view of the index throughout, so ads added or removed meanwhile never show half
    applied (as `CIIndex.rank`, which this equals when `ad_match_weight`, `relative_floor` and
    `min_link_weight` are 0).
    """
    if not 0 <= relative_floor < 1:
        raise ValueError(f"relative_floor must be in [0, 1) (a share of the best score), got {relative_floor!r}")
    if not 0 <= min_link_weight <= 1:
        raise ValueError(f"min_link_weight must be in [0, 1] (an ad-CI link weight), got {min_link_weight!r}")
    view = index.view
    scores: dict[str, float] = {}
    for ci, p in ci_scores.items():
        for ad, w in view.ci_ads.get(ci, {}).items():
            scores[ad] = scores.get(ad, 0.0) + p * w
    if min_link_weight > 0:  # a second pass over the links, paid only by a build that chose the cut
        supported = {ad for ci in ci_scores for ad, w in view.ci_ads.get(ci, {}).items() if w >= min_link_weight}
        scores = {ad: s for ad, s in scores.items() if ad in supported}
    if ci_match and ad_match_weight > 0:
        for ad in scores:
            cis = view.ad_cis.get(ad, {})
            scores[ad] += ad_match_weight * max((ci_match.get(ci, 0.0) for ci in cis), default=0.0)
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    if relative_floor > 0 and ranked and ranked[0][1] > 0:
        cut = relative_floor * ranked[0][1]
        ranked = [(ad, score) for ad, score in ranked if score >= cut]
    return ranked


# --- ads ------------------------------------------------------------------------------------------------


def catalogue_cis(item: Item, ci_set: CISet) -> list[int]:
    """The CIs of the set that the ad's own catalogue fields propose (a lookup, no model)."""
    found = {ci_set.id_of(text) for text in item_ci_candidates(item)}
    return sorted(ci for ci in found if ci is not None)


def ad_ci_weights(
    catalogue: Sequence[int], generated: Sequence[tuple[int, float]], cis_per_ad: int, model_weight: float
) -> dict[int, float]:
    """An ad's CI -> weight: 1.0 for its catalogue CIs, `model_weight * p` for the top `cis_per_ad` CIs the
    model generated (p = probability among all generated beams). An ad with no catalogue CI keeps at least
    its best generated one, so every ad stays reachable."""
    probs = probabilities(generated)
    ranked = sorted(probs, key=lambda ci: (-probs[ci], ci))
    keep = ranked[:cis_per_ad] if catalogue else ranked[: max(cis_per_ad, 1)]
    weights = {ci: model_weight * probs[ci] for ci in keep}
    weights.update({ci: 1.0 for ci in catalogue})
    return weights


def assign_ads(
    model: CIModel, trie: TrieArrays, ci_set: CISet, items: Sequence[Item], config: ServingConfig
) -> dict[str, dict[int, float]]:
    """CI weights of new or changed ads, exactly as the build weights its ads (catalogue CIs + the top
    model CIs of an `ad_beams`-wide constrained search into the existing CI set)."""
    if not items:
        return {}
    prompts = [AD_PROMPT.format(text=ad_prompt_text(item)) for item in items]
    rows = model.generate(prompts, trie, k=config.ad_beams, beams=config.ad_beams)
    return {
        item.item_id: ad_ci_weights(catalogue_cis(item, ci_set), row, config.cis_per_ad, config.model_weight)
        for item, row in zip(items, rows, strict=True)
    }
