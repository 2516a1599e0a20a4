"""The offline RARE build: catalogue + query log -> CI set -> two-stage CI model -> CIs for every ad -> CI
index -> serving settings tuned on validation -> head cache -> snapshot.

`adgen ci build` runs it; running it again is the periodic full rebuild (new CI set, new model, new
snapshot version; readers switch to the newest valid snapshot). The query log's labelled queries are split
train / validation / test with no shared text or intent (`search/query_split.py`): training queries add
query -> CI pairs and query templates, validation picks the epochs and every serving setting, and test is
left for `adgen ci eval`. The split is written next to the build (`split.json`) so the evaluation reads
exactly the queries the build never saw.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from adgen.core.catalogue import Item
from adgen.index.trie_arrays import TrieArrays
from adgen.search.ci_data import (
    AD_PROMPT,
    ad_prompt_text,
    augmented_query_pairs,
    format_pairs,
    knowledge_pairs,
    mine_templates,
    propose_cis,
    query_targets,
)
from adgen.search.ci_eval import Retrieved, score_answers
from adgen.search.ci_index import (
    CIIndex,
    CleaningConfig,
    CleaningReport,
    build_ci_set,
    save_snapshot,
)
from adgen.search.ci_model import CIModel, CIModelConfig, query_cis, train_ci_model
from adgen.search.ci_serving import CIQueryMapper, ServingConfig, rank_ads
from adgen.search.ci_tuning import TuningGrid, TuningResult, build_index, objective, tune_serving
from adgen.search.query_log import LoggedQuery, QueryLog
from adgen.search.query_split import QuerySplit, SplitConfig, split_leaks, split_queries

Embed = Callable[[Sequence[str]], np.ndarray]

SPLIT_FILE = "split.json"


class CIBuildConfig(BaseModel):
    """Everything `adgen ci build` decides, written next to the snapshot for reproducibility."""

    cleaning: CleaningConfig = CleaningConfig(min_ads=1)
    model: CIModelConfig = CIModelConfig()
    split: SplitConfig = SplitConfig()
    min_grade: int = Field(2, ge=1, description="Grade from which a judged ad counts as relevant.")
    target_min_f1: float = Field(0.5, gt=0, le=1, description="Training query -> CI pairs need this ad-set F1.")
    augment_per_ci: int = Field(
        1, ge=0, description="Mined query templates wrapped around each CI (1: the CPU budget of the demo build)."
    )
    max_knowledge_pairs: int | None = Field(1500, ge=1, description="Seeded sample of stage-1 facts (CPU budget).")
    cis_per_ad_pairs: int | None = Field(1, ge=1, description="Ad -> CI training pairs per ad (None = all).")
    typo_rate: float = Field(0.3, ge=0, le=1)
    head_cache_size: int = Field(200, ge=0)
    serving: ServingConfig = ServingConfig()
    tune: bool = Field(True, description="Choose the serving settings on validation (else keep `serving`).")
    grid: TuningGrid = TuningGrid()


class CIBuildReport(BaseModel):
    snapshot: str
    version: str
    ads: int
    cis: int
    cleaning: CleaningReport
    split: dict[str, int]
    query_targets: int
    knowledge_pairs: int
    format_pairs: int
    templates: list[str]
    epochs_trained: int
    best_epoch: int | None
    ads_without_catalogue_cis: int
    avg_cis_per_ad: float
    head_cache_entries: int
    serving: ServingConfig
    tuning: TuningResult | None
    seconds: dict[str, float]


def save_split(split: QuerySplit, directory: Path) -> Path:
    """Query ids per split (what `adgen ci eval` reads back to score only never-seen queries)."""
    ids = {name: [q.query_id for q in getattr(split, name)] for name in ("train", "valid", "test")}
    path = Path(directory) / SPLIT_FILE
    path.write_text(json.dumps(ids, indent=1))
    return path


def load_split(directory: Path, log: QueryLog) -> QuerySplit:
    """The build's split, resolved against `log` (every id must still be there)."""
    path = Path(directory) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build with `adgen ci build` and a query log first")
    ids = json.loads(path.read_text())
    by_id = {q.query_id: q for q in log.queries}
    missing = [i for name in ids for i in ids[name] if i not in by_id]
    if missing:
        raise ValueError(f"{path}: {len(missing)} query ids are not in the query log (first: {missing[0]!r})")
    return QuerySplit(**{name: [by_id[i] for i in ids[name]] for name in ("train", "valid", "test")})


def validation_scores(
    ci_model: CIModel,
    trie: TrieArrays,
    index: CIIndex,
    valid: Sequence[LoggedQuery],
    config: ServingConfig,
    min_grade: int,
) -> dict[str, float]:
    """Validation score of the pure CI path over catalogue CIs: what early stopping picks the epoch by."""
    rows = query_cis(ci_model, trie, [q.normalised for q in valid], config.top_cis, config.beams, None)
    answers = [Retrieved(ads=[a for a, _ in rank_ads(index, r, config.top_n)], num_cis=len(r)) for r in rows]
    report = score_answers("valid", valid, answers, [], min_grade)
    return {"valid_score": objective(report), "ndcg10": report.ndcg10, "hr50": report.hr["HR@50"]}


def build_search_index(
    items: Mapping[str, Item],
    out_dir: Path,
    config: CIBuildConfig | None = None,
    query_log: QueryLog | None = None,
    embed: Embed | None = None,
    extra_proposals: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
) -> CIBuildReport:
    """Run the whole offline build into `out_dir` (model/, snapshots/ci-*/, serving.json, split.json,
    build_report.json)."""
    config = config or CIBuildConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    split = split_queries(query_log.labelled(), config.split) if query_log else QuerySplit(train=[], valid=[], test=[])
    leaks = split_leaks(split)
    if leaks:  # cannot happen by construction; a failure here means split_queries is broken
        raise RuntimeError(f"query split leaks: {leaks[:3]}")
    save_split(split, out_dir)
    proposals = propose_cis(items, extra_proposals)
    ci_set, catalogue, cleaning = build_ci_set(proposals, embed, config.cleaning)
    seconds["ci_set"] = time.perf_counter() - t

    t = time.perf_counter()
    targets = query_targets(split.train, ci_set, catalogue, config.min_grade, config.target_min_f1)
    templates = mine_templates((q.text, ci_set.texts[q.ci]) for q in targets)
    know = knowledge_pairs(items, ci_set, catalogue)
    if config.max_knowledge_pairs is not None and len(know) > config.max_knowledge_pairs:
        know = random.Random(config.model.seed).sample(know, config.max_knowledge_pairs)
    fmt = format_pairs(items, ci_set, catalogue, targets, config.cis_per_ad_pairs, seed=config.model.seed)
    fmt += augmented_query_pairs(ci_set, templates, config.augment_per_ci, config.typo_rate, seed=config.model.seed)
    serving = config.serving.model_copy(update={"templates": templates})
    valid_fn = None
    if split.valid:
        catalogue_index = build_index(ci_set, catalogue, {}, serving.model_copy(update={"cis_per_ad": 0}))

        def valid_fn(ci_model: CIModel) -> dict[str, float]:
            trie = ci_model.ci_trie(ci_set)
            return validation_scores(ci_model, trie, catalogue_index, split.valid, serving, config.min_grade)

    ci_model, metrics = train_ci_model(know, fmt, ci_set, out_dir / "train", config.model, valid_fn)
    ci_model.save(out_dir / "model")
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    sequences = ci_model.ci_sequences(ci_set)
    trie = ci_model.ci_trie(ci_set)
    ad_ids = list(items)
    prompts = [AD_PROMPT.format(text=ad_prompt_text(items[a])) for a in ad_ids]
    generated_rows = ci_model.generate(prompts, trie, k=serving.ad_beams, beams=serving.ad_beams)
    generated = dict(zip(ad_ids, generated_rows, strict=True))
    seconds["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    tuning = None
    if config.tune and split.valid:
        tuning = tune_serving(
            ci_model, trie, ci_set, catalogue, generated, split.valid, serving, config.grid, config.min_grade, progress
        )
        serving = tuning.served
    seconds["tune"] = time.perf_counter() - t
    serving.save(out_dir)
    index = build_index(ci_set, catalogue, generated, serving)
    index.check_consistency()

    t = time.perf_counter()
    mapper = CIQueryMapper(ci_model, trie, ci_set, serving)
    head = [q for q, _ in query_log.frequencies().most_common(config.head_cache_size)] if query_log else []
    head_cache: dict[str, dict[str, float]] = {}
    for start in range(0, len(head), 64):
        chunk = head[start : start + 64]
        for q, row in zip(chunk, mapper(chunk), strict=True):
            head_cache[q] = {str(ci): p for ci, p in row.items()}
    seconds["head_cache"] = time.perf_counter() - t

    snapshot = save_snapshot(
        out_dir / "snapshots", index, sequences, head_cache, tokenizer_fingerprint=ci_model.fingerprint()
    )
    format_metrics = metrics.get("format", {})
    report = CIBuildReport(
        snapshot=str(snapshot),
        version=index.version,
        ads=len(items),
        cis=len(ci_set.texts),
        cleaning=cleaning,
        split=split.sizes(),
        query_targets=len(targets),
        knowledge_pairs=len(know),
        format_pairs=len(fmt),
        templates=templates,
        epochs_trained=len(format_metrics.get("epochs", [])),
        best_epoch=format_metrics.get("best_epoch"),
        ads_without_catalogue_cis=sum(1 for a in items if not catalogue.get(a)),
        avg_cis_per_ad=sum(len(c) for c in index.ad_cis.values()) / max(len(index.ad_cis), 1),
        head_cache_entries=len(head_cache),
        serving=serving,
        tuning=tuning,
        seconds=seconds,
    )
    (out_dir / "build_config.json").write_text(config.model_dump_json(indent=2))
    (out_dir / "build_report.json").write_text(report.model_dump_json(indent=2))
    return report
