"""The LEADRE training pipeline from one YAML config: data -> S-IDs -> tokenizer -> curriculum -> eval -> DPO.

Every stage writes into `out_dir` and is resumable: the S-ID index and tokenizer are reused when present,
each curriculum stage has its own checkpoint (a finished stage is skipped on re-run), and every stage
writes a metrics JSON. Baselines (popularity, SASRec) run on the same split and the same sampled users.

Layout of `out_dir`: index/ (S-ID snapshot), tokenizer/, stage{i}_{tasks}/ (metrics.json, checkpoint/,
best/), model/ (final safetensors + config + tokenizer), eval/ (eval.json, eval.png), dpo/, summary.json.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from adgen.core.catalogue import AD_KINDS, Dataset, Split, leave_one_out
from adgen.index.semantic_ids import SemanticIdMap, global_leaf_map, sid_vocabulary
from adgen.model.ad_tokens import ad_token_names
from adgen.model.baselines import PopularityRecommender, SASRecConfig, SASRecRecommender, ad_ids
from adgen.model.collaborative import CollaborativeConfig, catalogue_vectors
from adgen.model.distill import EnsembleTeacher, TriePaths, soft_targets
from adgen.model.evaluate import EvalOptions, GenerativeRecommender, evaluate_recommender, sample_examples, write_report
from adgen.model.lm import LMConfig, build_lm, count_parameters, load_lm, save_lm
from adgen.model.lm_training import LMTrainConfig, Scoring, SequenceExample, train_causal_lm
from adgen.model.metrics import channel_value, ranking_metrics
from adgen.model.pool_priors import TransitionCounts, ad_counts
from adgen.model.prompts import PromptBuilder, PromptOptions, fixed_texts
from adgen.model.recipe import PopularitySettings, ServingRecipe, TransitionSettings, save_recipe
from adgen.model.succession import SuccessionRecommender
from adgen.model.target_weights import with_target_weights
from adgen.model.tasks import TaskOptions, curriculum_stages, stage_examples
from adgen.model.tokenizer import build_tokenizer, extend_tokenizer, load_tokenizer, save_tokenizer, token_offset
from adgen.model.trie_loss import TrieSoftmax


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["world", "amazon", "jsonl"]
    path: Path = Field(
        description="Dataset directory or file. A relative path is resolved against $ADGEN_DATA_ROOT when set, else "
        "against the repository root (so '../shared/datasets/amazon-scientific' works from any working directory)."
    )
    events: Path | None = Field(None, description="Events JSONL for source=jsonl.")
    max_users: int | None = Field(None, ge=1, description="Seeded subset of users (CPU budget).")
    min_ads: int = Field(3, ge=3)
    merge_conversions: bool = Field(
        True, description="Drop a click that the next ad event converts (same ad): else 'next ad' = 'this ad'."
    )


class SidConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: Path | None = Field(None, description="Existing index snapshot store to reuse (else built here).")
    levels: int = Field(3, ge=1)
    codebook_size: int | None = None
    leaf: Literal["collision", "ad"] = Field(
        "collision",
        description="Last S-ID code: the usual collision code, or each ad's own catalogue-wide code "
        "(index/semantic_ids.py `global_leaf_map`).",
    )
    epochs: int = Field(100, ge=1)
    encoder: str = "all-MiniLM-L6-v2"
    embedding_cache: Path = Path("var/cache/embeddings")
    collaborative: CollaborativeConfig = CollaborativeConfig()
    seed: int = 0


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(4096, ge=300)
    min_frequency: int = Field(2, ge=1)


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: Path | None = Field(None, description="Local HF causal-LM dir to fine-tune instead of the built-in.")
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None
    max_positions: int = 512
    tie_embeddings: bool = False
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    seed: int = 0


class TrainSection(BaseModel):
    """Shared LMTrainConfig fields; `stage_epochs` sets epochs per stage by its task names."""

    model_config = ConfigDict(extra="forbid")

    stage_epochs: dict[str, int] = {"ex": 2, "im": 2, "main": 6, "ex+im+main": 8}
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    bf16: bool = False
    scoring: Scoring = "vocab"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    embedding_dropout: float = Field(0.0, ge=0, lt=1)
    residual_dropout: float = Field(0.0, ge=0, lt=1)
    ad_token_dropout: float = Field(
        0.1, ge=0, lt=1, description="With prompts.ad_id_tokens: share of ad-ID tokens trained as <ad_unk>."
    )
    ad_head_weight: float = Field(
        0.0, ge=0, description="With prompts.ad_id_tokens: weight of the next-ad loss (model/ad_head.py); 0 = off."
    )
    distill_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Sequence layouts with trie scoring: weight of SASRec's soft targets (model/distill.py); the "
        "teacher is eval.sasrec fitted on the training part (reused by the evaluation); 0 = off.",
    )
    distill_teacher_seeds: list[int] | None = Field(
        None,
        description="With distill_weight > 0: the teacher is the mean next-ad distribution of eval.sasrec fitted "
        "with each of these seeds on the training part (out/sasrec_seed<n>; the run's own seed reuses out/sasrec); "
        "None = the run's own SASRec alone.",
    )
    target_weight_power: float = Field(
        0.0,
        ge=0,
        description="Sequence layouts with trie scoring: each target ad's tokens weigh (training count + 1) ** -power "
        "in the loss (model/target_weights.py), moving gradient to rarely seen ads; 0 = unweighted.",
    )
    eval_every: int = Field(1, ge=1)
    patience: int = 2
    torch_threads: int = 2
    valid_users: int | None = Field(
        300, ge=1, description="Validation users for early stopping (NDCG@10); None = every validation user."
    )


class EvalSection(EvalOptions):
    beams: int = Field(20, ge=1)
    ad_prior_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the next-ad head when re-ranking the beam's ads (model/ad_head.py; needs a model "
        "trained with train.ad_head_weight > 0); saved in the recipe, so serving ranks the same way.",
    )
    popularity_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the popularity prior (model/pool_priors.py): weight * log(1 + the ad's count in the "
        "training sequences) is added to each of the beam's finished ads before the top k are cut; 0 = off. Chosen "
        "on validation users (bench/decode_levers.py); saved in the recipe with the counts, so serving ranks the same.",
    )
    transition_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the transition prior (model/pool_priors.py): weight * log(1 + how often the ad "
        "followed the user's last `transition_window` ads in the training sequences) is added to each of the beam's "
        "finished ads; 0 = off. Chosen on validation users (bench/transition_levers.py); saved in the recipe.",
    )
    transition_window: int = Field(1, ge=1, description="How many of the user's last ads the transition prior reads.")
    valid_too: bool = Field(False, description="Also score every model on the validation users (results['valid']).")
    reuse_fitted_sasrec: bool = Field(
        False,
        description="Re-evaluation: load the SASRec this run dir already fitted with the same config and seed "
        "(model/baselines.py `load_fitted`) instead of fitting it again; summary timings say whether it was reused.",
    )
    test: bool = Field(
        True, description="Score on the test users. Off while choosing settings: then only validation is read."
    )
    baselines: list[Literal["popularity", "sasrec", "successions"]] = Field(
        default_factory=lambda: ["popularity", "sasrec"]
    )
    successions_window: int = Field(
        2,
        ge=1,
        description="The successions baseline's window (model/succession.py): how many of the user's last ads it "
        "reads; chosen on validation users (bench/transition_levers.py, the counts alone).",
    )
    sasrec: SASRecConfig = SASRecConfig()


class DPOSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    beta: float = Field(0.1, gt=0)
    pair_source: Literal["model", "category"] = "model"
    candidates: int = Field(5, ge=2)
    max_users: int | None = 1000
    epochs: int = Field(1, ge=1)
    batch_size: int = 16
    lr: float = 1e-4


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    out_dir: Path
    seed: int = 0
    data: DataConfig
    sids: SidConfig = SidConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelSection = ModelSection()
    prompts: PromptOptions = PromptOptions()
    tasks: TaskOptions = TaskOptions()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    dpo: DPOSection = DPOSection()

    @model_validator(mode="after")
    def _ad_head_needs_ad_tokens(self) -> PipelineConfig:
        if (self.train.ad_head_weight > 0 or self.eval.ad_prior_weight > 0) and not self.prompts.ad_id_tokens:
            raise ValueError("train.ad_head_weight / eval.ad_prior_weight need prompts.ad_id_tokens: true")
        return self

    @model_validator(mode="after")
    def _distillation_needs_trie_sequences(self) -> PipelineConfig:
        if self.train.distill_weight > 0 and (self.train.scoring != "trie" or self.prompts.layout == "per_target"):
            raise ValueError(
                "train.distill_weight needs train.scoring: trie and a sequence layout (prompts.layout: sequence or "
                "sid_only): the teacher speaks in trie siblings, at every target of a sequence"
            )
        if self.train.distill_teacher_seeds and self.train.distill_weight == 0:
            raise ValueError("train.distill_teacher_seeds needs train.distill_weight > 0 (it names the teachers)")
        if self.train.target_weight_power > 0 and (self.train.scoring != "trie" or self.prompts.layout == "per_target"):
            raise ValueError(
                "train.target_weight_power needs train.scoring: trie and a sequence layout (prompts.layout: sequence "
                "or sid_only): weights follow each target ad's tokens through the trie"
            )
        return self


def load_config(path: Path, seed: int | None = None, **overrides: Any) -> PipelineConfig:
    """A YAML pipeline config; `overrides` replace top-level sections or values.

    `seed` re-seeds the whole run: data order, the RQ-VAE (so the S-IDs), the model's initialisation, the task
    sampling and the baselines, which is what "one seed" means in docs/results.md.
    """
    raw = _read_yaml(Path(path))
    raw.update(overrides)
    if seed is not None:
        raw["seed"] = seed
        for section in ("sids", "model", "tasks"):
            raw[section] = {**(raw.get(section) or {}), "seed": seed}
    return PipelineConfig.model_validate(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    """YAML with an optional `base: other.yaml` (relative to this file) deep-merged underneath (ablations)."""
    raw = yaml.safe_load(path.read_text()) or {}
    base = raw.pop("base", None)
    return _merge(_read_yaml(path.parent / base), raw) if base else raw


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# -- stages ---------------------------------------------------------------------------------------------
DATA_ROOT_ENV = "ADGEN_DATA_ROOT"
REPO_ROOT = Path(__file__).resolve().parent.parent  # model/ sits at the top of the repository


def resolve_data_path(path: Path) -> Path:
    """An absolute path as given; a relative one against $ADGEN_DATA_ROOT, else the repository root.

    Raises FileNotFoundError naming the setting and both places looked at, so a fresh clone without the shared
    data says what to do instead of failing deep inside a loader.
    """
    path = Path(path)
    if path.is_absolute():
        resolved, base = path, None
    else:
        env = os.environ.get(DATA_ROOT_ENV)
        base = Path(env) if env else REPO_ROOT
        resolved = (base / path).resolve()
    if not resolved.exists():
        where = (
            f" (relative to {'$' + DATA_ROOT_ENV + '=' if os.environ.get(DATA_ROOT_ENV) else 'the repo root '}{base})"
        )
        raise FileNotFoundError(
            f"dataset not found: {resolved}{where if base else ''}; set data.path in the config or point "
            f"${DATA_ROOT_ENV} at the directory that holds it"
        )
    return resolved


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    from adgen import datasets

    path = resolve_data_path(cfg.path)
    if cfg.source == "world":
        data = datasets.load_world(path)
    elif cfg.source == "amazon":
        data = datasets.load_amazon(path)
    else:
        events = resolve_data_path(cfg.events) if cfg.events is not None else None
        data = datasets.load_jsonl(path, events)
    if cfg.merge_conversions:
        data = merge_click_conversions(data)
    if cfg.max_users is not None and len(data.users) > cfg.max_users:
        keep = sorted(random.Random(seed).sample(sorted(data.users), cfg.max_users))
        data = data.model_copy(update={"users": {u: data.users[u] for u in keep}})
    return data


def merge_click_conversions(data: Dataset) -> Dataset:
    """Remove each ad click whose next ad event is a conversion of the same ad (one interaction, not two).

    Without this, leave-one-out makes the conversion a target right after its own click, and "predict the
    next ad" degenerates into "repeat the last ad" for a large share of users.
    """
    users = {}
    for user_id, user in data.users.items():
        events = user.events
        ad_pos = [i for i, e in enumerate(events) if e.kind in AD_KINDS]
        drop = {
            i
            for i, j in itertools.pairwise(ad_pos)
            if events[i].kind == "ad_click" and events[j].kind == "ad_conversion" and events[i].ref == events[j].ref
        }
        kept = [e for i, e in enumerate(events) if i not in drop]
        users[user_id] = user.model_copy(update={"events": kept})
    return data.model_copy(update={"users": users})


def build_sid_map(
    data: Dataset, cfg: SidConfig, out_dir: Path, train_sequences: Sequence[Sequence[str]] = ()
) -> SemanticIdMap:
    """Load the S-ID index (from `cfg.index` or out_dir/index) or build it with the index room's code.

    `train_sequences` (ad ids in time order, training part only) feed the collaborative part of the S-ID
    embedding when `cfg.collaborative.weight` > 0; validation and test targets must not be in them.
    """
    from adgen.index.snapshot import INDEX_KIND, SnapshotStore, read_index_snapshot

    store_dir = cfg.index or out_dir / "index"
    store = SnapshotStore(store_dir, kind=INDEX_KIND)
    if store.versions():
        sid_map = read_index_snapshot(store.latest()).sid_map
        missing = [i for i in data.items if i not in sid_map]
        if missing:
            raise ValueError(f"the index in {store_dir} lacks {len(missing)} catalogue ads, e.g. {missing[:3]}")
        return sid_map
    if cfg.index is not None:
        raise FileNotFoundError(f"no index snapshot in {cfg.index}; run `adgen index build` or drop sids.index")
    from adgen.core.ad_text import ad_text
    from adgen.index.ad_index import build_ad_index
    from adgen.index.rqvae import RQVAEConfig
    from adgen.model.encoder import CachedEncoder, load_encoder

    items = sorted(data.items.values(), key=lambda i: i.item_id)  # deleted ads too: histories mention them
    encoder = CachedEncoder(load_encoder(cfg.encoder), cfg.embedding_cache)
    text = encoder.encode([ad_text(i) for i in items])
    embeddings, text_map = catalogue_vectors(
        text, [i.item_id for i in items], train_sequences, cfg.collaborative, seed=cfg.seed
    )
    overrides: dict[str, Any] = {"num_levels": cfg.levels, "epochs": cfg.epochs, "seed": cfg.seed}
    if cfg.codebook_size is not None:
        overrides["codebook_size"] = cfg.codebook_size
    if text_map is not None:
        overrides.update(text_dim=encoder.dim, collaborative_weight=cfg.collaborative.weight)
    rq_cfg = RQVAEConfig.sized_for(len(items), embeddings.shape[1], **overrides)
    ad_index, report = build_ad_index(
        items,
        embeddings,
        rq_cfg,
        out_dir / "rqvae",
        text_map=(text_map.weights, text_map.bias) if text_map is not None else None,
    )
    if cfg.leaf == "ad":
        ad_index.sid_map = global_leaf_map(ad_index.sid_map)
    ad_index.snapshot(store)
    (out_dir / "index_report.json").write_text(report.model_dump_json(indent=1))
    return ad_index.sid_map


def live_map(sid_map: SemanticIdMap, deleted: set[str]) -> SemanticIdMap:
    """The map without deleted ads: what generation may return (prompts still name deleted ads)."""
    if not deleted:
        return sid_map
    sids, ids = sid_map.to_arrays()
    keep = [i for i, item in enumerate(ids) if item not in deleted]
    return SemanticIdMap.from_arrays(sids[keep], [ids[i] for i in keep], sid_map.codebook_sizes, sid_map.leaf_scope)


def tokenizer_corpus(data: Dataset) -> list[str]:
    """Texts the BPE learns from: ad and content text, profile values and the prompt's own words."""
    texts = fixed_texts() * 1000  # the fixed words must become single tokens: every prompt repeats them
    for item in data.items.values():
        texts.append(" ".join([item.title, item.brand, *item.categories, item.product_type, *item.attributes]))
        if item.description:
            texts.append(item.description[:400])
    texts += [c.title + " " + " ".join(c.categories) for c in data.content.values()]
    for user in data.users.values():
        p = user.profile
        texts.append(", ".join(str(v) for v in (p.age, p.sex, p.residence, p.education, p.occupation) if v))
        texts += [e.title for e in user.events if e.kind == "content_search" and e.title]
    return texts


def ad_vocabulary(cfg: PipelineConfig, data: Dataset) -> list[str]:
    """The ads that get their own ad-ID token (every ad of the training data), or none without prompts.ad_id_tokens."""
    return sorted(data.items) if cfg.prompts.ad_id_tokens else []


def prepare_model(cfg: PipelineConfig, data: Dataset, sid_map: SemanticIdMap) -> tuple[Any, Any]:
    """Tokenizer + model: built-in (fresh BPE + fresh Llama) or a local HF checkpoint extended with S-IDs (and, with
    prompts.ad_id_tokens, ad-ID tokens after them: the S-ID block stays contiguous)."""
    vocab = sid_vocabulary(sid_map.codebook_sizes)
    ads = ad_vocabulary(cfg, data)
    extra = [*vocab, *ad_token_names(len(ads))] if ads else vocab
    tok_dir = cfg.out_dir / "tokenizer"
    if cfg.model.checkpoint is not None:
        model = load_lm(cfg.model.checkpoint)
        model.train()
        tok = (
            load_tokenizer(tok_dir)
            if tok_dir.exists()
            else extend_tokenizer(load_tokenizer(cfg.model.checkpoint), extra)
        )
        model.resize_token_embeddings(len(tok))
    else:
        if (tok_dir / "tokenizer.json").exists():
            tok = load_tokenizer(tok_dir)
        else:
            tok = build_tokenizer(tokenizer_corpus(data), extra, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        m = cfg.model
        model = build_lm(
            LMConfig(
                vocab_size=len(tok),
                hidden_size=m.hidden_size,
                num_layers=m.num_layers,
                num_heads=m.num_heads,
                intermediate_size=m.intermediate_size,
                max_positions=m.max_positions,
                tie_embeddings=m.tie_embeddings,
                attention_dropout=m.attention_dropout,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                seed=m.seed,
            )
        )
    save_tokenizer(tok, tok_dir)
    return model, tok


class Run:
    """Everything one pipeline run builds, in order; each method is one stage."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        t = time.perf_counter()
        self.data = load_dataset(cfg.data, cfg.seed)
        if cfg.dpo.enabled and not any(item.ecpm > 0 for item in self.data.items.values()):
            raise ValueError(f"dpo.enabled needs ads with eCPM, but every eCPM in {cfg.data.path} is 0; disable dpo")
        self.split: Split = leave_one_out(self.data, cfg.data.min_ads)
        train_sequences = [ad_ids(e.history) for e in self.split.valid]  # everything before each validation target
        self.sid_map = build_sid_map(self.data, cfg.sids, self.out, train_sequences)
        self.model, self.tok = prepare_model(cfg, self.data, self.sid_map)
        self.ad_vocabulary = ad_vocabulary(cfg, self.data)
        self.builder = PromptBuilder(
            self.tok, self.data.items, self.sid_map.sid_of, self.data.content, cfg.prompts, self.ad_vocabulary
        )
        self.serve_map = live_map(self.sid_map, set(self.data.deleted_at))
        self.profiles = {u: h.profile for u, h in self.data.users.items()}
        self.test = sample_examples(self.split.test, cfg.eval.max_users, cfg.seed)
        self.valid = sample_examples(self.split.valid, cfg.train.valid_users, cfg.seed + 1)
        self.timings["prepare_s"] = time.perf_counter() - t
        (self.out / "config.json").write_text(cfg.model_dump_json(indent=1))

    @property
    def recipe(self) -> ServingRecipe:
        return ServingRecipe(
            prompts=self.cfg.prompts,
            scoring=self.cfg.train.scoring,
            ad_vocabulary=self.ad_vocabulary,
            ad_prior_weight=self.cfg.eval.ad_prior_weight,
            popularity=self.popularity(),
            transitions=self.transitions(),
            beams=self.cfg.eval.beams,
        )

    def popularity(self) -> PopularitySettings | None:
        """The popularity prior's settings: eval.popularity_weight and each ad's count in the training part."""
        weight = self.cfg.eval.popularity_weight
        if weight <= 0:
            return None
        return PopularitySettings(weight=weight, counts=self.training_ad_counts)

    def transitions(self) -> TransitionSettings | None:
        """The transition prior's settings: eval.transition_weight/_window and the training part's ad successions."""
        weight = self.cfg.eval.transition_weight
        if weight <= 0:
            return None
        window = self.cfg.eval.transition_window
        following = {a: dict(r) for a, r in self.training_transitions(window).following.items()}
        return TransitionSettings(weight=weight, window=window, following=following)

    def training_transitions(self, window: int) -> TransitionCounts:
        """The training part's ad successions within `window`, counted once per window (each recipe read needs them)."""
        cache: dict[int, TransitionCounts] = self.__dict__.setdefault("_transitions_by_window", {})
        if window not in cache:
            cache[window] = TransitionCounts.from_sequences((ad_ids(e.history) for e in self.split.valid), window)
        return cache[window]

    @functools.cached_property
    def training_ad_counts(self) -> dict[str, int]:
        """Each ad's occurrences in the training part (fixed by the split; read by every validation decode)."""
        return ad_counts(ad_ids(e.history) for e in self.split.valid)

    def recommender(self, name: str = "leadre") -> GenerativeRecommender:
        return GenerativeRecommender(
            self.model,
            self.tok,
            self.builder,
            self.serve_map,
            self.profiles,
            beams=self.cfg.eval.beams,
            name=name,
            renormalize=self.recipe.renormalize,
            ad_prior_weight=self.recipe.ad_prior_weight,
            popularity=self.recipe.popularity,
            transitions=self.recipe.transitions,
        )

    def training_trie(self):
        """Trie of every S-ID in the training data (deleted ads included: histories name them)."""
        return self.training_trie_and_items()[0]

    def training_trie_and_items(self):
        """`training_trie` and the ad id of each of its leaf values."""
        offset = token_offset(self.tok, sid_vocabulary(self.sid_map.codebook_sizes))
        return self.sid_map.trie_arrays(offset)

    def valid_ndcg(self, model: torch.nn.Module) -> dict[str, float]:
        rankings = self.recommender().recommend(self.valid, 10)
        return ranking_metrics(rankings, [e.target for e in self.valid], [1, 10])

    def train(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        t = cfg.train
        reports = []
        for i, stage in enumerate(curriculum_stages(cfg.tasks.curriculum)):
            key = "+".join(stage)
            examples = stage_examples(
                stage,
                self.builder,
                self.data,
                self.split.train,
                list(self.data.items),
                cfg.tasks,
                histories=self.split.valid,  # each user's behaviour before the validation target: the sequences
            )
            lm_cfg = LMTrainConfig(
                out_dir=self.out / f"stage{i}_{key.replace('+', '_')}",
                epochs=t.stage_epochs.get(key, t.stage_epochs.get("main", 4)),
                batch_size=t.batch_size,
                grad_accum=t.grad_accum,
                lr=t.lr,
                weight_decay=t.weight_decay,
                warmup_ratio=t.warmup_ratio,
                bf16=t.bf16,
                seed=cfg.seed + i,
                patience=t.patience,
                max_len=cfg.prompts.max_prompt_tokens + 16,
                torch_threads=t.torch_threads,
                scoring=t.scoring,
                label_smoothing=t.label_smoothing,
                embedding_dropout=t.embedding_dropout,
                residual_dropout=t.residual_dropout,
                eval_every=t.eval_every,
                token_dropout=t.ad_token_dropout if self.builder.ad_tokens is not None else 0.0,
                token_dropout_block=self.builder.ad_tokens.block if self.builder.ad_tokens is not None else None,
                token_dropout_to=self.builder.ad_tokens.unk if self.builder.ad_tokens is not None else None,
                ad_head_weight=t.ad_head_weight,
                ad_head_block=self.builder.ad_tokens.block if self.builder.ad_tokens is not None else None,
                distill_weight=t.distill_weight,
                desc=f"stage {i} {key}",
            )
            if t.distill_weight > 0 and "main" in stage:
                examples = self.with_teacher_targets(examples)
            if t.target_weight_power > 0 and "main" in stage:
                examples = self.with_target_weights(examples, t.target_weight_power)
            eval_fn = self.valid_ndcg if "main" in stage else None
            started = time.perf_counter()
            trie = self.training_trie() if t.scoring == "trie" else None
            metrics = train_causal_lm(self.model, self.tok, examples, lm_cfg, eval_fn=eval_fn, trie=trie)
            reports.append(
                {"stage": key, "examples": len(examples), "seconds": time.perf_counter() - started, **metrics}
            )
        self.timings["train_s"] = sum(r["seconds"] for r in reports)
        save_lm(self.model, self.out / "model")
        save_tokenizer(self.tok, self.out / "model")
        save_recipe(self.recipe, self.out / "model")
        return reports

    def sasrec(self, reuse: bool, seed: int | None = None) -> tuple[SASRecRecommender, dict[str, Any], bool]:
        """eval.sasrec with this run's seed (or `seed`), fitted on the training part (or the fit saved in
        out/sasrec, out/sasrec_seed<seed> for another seed, when `reuse` and it matches); (model, fit metrics,
        reused)."""
        cfg = self.cfg
        seed = cfg.seed if seed is None else seed
        sas_cfg = cfg.eval.sasrec.model_copy(update={"torch_threads": cfg.train.torch_threads, "seed": seed})
        sas = SASRecRecommender(sorted(self.data.active_items()), sas_cfg)
        out = self.out / ("sasrec" if seed == cfg.seed else f"sasrec_seed{seed}")
        fitted = sas.load_fitted(out) if reuse else None
        fit = fitted or sas.fit([ad_ids(e.history) for e in self.split.valid], self.valid, out)
        return sas, fit, fitted is not None

    def teacher(self) -> SASRecRecommender | EnsembleTeacher:
        """The distillation teacher: this run's SASRec, or the mean of the SASRecs of train.distill_teacher_seeds."""
        seeds = self.cfg.train.distill_teacher_seeds
        if not seeds:
            return self.sasrec(reuse=True)[0]
        return EnsembleTeacher([self.sasrec(reuse=True, seed=s)[0] for s in seeds])

    def with_teacher_targets(self, examples: Sequence[Any]) -> list[Any]:
        """The sequence examples with the teacher's soft targets attached (model/distill.py)."""
        teacher = self.teacher()
        trie, leaf_items = self.training_trie_and_items()
        softmax = TrieSoftmax(trie)
        paths = TriePaths(trie, leaf_items, softmax, teacher.items)
        out = []
        for e in tqdm(examples, desc="teacher targets", leave=False):
            is_seq = isinstance(e, SequenceExample)
            out.append(replace(e, soft=soft_targets(teacher, e.labels, softmax, paths)) if is_seq else e)
        return out

    def with_target_weights(self, examples: Sequence[Any], power: float) -> list[Any]:
        """The sequence examples with frequency-aware loss weights (model/target_weights.py); others unchanged."""
        trie, leaf_items = self.training_trie_and_items()
        softmax = TrieSoftmax(trie)
        paths = TriePaths(trie, leaf_items, softmax, leaf_items)
        sequences = [e for e in examples if isinstance(e, SequenceExample)]
        weighted = iter(with_target_weights(sequences, softmax, paths, power))
        return [next(weighted) if isinstance(e, SequenceExample) else e for e in examples]

    @classmethod
    def trained(cls, config: Path, seed: int, out_dir: Path | None = None) -> Run:
        """A trained run read back to score it: the config with `seed` (and `out_dir`, when given), its model
        loaded and in eval mode. FileNotFoundError when nothing was trained there."""
        overrides = {"out_dir": str(out_dir)} if out_dir is not None else {}
        run = cls(load_config(config, seed=seed, **overrides))
        run.load_trained()
        run.model.eval()
        return run

    def load_trained(self) -> None:
        path = self.out / "model"
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no trained model in {path}; run `adgen train --config ...` first")
        self.model = load_lm(path)

    def evaluate(
        self, models: Sequence[str] = ("leadre", "popularity", "sasrec", "successions")
    ) -> dict[str, dict[str, Any]]:
        """Evaluate `models` (those in eval.baselines, plus leadre) on the test users; results for models not
        re-run are kept from an existing eval.json, so one baseline can be re-evaluated alone.

        With `eval.valid_too` the same models are also scored on the validation users (what settings were chosen
        on), under `results["valid"]`. When LEADRE and SASRec are both evaluated, `results["channel"]` holds
        LEADRE's value as an added retrieval channel: HR@20 of SASRec's top 10 merged with LEADRE's top 10
        (deduplicated) against SASRec's own top 20.
        """
        cfg = self.cfg
        started = time.perf_counter()
        path = self.out / "eval" / "eval.json"
        results: dict[str, dict[str, Any]] = json.loads(path.read_text())["results"] if path.exists() else {}
        candidates = sorted(self.data.active_items())
        recommenders: dict[str, Any] = {}
        if "leadre" in models:
            recommenders["leadre"] = self.recommender()
        if "popularity" in models and "popularity" in cfg.eval.baselines:
            recommenders["popularity"] = PopularityRecommender(candidates).fit([e.history for e in self.split.valid])
        if "successions" in models and "successions" in cfg.eval.baselines:
            recommenders["successions"] = SuccessionRecommender(candidates, cfg.eval.successions_window).fit(
                [e.history for e in self.split.valid]
            )
        if "sasrec" in models and "sasrec" in cfg.eval.baselines:
            # a distilled model's teacher is this same fit: reuse it rather than fit a second one
            reuse = cfg.eval.reuse_fitted_sasrec or cfg.train.distill_weight > 0
            recommenders["sasrec"], fit, self.timings["sasrec_reused"] = self.sasrec(reuse)
            if cfg.train.distill_weight > 0 and cfg.train.distill_teacher_seeds:
                # what an ensemble-distilled LM learnt from, scored beside it (a reference row, not the baseline)
                recommenders["sasrec_ensemble"] = self.teacher()
        rankings: dict[str, list[list[str]]] = {}
        for name, rec in recommenders.items() if cfg.eval.test else []:
            results[name], rankings[name] = evaluate_recommender(
                rec, self.test, self.data, cfg.eval, with_rankings=True
            )
        if "sasrec" in recommenders and cfg.eval.test:
            results["sasrec"].update(train_s=fit["train_seconds"], best_valid_ndcg_at_10=fit["best_valid_ndcg@10"])
        if cfg.eval.valid_too or not cfg.eval.test:
            valid = sample_examples(self.split.valid, cfg.eval.max_users, cfg.seed)
            results.setdefault("valid", {})
            for name, rec in recommenders.items():
                results["valid"][name] = evaluate_recommender(
                    rec, valid, self.data, cfg.eval.model_copy(update={"stability": False})
                )
        if "leadre" in rankings and "sasrec" in rankings:
            results["channel"] = channel_value(rankings["sasrec"], rankings["leadre"], [e.target for e in self.test])
        self.timings["eval_s"] = time.perf_counter() - started
        write_report(
            {k: v for k, v in results.items() if k not in ("valid", "channel")},
            self.out / "eval",
            cfg.name,
            cfg.eval.ks,
        )
        path.write_text(json.dumps({"title": cfg.name, "results": results}, indent=1))
        return results

    def summary(self, filename: str = "summary.json", **parts: Any) -> dict[str, Any]:
        out = {
            "name": self.cfg.name,
            "data": {
                "source": self.cfg.data.source,
                "users": len(self.data.users),
                "items": len(self.data.items),
                "train_examples": len(self.split.train),
                "test_users_evaluated": len(self.test),
            },
            "model_parameters": count_parameters(self.model),
            "vocab_size": len(self.tok),
            "codebook_sizes": list(self.sid_map.codebook_sizes),
            "timings": self.timings,
            **parts,
        }
        (self.out / filename).write_text(json.dumps(out, indent=1, default=str))
        return out


def run_pipeline(cfg: PipelineConfig, evaluate: bool = True) -> dict[str, Any]:
    """Train through the curriculum, evaluate against baselines, optionally DPO; returns the summary."""
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    run = Run(cfg)
    stages = run.train()
    results = run.evaluate() if evaluate else {}
    run.timings["wall_s"] = time.perf_counter() - started  # data + S-IDs + training + evaluation, this process
    dpo_report = None
    if cfg.dpo.enabled:
        from adgen.model.dpo import run_dpo

        dpo_report = run_dpo(run)
    return run.summary(stages=stages, results=results, dpo=dpo_report)
