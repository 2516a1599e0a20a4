"""Search-path evaluation: graded metrics, and the BM25, dense and hybrid baselines.

Every method is a `Retriever` (query text -> ranked ad ids + how many CIs it used), so the CI path and the
baselines run through the same loop on the same queries in one run. Metrics (RARE's, plus graded ones):

- HR@K: share of a query's relevant ads (grade >= `min_grade`) in the top K, averaged over queries;
- NDCG@10: graded, gain 2^grade - 1, ideal list from every graded ad of the query;
- MAP over the top `cutoff`, normalised by min(|relevant|, cutoff);
- ACR: share of queries answered with at least one ad; CIs/query; ads/query (the mean list length);
- off-intent@10: share of the top 10 served ads with no positive grade, averaged over answered queries. Where
  the labels grade every ad of the intent's enclosing category (the synthetic world does), these are ads of
  another category: what a relative score floor should remove. On a log with sparse judgements it counts
  unjudged ads too, so it is an upper bound there.

HR, NDCG and MAP read the returned list as it is: a shorter list (the floor) only ever loses hits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from adgen.core.ad_text import ad_text
from adgen.core.catalogue import Item
from adgen.search.ci_index import normalise_text
from adgen.search.query_log import LoggedQuery

HR_KS = (10, 50)
NDCG_K = 10
MAP_CUTOFF = 100
OFF_INTENT_K = 10


class Retrieved(BaseModel):
    """One query's answer: ranked ad ids (best first) and the number of CIs behind it (0 for baselines)."""

    ads: list[str]
    num_cis: int = 0


Retriever = Callable[[str], Retrieved]
BatchRetriever = Callable[[Sequence[str]], list[Retrieved]]


def hit_rate(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant ads found in the top k (recall@k, RARE's HR@K)."""
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def average_precision(ranked: Sequence[str], relevant: set[str], cutoff: int) -> float:
    """AP over the top `cutoff`, normalised by min(|relevant|, cutoff) so a perfect list scores 1."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, ad in enumerate(ranked[:cutoff], start=1):
        if ad in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), cutoff)


def ndcg(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    """Graded NDCG@k with gain 2^grade - 1; 0 when no ad has a positive grade."""
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    if idcg == 0:
        return 0.0
    dcg = sum((2 ** grades.get(ad, 0) - 1) / math.log2(i + 2) for i, ad in enumerate(ranked[:k]))
    return dcg / idcg


def off_intent_share(ranked: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    """Share of the top k served ads with no positive grade (0 for an empty list)."""
    shown = ranked[:k]
    if not shown:
        return 0.0
    return sum(1 for ad in shown if grades.get(ad, 0) <= 0) / len(shown)


class MethodReport(BaseModel):
    """One row of an evaluation table."""

    method: str
    queries: int
    hr: dict[str, float]
    ndcg10: float
    map: float
    acr: float
    avg_cis_per_query: float
    avg_ads_per_query: float
    ms_p50: float
    ms_mean: float
    off_intent10: float | None = Field(
        None, description="Mean share of off-intent ads in the served top 10 (None: a report from before it)."
    )


def score_answers(
    name: str,
    queries: Sequence[LoggedQuery],
    answers: Sequence[Retrieved],
    latencies_ms: Sequence[float],
    min_grade: int = 2,
    ks: Sequence[int] = HR_KS,
) -> MethodReport:
    """The metrics of `answers[i]` for `queries[i]`; HR and MAP over queries with a relevant ad."""
    if not queries:
        raise ValueError("no labelled queries to evaluate")
    hr = {k: 0.0 for k in ks}
    ap = gain = acr = cis = n_ads = off = 0.0
    counted = graded = answered = 0
    for q, result in zip(queries, answers, strict=True):
        ranked = result.ads
        acr += bool(ranked)
        cis += result.num_cis
        n_ads += len(ranked)
        if any(g > 0 for g in q.relevance.values()):
            graded += 1
            gain += ndcg(ranked, q.relevance, NDCG_K)
            if ranked:
                answered += 1
                off += off_intent_share(ranked, q.relevance, OFF_INTENT_K)
        relevant = q.relevant(min_grade)
        if relevant:
            counted += 1
            for k in ks:
                hr[k] += hit_rate(ranked, relevant, k)
            ap += average_precision(ranked, relevant, MAP_CUTOFF)
    n = len(queries)
    return MethodReport(
        method=name,
        queries=n,
        hr={f"HR@{k}": v / max(counted, 1) for k, v in hr.items()},
        ndcg10=gain / max(graded, 1),
        map=ap / max(counted, 1),
        acr=acr / n,
        avg_cis_per_query=cis / n,
        avg_ads_per_query=n_ads / n,
        ms_p50=float(np.percentile(latencies_ms, 50)) if latencies_ms else 0.0,
        ms_mean=float(np.mean(latencies_ms)) if latencies_ms else 0.0,
        off_intent10=off / max(answered, 1),
    )


def evaluate(
    name: str,
    retrieve: Retriever,
    queries: Sequence[LoggedQuery],
    min_grade: int = 2,
    progress: bool = True,
) -> MethodReport:
    """Run `retrieve` on every query one at a time (latency = one query's wall time) and score it."""
    answers, latencies = [], []
    for q in tqdm(queries, desc=f"eval {name}", disable=not progress, leave=False):
        t0 = time.perf_counter()
        answers.append(retrieve(q.text))
        latencies.append(1000 * (time.perf_counter() - t0))
    return score_answers(name, queries, answers, latencies, min_grade)


def evaluate_batched(
    name: str,
    retrieve_many: BatchRetriever,
    queries: Sequence[LoggedQuery],
    min_grade: int = 2,
    batch_size: int = 64,
) -> MethodReport:
    """Like `evaluate` in batches (how settings are compared on validation); latency = batch time / size."""
    answers: list[Retrieved] = []
    latencies: list[float] = []
    for start in range(0, len(queries), batch_size):
        chunk = [q.text for q in queries[start : start + batch_size]]
        t0 = time.perf_counter()
        answers.extend(retrieve_many(chunk))
        latencies.extend([1000 * (time.perf_counter() - t0) / len(chunk)] * len(chunk))
    return score_answers(name, queries, answers, latencies, min_grade)


def _tokens(text: str) -> list[str]:
    return normalise_text(text).split()


class BM25Retriever:
    """Lexical baseline: BM25Okapi (rank-bm25) over each ad's template text; ads scoring 0 are not returned."""

    def __init__(self, items: Mapping[str, Item], top_n: int = 500) -> None:
        from rank_bm25 import BM25Okapi

        self.ad_ids = list(items)
        self.bm25 = BM25Okapi([_tokens(ad_text(items[a])) for a in self.ad_ids])
        self.top_n = top_n

    def __call__(self, query: str) -> Retrieved:
        scores = self.bm25.get_scores(_tokens(query))
        return Retrieved(ads=_top(self.ad_ids, scores, self.top_n, positive_only=True))


class DenseRetriever:
    """Dense baseline: cosine between the query and each ad's template text with the same sentence encoder."""

    def __init__(self, items: Mapping[str, Item], encode: Callable[[Sequence[str]], np.ndarray], top_n: int = 500):
        self.ad_ids = list(items)
        self.encode = encode
        self.matrix = _unit(encode([ad_text(items[a]) for a in self.ad_ids]))
        self.top_n = top_n

    def __call__(self, query: str) -> Retrieved:
        vec = _unit(self.encode([query]))[0]
        return Retrieved(ads=_top(self.ad_ids, self.matrix @ vec, self.top_n, positive_only=False))


class HybridRetriever:
    """Reciprocal-rank fusion of two rankings: score(ad) = sum over lists of weight / (k + rank).

    `k` and the lexical weight are settings like any other: chosen on validation (`tune_hybrid`).
    """

    def __init__(
        self, lexical: Retriever, dense: Retriever, k: float = 60.0, lexical_weight: float = 0.5, top_n: int = 500
    ) -> None:
        self.lexical, self.dense = lexical, dense
        self.k, self.lexical_weight, self.top_n = k, lexical_weight, top_n

    def fuse(self, lexical: Sequence[str], dense: Sequence[str]) -> Retrieved:
        scores: dict[str, float] = {}
        for weight, ranked in ((self.lexical_weight, lexical), (1 - self.lexical_weight, dense)):
            for rank, ad in enumerate(ranked, start=1):
                scores[ad] = scores.get(ad, 0.0) + weight / (self.k + rank)
        return Retrieved(ads=[a for a, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))][: self.top_n])

    def __call__(self, query: str) -> Retrieved:
        return self.fuse(self.lexical(query).ads, self.dense(query).ads)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top(ids: Sequence[str], scores: np.ndarray, n: int, positive_only: bool) -> list[str]:
    scores = np.asarray(scores)
    n = min(n, len(ids))
    if n == 0:
        return []
    idx = np.argpartition(-scores, n - 1)[:n]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    if positive_only:
        idx = idx[scores[idx] > 0]
    return [ids[i] for i in idx]
