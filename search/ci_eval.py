"""Search-path evaluation: HR@K, MAP, ACR and CIs per query, and the BM25 and dense baselines.

Every method is a `Retriever` (query text -> ranked ad ids + how many CIs it used), so RARE-style retrieval
and the baselines run through the same loop on the same queries in one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel
from tqdm.auto import tqdm

from adgen.core.ad_text import ad_text
from adgen.core.catalogue import Item
from adgen.search.ci_index import normalise_text


class Retrieved(BaseModel):
    """One query's answer: ranked ad ids (best first) and the number of CIs behind it (0 for baselines)."""

    ads: list[str]
    num_cis: int = 0


Retriever = Callable[[str], Retrieved]


class LabelledQuery(BaseModel):
    """A query with graded relevance per ad (2 = exact intent, 1 = same category)."""

    query_id: str
    text: str
    relevance: dict[str, int]


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


class MethodReport(BaseModel):
    """One row of the evaluation table."""

    method: str
    queries: int
    hr: dict[str, float]
    map: float
    acr: float
    avg_cis_per_query: float
    avg_ads_per_query: float
    ms_per_query: float


def evaluate(
    name: str,
    retrieve: Retriever,
    queries: Sequence[LabelledQuery],
    ks: Sequence[int] = (50, 100, 500),
    min_grade: int = 2,
    progress: bool = True,
    retrieve_many: Callable[[Sequence[str]], list[Retrieved]] | None = None,
    batch_size: int = 64,
) -> MethodReport:
    """Run `retrieve` on every query; relevant = ads with grade >= min_grade; MAP over the largest K.

    With `retrieve_many`, queries go in batches of `batch_size` (how the CI model is used offline), and
    ms/query is the batched cost.
    """
    if not queries:
        raise ValueError("no labelled queries to evaluate; generate a world with queries first")
    cutoff = max(ks)
    hr = {k: 0.0 for k in ks}
    ap = acr = cis = n_ads = 0.0
    counted = 0
    started = time.perf_counter()
    answers: list[Retrieved] = []
    if retrieve_many is not None:
        for start in tqdm(range(0, len(queries), batch_size), desc=f"eval {name}", disable=not progress):
            answers.extend(retrieve_many([q.text for q in queries[start : start + batch_size]]))
    else:
        answers = [retrieve(q.text) for q in tqdm(queries, desc=f"eval {name}", disable=not progress, leave=False)]
    elapsed = time.perf_counter() - started
    for q, result in zip(queries, answers, strict=True):
        relevant = {ad for ad, g in q.relevance.items() if g >= min_grade}
        ranked = result.ads[:cutoff]
        acr += bool(ranked)
        cis += result.num_cis
        n_ads += len(ranked)
        if not relevant:
            continue
        counted += 1
        for k in ks:
            hr[k] += hit_rate(ranked, relevant, k)
        ap += average_precision(ranked, relevant, cutoff)
    n = len(queries)
    return MethodReport(
        method=name,
        queries=n,
        hr={f"HR@{k}": v / max(counted, 1) for k, v in hr.items()},
        map=ap / max(counted, 1),
        acr=acr / n,
        avg_cis_per_query=cis / n,
        avg_ads_per_query=n_ads / n,
        ms_per_query=1000 * elapsed / n,
    )


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


def markdown_table(reports: Sequence[MethodReport]) -> str:
    """The one evaluation table for docs/search.md."""
    ks = list(reports[0].hr) if reports else []
    head = ["method", *ks, "MAP", "ACR", "CIs/query", "ads/query", "ms/query"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        row = [r.method, *(f"{r.hr[k]:.4f}" for k in ks), f"{r.map:.4f}", f"{r.acr:.3f}"]
        row += [f"{r.avg_cis_per_query:.2f}", f"{r.avg_ads_per_query:.1f}", f"{r.ms_per_query:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
