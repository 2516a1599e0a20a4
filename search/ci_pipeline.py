"""The offline RARE build: catalogue -> CI proposals -> CI set -> two-stage CI model -> CIs for every ad
-> CI index + head-query cache -> snapshot. `adgen ci build` runs it; running it again is the periodic
full rebuild (new CI set, new model, new snapshot version; readers switch to the newest valid snapshot).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from adgen.core.catalogue import Item
from adgen.search.ci_data import (
    AD_PROMPT,
    QueryIntent,
    ad_prompt_text,
    augmented_query_pairs,
    format_pairs,
    intent_phrase,
    knowledge_pairs,
    mine_templates,
    propose_cis,
    query_split,
)
from adgen.search.ci_eval import LabelledQuery
from adgen.search.ci_index import (
    CIIndex,
    CleaningConfig,
    CleaningReport,
    build_ci_set,
    normalise_text,
    save_snapshot,
)
from adgen.search.ci_model import CIModelConfig, assign_cis, query_cis, train_ci_model

Embed = Callable[[Sequence[str]], np.ndarray]


class CIBuildConfig(BaseModel):
    """Everything `adgen ci build` decides, written next to the snapshot for reproducibility."""

    cleaning: CleaningConfig = CleaningConfig()
    model: CIModelConfig = CIModelConfig()
    eval_share: float = Field(0.5, ge=0, lt=1, description="Share of labelled queries held out for evaluation.")
    augment_per_ci: int = Field(3, ge=0)
    max_knowledge_pairs: int | None = Field(1500, ge=1, description="Seeded sample of stage-1 facts (CPU budget).")
    cis_per_ad: int | None = Field(1, ge=1, description="Ad -> CI training pairs per ad (None = all).")
    typo_rate: float = Field(0.3, ge=0, le=1)
    assign_k: int = Field(5, ge=1, description="CIs generated per ad by constrained inference.")
    assign_min_prob: float = Field(0.1, ge=0, le=1)
    model_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of a model-assigned CI relative to a catalogue-derived one (1.0)."
    )
    head_cache_size: int = Field(200, ge=0)
    top_cis: int = Field(10, ge=1)
    beams: int = Field(20, ge=1)
    score_floor: float | None = -6.0


class CIBuildReport(BaseModel):
    snapshot: str
    version: str
    ads: int
    cis: int
    cleaning: CleaningReport
    knowledge_pairs: int
    format_pairs: int
    templates: list[str]
    ads_without_cis: int
    avg_cis_per_ad: float
    head_cache_entries: int
    seconds: dict[str, float]


def split_queries(labels: Sequence[object], eval_share: float) -> tuple[list[QueryIntent], list[LabelledQuery]]:
    """World query labels -> (training queries with intent phrase + exact ads, held-out evaluation queries)."""
    train: list[QueryIntent] = []
    held_out: list[LabelledQuery] = []
    for label in labels:
        qid, text, relevance = label.query_id, label.text, label.relevance  # type: ignore[attr-defined]
        if query_split(qid, eval_share) == "eval":
            held_out.append(LabelledQuery(query_id=qid, text=text, relevance=relevance))
        else:
            phrase = intent_phrase(getattr(label, "intent", "") or "")
            exact = sorted(ad for ad, grade in relevance.items() if grade >= 2)
            train.append(QueryIntent(query_id=qid, text=text, intent=phrase, exact_ads=exact))
    return train, held_out


def build_search_index(
    items: Mapping[str, Item],
    out_dir: Path,
    config: CIBuildConfig | None = None,
    train_queries: Sequence[QueryIntent] = (),
    query_log: Sequence[str] = (),
    embed: Embed | None = None,
    extra_proposals: Mapping[str, Sequence[str]] | None = None,
) -> CIBuildReport:
    """Run the whole offline build into `out_dir` (model/, snapshots/ci-*/, build_report.json)."""
    config = config or CIBuildConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    proposals = propose_cis(items, train_queries, extra_proposals)
    ci_set, teacher, cleaning = build_ci_set(proposals, embed, config.cleaning)
    seconds["ci_set"] = time.perf_counter() - t

    t = time.perf_counter()
    templates = mine_templates(train_queries)
    know = knowledge_pairs(items, ci_set, teacher)
    if config.max_knowledge_pairs is not None and len(know) > config.max_knowledge_pairs:
        know = random.Random(config.model.seed).sample(know, config.max_knowledge_pairs)
    fmt = format_pairs(items, ci_set, teacher, train_queries, config.cis_per_ad, seed=config.model.seed)
    fmt += augmented_query_pairs(ci_set, templates, config.augment_per_ci, config.typo_rate, seed=config.model.seed)
    ci_model, _ = train_ci_model(know, fmt, ci_set, out_dir / "train", config.model)
    ci_model.save(out_dir / "model")
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    sequences = ci_model.ci_sequences(ci_set)
    trie = ci_model.ci_trie(ci_set)
    ad_ids = list(items)
    prompts = [AD_PROMPT.format(text=ad_prompt_text(items[a])) for a in ad_ids]
    generated = assign_cis(ci_model, trie, prompts, k=config.assign_k, min_prob=config.assign_min_prob)
    index = CIIndex(ci_set)
    for ad_id, model_cis in zip(ad_ids, generated, strict=True):
        weights = {ci: config.model_weight * p for ci, p in model_cis.items()}
        weights.update({ci: 1.0 for ci in teacher.get(ad_id, ())})
        index.set_ad(ad_id, weights)
    index.check_consistency()
    seconds["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    freq = Counter(q for q in query_log if q)
    head_norm: Counter[str] = Counter()
    for text, n in freq.items():
        q = normalise_text(text)
        if q:
            head_norm[q] += n
    head = [q for q, _ in head_norm.most_common(config.head_cache_size)]
    head_cache: dict[str, dict[str, float]] = {}
    for start in range(0, len(head), 64):
        chunk = head[start : start + 64]
        rows = query_cis(ci_model, trie, chunk, config.top_cis, config.beams, config.score_floor)
        head_cache.update({q: {str(ci): p for ci, p in row.items()} for q, row in zip(chunk, rows, strict=True)})
    seconds["head_cache"] = time.perf_counter() - t

    snapshot = save_snapshot(
        out_dir / "snapshots", index, sequences, head_cache, tokenizer_fingerprint=ci_model.fingerprint()
    )
    n_ads = max(len(index.ad_cis), 1)
    report = CIBuildReport(
        snapshot=str(snapshot),
        version=index.version,
        ads=len(items),
        cis=len(ci_set.texts),
        cleaning=cleaning,
        knowledge_pairs=len(know),
        format_pairs=len(fmt),
        templates=templates,
        ads_without_cis=len(items) - len(index.ad_cis),
        avg_cis_per_ad=sum(len(c) for c in index.ad_cis.values()) / n_ads,
        head_cache_entries=len(head_cache),
        seconds=seconds,
    )
    (out_dir / "build_config.json").write_text(config.model_dump_json(indent=2))
    (out_dir / "build_report.json").write_text(json.dumps(report.model_dump(), indent=2))
    return report
