"""One causal-LM fine-tuning loop on (prompt_ids, response_ids) pairs, shared by LEADRE and RARE.

Why response-only loss: the model must learn to *produce* S-IDs / CIs given a prompt; predicting the
prompt itself wastes the small CPU budget. Only response positions go through the output projection,
which also skips most of the vocabulary matmul.

API:
- `LMTrainConfig`: epochs, batch size, lr, accumulation, bf16 autocast, early stopping, output dir.
- `train_causal_lm(model, tokenizer, examples, config, eval_fn=None) -> dict` trains in place with a tqdm
  bar, writes `out_dir/metrics.json`, a resumable checkpoint in `out_dir/checkpoint/` (safetensors +
  JSON, no pickle) and, with `eval_fn`, the best model (by `config.monitor`) in `out_dir/best/`.
  `eval_fn(model) -> dict[str, float]` runs after each epoch; training stops after `patience` epochs
  without improvement and the best weights are restored into `model`.
- `response_logprobs(model, batch)` sums response-token log-probabilities (used by evaluation and DPO).
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from adgen.index.trie_arrays import TrieArrays
from adgen.model.trie_loss import TrieSoftmax

IGNORE = -100


@dataclass(frozen=True)
class SequenceExample:
    """A whole sequence with a label per token (a target token id, or IGNORE): every target in one forward pass."""

    ids: Sequence[int]
    labels: Sequence[int]
    #: a teacher's distribution over each labelled token's trie siblings ([labelled tokens, width]; model/distill.py)
    soft: np.ndarray | None = None
    #: a weight per labelled token (the loss is their weighted mean; model/target_weights.py), or None for 1
    weights: np.ndarray | None = None


Example = tuple[Sequence[int], Sequence[int]] | SequenceExample  # (prompt_ids, response_ids) or a labelled sequence
EvalFn = Callable[[torch.nn.Module], dict[str, float]]
Scoring = Literal["vocab", "trie"]


class LMTrainConfig(BaseModel):
    """Knobs of one training stage. `out_dir` receives metrics.json, checkpoint/ and best/."""

    out_dir: Path
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_len: int = Field(256, ge=8, description="Prompts are cut from the left so prompt + response fits.")
    bf16: bool = Field(False, description="bf16 autocast on CPU; only faster on CPUs with AVX512-BF16/AMX.")
    seed: int = 0
    monitor: str = Field("ndcg@10", description="eval_fn key used for early stopping and best/ (higher = better).")
    patience: int = Field(
        2, ge=1, description="Evaluations (every eval_every epochs) without improvement before stopping."
    )
    resume: bool = Field(True, description="Continue from out_dir/checkpoint/ when it exists.")
    checkpoint_every: int = Field(200, ge=1, description="Optimizer steps between mid-epoch checkpoints.")
    stop_after_steps: int | None = Field(
        None, ge=1, description="Checkpoint and return after this many optimizer steps in total (time-boxed runs)."
    )
    torch_threads: int = Field(2, ge=1, description="1 is faster for tiny models on a busy machine.")
    scoring: Scoring = Field(
        "vocab",
        description="'vocab': softmax over the whole vocabulary; 'trie': each target against its valid trie siblings "
        "only (model/trie_loss.py; needs the trie, and the decoder must renormalise the same way).",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    embedding_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the input embeddings (training only).")
    residual_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on each attention and MLP output before the residual add (training only)."
    )
    eval_every: int = Field(1, ge=1, description="Epochs between eval_fn calls (and after the last epoch).")
    token_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of input tokens with ids in token_dropout_block replaced by token_dropout_to each step "
        "(ad-ID tokens -> <ad_unk>: the model learns to read ads it has no token for; model/ad_tokens.py).",
    )
    token_dropout_block: tuple[int, int] | None = Field(None, description="[first, end) of the ids that may drop.")
    token_dropout_to: int | None = None
    ad_head_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the next-ad loss: at the token before each target S-ID, a softmax over the ad-ID "
        "token block (ad_head_block) of the output layer must name the ad whose S-ID follows (model/ad_head.py). "
        "The reported train_loss then includes it.",
    )
    ad_head_block: tuple[int, int] | None = Field(None, description="[first, end) of the known ads' token ids.")
    distill_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="With trie scoring and examples carrying `soft` teacher targets (model/distill.py): weight of the "
        "cross-entropy to the teacher; the hard target keeps 1 - weight.",
    )
    desc: str = "train"


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids with labels on the target tokens only (and their trie parents for trie scoring).

    No attention mask is needed: padding is on the right and attention is causal, so no real token ever attends to
    a pad, and `attention_mask=None` lets torch take its fused causal kernel.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor  # IGNORE outside the targets
    num_response_tokens: int
    parents: torch.Tensor | None = None  # trie node of each target's prefix, aligned with labels (-1 elsewhere)
    real_tokens: int = 0
    #: with an ad head: at each target run's first label, the index in the ad block of the ad token that follows
    #: the run (-1 elsewhere, or where no known ad token follows); read before token dropout touches input_ids
    ad_targets: torch.Tensor | None = None
    #: teacher targets of the labelled tokens after the first position, in `labels[:, 1:] != IGNORE` order
    soft: torch.Tensor | None = None
    #: per-token loss weights of the labelled tokens after the first position, in the same order as `soft`
    token_weight: torch.Tensor | None = None


def labelled_row(example: Example, max_len: int) -> tuple[list[int], list[int]]:
    """(ids, labels) of one example, cut from the left to max_len tokens."""
    if isinstance(example, SequenceExample):
        ids, labels = list(example.ids), list(example.labels)
        if len(ids) != len(labels):
            raise ValueError(f"a sequence example has {len(ids)} tokens but {len(labels)} labels")
        if len(ids) > max_len:
            cut = len(ids) - max_len
            ids, labels = ids[cut:], labels[cut:]
            # a target run cut in its middle would be read from the trie root at the wrong level: drop its rest
            i = 0
            while example.labels[cut - 1] != IGNORE and i < len(labels) and labels[i] != IGNORE:
                labels[i] = IGNORE
                i += 1
        if all(label == IGNORE for label in labels):
            raise ValueError("a sequence example has no target token within max_len; nothing to learn from it")
        return ids, labels
    prompt, response = example
    response = list(response)
    if not response:
        raise ValueError("an example has an empty response; nothing to learn from it")
    if len(response) >= max_len:
        raise ValueError(f"response of {len(response)} tokens does not fit max_len={max_len}")
    keep = max_len - len(response)
    prompt = list(prompt)[-keep:]
    return prompt + response, [IGNORE] * len(prompt) + response


def collate(
    examples: Sequence[Example],
    pad_id: int,
    max_len: int,
    trie: TrieSoftmax | None = None,
    ad_block: tuple[int, int] | None = None,
) -> Batch:
    """Right-padded batch with labels only on target tokens; prompts truncated from the left. With `ad_block`,
    also the next-ad targets of the ad head (`ad_head_targets`)."""
    rows = [labelled_row(e, max_len) for e in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    parents = torch.full((len(rows), width), -1, dtype=torch.long) if trie is not None else None
    ad_targets = torch.full((len(rows), width), -1, dtype=torch.long) if ad_block is not None else None
    soft = _kept_rows(examples, rows, "soft")
    token_weight = _kept_rows(examples, rows, "weights")
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        if parents is not None and trie is not None:
            parents[i, : len(lab)] = torch.tensor(trie.parents(lab))
        if ad_targets is not None and ad_block is not None:
            ad_targets[i, : len(lab)] = torch.tensor(ad_head_targets(ids, lab, ad_block))
    return Batch(
        input_ids=input_ids,
        labels=labels,
        num_response_tokens=int((labels != IGNORE).sum()),
        parents=parents,
        real_tokens=sum(len(ids) for ids, _ in rows),
        ad_targets=ad_targets,
        soft=soft,
        token_weight=token_weight,
    )


def _kept_rows(
    examples: Sequence[Example], rows: Sequence[tuple[list[int], list[int]]], field: Literal["soft", "weights"]
) -> torch.Tensor | None:
    """The examples' per-labelled-token `field` (teacher rows [n, width] or weights [n]) for the labels their
    (left-cut) rows kept, stacked in loss order; a missing value is a zero teacher row or a weight of 1."""
    given = [getattr(e, field) for e in examples if isinstance(e, SequenceExample) and getattr(e, field) is not None]
    if not given:
        return None
    width = max(g.shape[1] for g in given) if field == "soft" else None
    parts = []
    for example, (_, lab) in zip(examples, rows, strict=True):
        kept = sum(label != IGNORE for label in lab[1:])
        value = getattr(example, field) if isinstance(example, SequenceExample) else None
        if value is None or len(value) < kept:
            shape = (kept, width) if width is not None else (kept,)
            parts.append(np.zeros(shape, np.float32) if width is not None else np.ones(shape, np.float32))
        elif width is not None:
            part = value[len(value) - kept :]
            parts.append(np.pad(part, ((0, 0), (0, width - part.shape[1]))))
        else:
            parts.append(np.asarray(value[len(value) - kept :], dtype=np.float32))
    return torch.from_numpy(np.concatenate(parts)) if parts else None


def ad_head_targets(ids: Sequence[int], labels: Sequence[int], ad_block: tuple[int, int]) -> list[int]:
    """Per position: at the first label of each target run (an ad's S-ID), the index in `ad_block` of the token
    right after the run (the ad's own ad-ID token in the prompt layout); -1 elsewhere and where that token is not
    a known ad's (none, or the sequence ends)."""
    first, end = ad_block
    out = [-1] * len(labels)
    start = None
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            if i < len(ids) and first <= ids[i] < end:
                out[start] = ids[i] - first
            start = None
    return out


def response_loss(
    model: torch.nn.Module,
    batch: Batch,
    trie: TrieSoftmax | None = None,
    label_smoothing: float = 0.0,
    ad_head: tuple[tuple[int, int], float] | None = None,
    distill_weight: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over target tokens: over the vocabulary, or over each target's trie siblings; plus, with
    `ad_head` ((first, end) of the ad block, weight), the weighted next-ad cross-entropy over the ad block."""
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    targets = batch.labels[:, 1:]
    select = targets != IGNORE
    states = hidden[:, :-1][select]
    weight = model.get_output_embeddings().weight
    if trie is None:
        logits = model.get_output_embeddings()(states)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[select], label_smoothing=label_smoothing)
    else:
        if batch.parents is None:
            raise ValueError("trie scoring needs a batch collated with the trie (its targets' parents)")
        parents = batch.parents[:, 1:][select]
        loss = trie.loss(
            states, weight, targets[select], parents, label_smoothing, batch.soft, distill_weight, batch.token_weight
        )
    if ad_head is None:
        return loss
    if batch.ad_targets is None:
        raise ValueError("an ad head needs a batch collated with the ad block (its next-ad targets)")
    (first, end), head_weight = ad_head
    ad_targets = batch.ad_targets[:, 1:]
    at = ad_targets >= 0
    if not bool(at.any()):
        return loss
    ad_logits = hidden[:, :-1][at] @ weight[first:end].T
    return loss + head_weight * torch.nn.functional.cross_entropy(ad_logits.float(), ad_targets[at])


def response_logprobs(model: torch.nn.Module, batch: Batch, trie: TrieSoftmax | None = None) -> torch.Tensor:
    """Sum of response-token log-probabilities per row, shape [batch]: over the vocabulary, or (with `trie`, for
    models trained with trie scoring) among each token's valid trie siblings."""
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    targets = batch.labels[:, 1:]
    select = targets != IGNORE
    if trie is not None:
        if batch.parents is None:
            raise ValueError("trie scoring needs a batch collated with the trie (its targets' parents)")
        logp = trie.token_logprobs(
            hidden[:, :-1][select], model.get_output_embeddings().weight, targets[select], batch.parents[:, 1:][select]
        )
        rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)[select]
        return torch.zeros(targets.shape[0], device=logp.device).index_add(0, rows, logp)
    logits = model.get_output_embeddings()(hidden[:, :-1]).float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * select).sum(dim=1)


def _length(example: Example) -> int:
    if isinstance(example, SequenceExample):
        return len(example.ids)
    prompt, response = example
    return len(prompt) + len(response)


class TrainingDropout:
    """Dropout on the input embeddings and on every attention/MLP output of a Llama-family model, as forward hooks
    active inside `with` blocks in training mode only.

    Why hooks: HF Llama has no hidden-state dropout, and small models trained for many epochs on ~50k sequences
    memorise them; hooks regularise training while the saved checkpoint stays a plain HF model that any tool
    (our decoder, `generate`, TensorRT-LLM's converters) reads unchanged.
    """

    def __init__(self, model: torch.nn.Module, embedding: float, residual: float) -> None:
        self.targets: list[tuple[torch.nn.Module, float]] = []
        if embedding > 0:
            self.targets.append((model.get_input_embeddings(), embedding))
        if residual > 0:
            for layer in model.get_decoder().layers:
                self.targets += [(layer.self_attn.o_proj, residual), (layer.mlp.down_proj, residual)]
        self.handles: list[Any] = []

    def __enter__(self) -> TrainingDropout:
        for module, p in self.targets:
            self.handles.append(
                module.register_forward_hook(
                    lambda mod, _inp, out, p=p: torch.nn.functional.dropout(out, p, mod.training)
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar length (less padding = less CPU), deterministic for a seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _lr_lambda(total_steps: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return fn


def save_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], directory: Path
) -> None:
    """Model weights, optimizer tensors and loop state as safetensors + JSON (written then renamed)."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(
        json.dumps({**state, "param_groups": opt["param_groups"], "optimizer_scalars": scalars}, indent=1)
    )
    if directory.exists():
        for f in directory.iterdir():
            f.unlink()
        directory.rmdir()
    tmp.rename(directory)


def load_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, directory: Path) -> dict[str, Any]:
    """Inverse of `save_state`; returns the loop state dict."""
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    state = json.loads((directory / "state.json").read_text())
    if optimizer is not None:
        tensors = load_file(str(directory / "optimizer.safetensors"))
        opt_state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            pid, key = name.split(".", 1)
            opt_state.setdefault(int(pid), {})[key] = value
        for pid, values in state["optimizer_scalars"].items():
            opt_state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return state


def drop_tokens(
    ids: torch.Tensor, block: tuple[int, int], replacement: int, rate: float, rng: torch.Generator
) -> torch.Tensor:
    """Replace, in place, each id in [block[0], block[1]) by `replacement` with probability `rate`."""
    hit = (ids >= block[0]) & (ids < block[1]) & (torch.rand(ids.shape, generator=rng) < rate)
    ids[hit] = replacement
    return ids


def train_causal_lm(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    config: LMTrainConfig,
    eval_fn: EvalFn | None = None,
    trie: TrieArrays | None = None,
) -> dict[str, Any]:
    """Train `model` in place on `examples`; returns (and writes) the metrics dict. See module doc.

    `trie` (the S-ID trie in token ids) is required for `config.scoring == "trie"`.
    """
    if not examples:
        raise ValueError("no training examples: check the data split and the task configuration")
    if config.scoring == "trie" and trie is None:
        raise ValueError("scoring='trie' needs the trie the targets are paths of")
    trie_softmax = TrieSoftmax(trie) if config.scoring == "trie" and trie is not None else None
    if config.ad_head_weight > 0 and config.ad_head_block is None:
        raise ValueError("ad_head_weight > 0 needs ad_head_block (the ad-ID token ids the head chooses among)")
    ad_block = config.ad_head_block if config.ad_head_weight > 0 else None
    ad_head = (ad_block, config.ad_head_weight) if ad_block is not None else None
    torch.set_num_threads(min(config.torch_threads, 2))
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lengths = [min(_length(e), config.max_len) for e in examples]
    steps_per_epoch = math.ceil(math.ceil(len(examples) / config.batch_size) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup, config.min_lr_ratio))

    loop: dict[str, Any] = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "best": None, "bad_epochs": 0}
    history: list[dict[str, Any]] = []
    ckpt = out / "checkpoint"
    if config.resume and (ckpt / "state.json").exists():
        loop = load_state(model, optimizer, ckpt)
        history = loop.pop("history", [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # replaying the schedule before the next optimizer.step() is intended
            for _ in range(loop["global_step"]):
                scheduler.step()
        if loop.get("done"):
            return _finish(model, out, history, loop, eval_fn is not None)

    model.train()
    dropout = TrainingDropout(model, config.embedding_dropout, config.residual_dropout)
    token_rng = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    for epoch in range(loop["epoch"], config.epochs):
        batches = length_bucketed_batches(lengths, config.batch_size, config.seed + epoch)
        skip = loop["batch_in_epoch"] if epoch == loop["epoch"] else 0
        sum_loss, sum_tokens, seen_tokens, t_epoch = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(total=len(batches), initial=skip, desc=f"{config.desc} ep{epoch + 1}/{config.epochs}", leave=False)
        optimizer.zero_grad(set_to_none=True)
        for b_index in range(skip, len(batches)):
            batch = collate([examples[i] for i in batches[b_index]], pad_id, config.max_len, trie_softmax, ad_block)
            block, to = config.token_dropout_block, config.token_dropout_to
            if config.token_dropout > 0 and block is not None and to is not None:
                drop_tokens(batch.input_ids, block, to, config.token_dropout, token_rng)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16), dropout:
                loss = response_loss(model, batch, trie_softmax, config.label_smoothing, ad_head, config.distill_weight)
            (loss / config.grad_accum).backward()
            sum_loss += loss.item() * batch.num_response_tokens
            sum_tokens += batch.num_response_tokens
            seen_tokens += batch.real_tokens
            last = b_index == len(batches) - 1
            if (b_index + 1) % config.grad_accum == 0 or last:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop["global_step"] += 1
                interrupt = config.stop_after_steps is not None and loop["global_step"] >= config.stop_after_steps
                if (loop["global_step"] % config.checkpoint_every == 0 or interrupt) and not last:
                    loop.update(epoch=epoch, batch_in_epoch=b_index + 1)
                    save_state(model, optimizer, {**loop, "history": history}, ckpt)
                if interrupt and not last:
                    bar.close()
                    _write_metrics(out, history, loop, time.perf_counter() - started)
                    return {**_finish(model, out, history, loop, False), "interrupted": True}
            bar.update(1)
            bar.set_postfix(loss=f"{sum_loss / max(sum_tokens, 1):.3f}")
        bar.close()
        elapsed = time.perf_counter() - t_epoch
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": sum_loss / max(sum_tokens, 1),
            "tokens_per_s": seen_tokens / max(elapsed, 1e-9),
            "epoch_seconds": elapsed,
            "lr": scheduler.get_last_lr()[0],
        }
        stop = False
        if eval_fn is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
            model.eval()
            with torch.no_grad():
                scores = eval_fn(model)
            model.train()
            record["valid"] = scores
            if config.monitor not in scores:
                raise KeyError(f"eval_fn returned {sorted(scores)} but config.monitor is {config.monitor!r}")
            value = scores[config.monitor]
            if loop["best"] is None or value > loop["best"]:
                loop.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
                save_state(model, optimizer, {"epoch": epoch + 1}, out / "best")
            else:
                loop["bad_epochs"] += 1
                stop = loop["bad_epochs"] >= config.patience
        history.append(record)
        tqdm.write(f"[{config.desc}] " + json.dumps(record))
        loop.update(epoch=epoch + 1, batch_in_epoch=0)
        _write_metrics(out, history, loop, time.perf_counter() - started)
        if stop or epoch + 1 == config.epochs:
            loop["done"] = True
        save_state(model, optimizer, {**loop, "history": history}, ckpt)
        if stop:
            break
    return _finish(model, out, history, loop, eval_fn is not None)


def _write_metrics(out: Path, history: list[dict[str, Any]], loop: dict[str, Any], seconds: float) -> dict[str, Any]:
    metrics = {
        "epochs": history,
        "global_step": loop["global_step"],
        "best": loop.get("best"),
        "best_epoch": loop.get("best_epoch"),
        "train_seconds": seconds,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _finish(
    model: torch.nn.Module, out: Path, history: list[dict[str, Any]], loop: dict[str, Any], restore_best: bool
) -> dict[str, Any]:
    if restore_best and (out / "best" / "model.safetensors").exists():
        model.load_state_dict(load_file(str(out / "best" / "model.safetensors")))
    model.eval()
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    metrics.setdefault("epochs", history)
    return metrics
