"""The CI model: a small causal LM that maps ad text or a query to commercial intentions in the CI set.

Built on the shared pieces: the BPE tokenizer (`model/tokenizer.py`), the built-in Llama-style LM
(`model/lm.py`), the one training loop (`model/lm_training.py`, run twice: knowledge injection, then format
fine-tuning) and the trie-constrained beam search (`model/decoding.py`). Beam search over the CI trie makes
every generated CI a member of the CI set by construction; `score_floor` is RARE's low-score truncation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adgen.core.checksums import weights_label
from adgen.core.config import ModelSettings
from adgen.index.trie_arrays import TrieArrays
from adgen.model.backends import GenerationBackend, TorchBackend, load_backend
from adgen.model.lm import LMConfig, build_lm, load_lm, save_lm
from adgen.model.lm_training import LMTrainConfig, train_causal_lm
from adgen.model.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from adgen.search.ci_data import QUERY_PROMPT, TextPair
from adgen.search.ci_index import CISet, build_ci_trie, ci_token_sequences

CONFIG_FILE = "ci_model.json"
MAX_PROMPT_TOKENS = 96


class CIModelError(ValueError):
    """A CI model that cannot be trained, loaded or used (no data, missing files, wrong tokenizer)."""


class CIModelConfig(BaseModel):
    """Size and training of the CI model. Defaults fit the 2-core CPU budget (about 1M parameters)."""

    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    tie_embeddings: bool = Field(
        True, description="Output layer = input embeddings: copying query words into a CI is then learnt fast."
    )
    knowledge_epochs: int = Field(1, ge=1)
    format_epochs: int = Field(
        8, ge=1, description="Most format epochs; with validation queries the best epoch is kept (early stopping)."
    )
    patience: int = Field(2, ge=1, description="Epochs without a better validation score before stopping.")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-3, gt=0)
    seed: int = 0
    torch_threads: int = Field(
        1, ge=1, le=2, description="One thread trained 4x faster than two on the shared, oversubscribed 2 cores."
    )


class CIModel:
    """Tokenizer + LM + constrained decoder, and the prompt/CI encodings shared by training and inference."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        config: CIModelConfig,
        backend: GenerationBackend | None = None,
        model_version: str = "",
    ) -> None:
        """`backend`: the decoder that generates CIs (`load_backend`, as `model.backend` says); None: the torch
        decoder over `model`, created at the first generation (training never needs one). `model_version`: the
        label every search result it answers carries (`load` sets it: directory name + weights digest)."""
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.config = config
        self.model_version = model_version
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = int(tokenizer.bos_token_id)
        self._backend = backend

    @property
    def backend(self) -> GenerationBackend:
        if self._backend is None:
            self._backend = TorchBackend(self.model)
        return self._backend

    def ci_tokens(self, text: str) -> list[int]:
        """Token ids of a CI as a response (a leading space, as it follows 'intent:'), without EOS."""
        return list(self.tokenizer.encode(" " + text, add_special_tokens=False))

    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + prompt tokens, cut from the left to MAX_PROMPT_TOKENS (the instruction tail is kept)."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return [self.bos_id, *ids[-(MAX_PROMPT_TOKENS - 1) :]]

    def example(self, pair: TextPair) -> tuple[list[int], list[int]]:
        return self.prompt_ids(pair.prompt), [*self.ci_tokens(pair.response), self.eos_id]

    def ci_sequences(self, ci_set: CISet) -> list[list[int]]:
        return ci_token_sequences(ci_set, self.ci_tokens, self.eos_id)

    def ci_trie(self, ci_set: CISet) -> TrieArrays:
        return build_ci_trie(self.ci_sequences(ci_set))

    def checked_ci_sequences(self, ci_set: CISet) -> list[list[int]]:
        """`ci_sequences` once this model can represent every CI of the set: no two alike, none holding the
        tokenizer's unknown token, every id within the LM's embeddings (CIError/CIModelError naming a CI that
        fails). What a model must pass before it serves a CI set it was not built with."""
        sequences = self.ci_sequences(ci_set)  # CIError: two CIs tokenize identically, or EOS inside one
        unk = self.tokenizer.unk_token_id
        rows = self.model.get_input_embeddings().num_embeddings
        for text, sequence in zip(ci_set.texts, sequences, strict=True):
            if len(sequence) < 2:
                raise CIModelError(f"CI {text!r} tokenizes to no token")
            if unk is not None and unk in sequence:
                raise CIModelError(f"CI {text!r} holds text its tokenizer does not know (tokens {sequence[:-1]})")
            if max(sequence) >= rows:
                raise CIModelError(
                    f"CI {text!r} has token id {max(sequence)}, beyond the LM's {rows} embeddings: the tokenizer "
                    "and the LM do not belong together"
                )
        return sequences

    def fingerprint(self) -> str:
        """Identifies the tokenizer, so a snapshot's stored CI token ids are only used with the same one."""
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items())).encode()
        return f"bpe-{len(self.tokenizer)}-{hashlib.sha256(vocab).hexdigest()[:16]}"

    def generate(
        self,
        prompts: Sequence[str],
        trie: TrieArrays,
        k: int,
        beams: int | None = None,
        score_floor: float | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Per prompt, up to k (CI id, log-prob) pairs, best first; every id is a CI of the trie's set."""
        if not prompts:
            return []
        ids = [self.prompt_ids(p) for p in prompts]
        return self.backend.generate(ids, trie, k=k, beams=max(beams or k, k), score_floor=score_floor)

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        save_lm(self.model, directory / "lm")
        save_tokenizer(self.tokenizer, directory / "tokenizer")
        (directory / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path, settings: ModelSettings | None = None) -> CIModel:
        """A saved CI model; `settings.backend` picks its decoder (torch when no settings are given)."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise CIModelError(f"no {CONFIG_FILE} in {directory}: train one with `adgen ci build`")
        config = CIModelConfig.model_validate_json((directory / CONFIG_FILE).read_text())
        lm = load_lm(directory / "lm")
        backend = None
        if settings is not None:  # the CI model is tiny and its prompts never repeat: no prefix cache
            backend = load_backend(settings, directory / "lm", model=lm, prefix_cache_mb=0)
        version = weights_label(directory.name, (directory / "lm").glob("*.safetensors"))
        return cls(load_tokenizer(directory / "tokenizer"), lm, config, backend, version)


def probabilities(scored: Sequence[tuple[int, float]]) -> dict[int, float]:
    """Beam log-probs -> a distribution over the returned CIs (softmax), for ranking their ads."""
    if not scored:
        return {}
    top = max(s for _, s in scored)
    weights = {ci: math.exp(s - top) for ci, s in scored}
    total = sum(weights.values())
    return {ci: w / total for ci, w in weights.items()}


def train_ci_model(
    knowledge: Sequence[TextPair],
    fmt: Sequence[TextPair],
    ci_set: CISet,
    out_dir: Path,
    config: CIModelConfig | None = None,
    valid_fn: Callable[[CIModel], dict[str, float]] | None = None,
) -> tuple[CIModel, dict[str, Any]]:
    """Build the tokenizer on all training text, then train in two stages; saves to `out_dir/model`.

    With `valid_fn` (CI model -> {"valid_score": ...} on validation queries) the format stage is scored
    after every epoch, stops after `patience` epochs without improvement and keeps its best epoch, so the
    number of epochs is chosen on validation. Metrics of both stages land in `out_dir/<stage>/metrics.json`
    and together in `out_dir/metrics.json`.
    """
    config = config or CIModelConfig()
    if not fmt:
        raise CIModelError("no format fine-tuning pairs: the CI set assigned no CIs to any ad")
    torch.set_num_threads(config.torch_threads)
    corpus = [p.prompt for p in (*knowledge, *fmt)] + [" " + t for t in ci_set.texts] + [p.response for p in knowledge]
    tokenizer = build_tokenizer(corpus, vocab_size=config.vocab_size)
    lm_config = LMConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        max_positions=MAX_PROMPT_TOKENS + 64,
        tie_embeddings=config.tie_embeddings,
        pad_token_id=int(tokenizer.pad_token_id),
        bos_token_id=int(tokenizer.bos_token_id),
        eos_token_id=int(tokenizer.eos_token_id),
        seed=config.seed,
    )
    model = build_lm(lm_config)
    ci_model = CIModel(tokenizer, model, config)
    ci_model.ci_sequences(ci_set)  # fail before training if two CIs tokenize identically
    out_dir = Path(out_dir)
    metrics: dict[str, Any] = {"config": config.model_dump(), "num_cis": len(ci_set.texts)}
    stages = (("knowledge", knowledge, config.knowledge_epochs), ("format", fmt, config.format_epochs))
    for stage, pairs, epochs in stages:
        if not pairs:
            continue
        examples = [ci_model.example(p) for p in pairs]
        train_config = LMTrainConfig(
            out_dir=out_dir / stage,
            epochs=epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            max_len=MAX_PROMPT_TOKENS + 32,
            seed=config.seed,
            resume=False,
            checkpoint_every=10_000,
            torch_threads=config.torch_threads,
            desc=f"ci-{stage}",
            monitor="valid_score",
            patience=config.patience,
        )
        eval_fn = (lambda _model: valid_fn(ci_model)) if valid_fn is not None and stage == "format" else None
        model.train()
        stage_metrics = train_causal_lm(model, tokenizer, examples, train_config, eval_fn)
        metrics[stage] = {"pairs": len(pairs), **stage_metrics}
    model.eval()
    ci_model.save(out_dir / "model")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    return ci_model, metrics


def assign_cis(
    ci_model: CIModel,
    trie: TrieArrays,
    prompts: Sequence[str],
    k: int = 5,
    beams: int | None = None,
    score_floor: float | None = None,
    min_prob: float = 0.05,
    batch_size: int = 64,
) -> list[dict[int, float]]:
    """Constrained inference into the existing CI set: per prompt, CI id -> probability among the top k.

    How new ads join the index without retraining; CIs below `min_prob` of the returned mass are dropped
    (the top one is always kept, so every ad gets at least one CI).
    """
    out: list[dict[int, float]] = []
    for start in range(0, len(prompts), batch_size):
        rows = ci_model.generate(prompts[start : start + batch_size], trie, k=k, beams=beams, score_floor=score_floor)
        for row in rows:
            probs = probabilities(row)
            best = max(probs, key=probs.__getitem__) if probs else None
            out.append({ci: p for ci, p in probs.items() if p >= min_prob or ci == best})
    return out


def query_cis(
    ci_model: CIModel,
    trie: TrieArrays,
    normalised_queries: Sequence[str],
    top_cis: int,
    beams: int,
    score_floor: float | None,
    fallback_cis: int = 3,
) -> list[dict[int, float]]:
    """Per (normalised) query, its top-B CIs as probabilities over the returned beams (RARE online step).

    A confident model can put every in-trie token below `score_floor` (e.g. for a typo it would rather
    copy); such queries are decoded again without the floor and keep their best `fallback_cis` CIs, so
    truncation trims weak CIs but never leaves a query with none.
    """
    prompts = [QUERY_PROMPT.format(text=q) for q in normalised_queries]
    rows = ci_model.generate(prompts, trie, k=top_cis, beams=max(beams, top_cis), score_floor=score_floor)
    empty = [i for i, row in enumerate(rows) if not row]
    if empty and score_floor is not None and fallback_cis > 0:
        retry = ci_model.generate([prompts[i] for i in empty], trie, k=min(fallback_cis, top_cis), beams=beams)
        for i, row in zip(empty, retry, strict=True):
            rows[i] = row
    return [probabilities(row) for row in rows]
