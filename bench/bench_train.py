"""Training throughput per model size, fp32 against bf16 autocast, measured in one run on this machine.

    .venv/bin/python bench/bench_train.py --out bench/results/train.json

Two steps are timed for each size (1.6M, 6.3M, 17M parameters with a 4.4k vocabulary):
- `reference`: the step the issue quotes (LlamaForCausalLM, full-vocabulary loss on every position, seq 128,
  batch 32, one thread), so the figures can be set against the ones measured on another machine;
- `pipeline`: the step `adgen train` runs with configs/amazon_full.yaml (one labelled sequence per user, trie-scored
  S-ID targets, no attention mask, two threads) on sequences shaped like the Amazon data's, from which seconds per
  epoch follow (tokens per epoch / tokens per second).
bf16 only pays on CPUs with AVX512-BF16 or AMX; the JSON records which this CPU has, and the ratio bf16/fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adgen.index.trie_arrays import TrieArrays
from adgen.model.lm_training import IGNORE, SequenceExample, collate, response_loss
from adgen.model.trie_loss import TrieSoftmax

SIZES = {"1.6M": (128, 2), "6.3M": (256, 4), "17M": (384, 6)}
VOCAB = 4400
SID_OFFSET = 4096  # S-ID tokens sit after the BPE block, as in the real tokenizer
CODEBOOKS = (64, 64, 64, 16)


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f" {f}" in line]


def build(hidden: int, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg).train()


def time_steps(step: Any, budget_s: float, max_steps: int, warmup: int = 1) -> tuple[float, int]:
    """Median seconds per step over up to `max_steps` steps (after `warmup`), stopping once `budget_s` is spent."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_steps and (spent < budget_s or len(times) < 2):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    times.sort()
    return times[len(times) // 2], len(times)


def reference_step(model: LlamaForCausalLM, bf16: bool) -> Any:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, VOCAB, (32, 128))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def amazon_like_examples(n: int, rng: random.Random, trie_items: list[list[int]]) -> list[SequenceExample]:
    """Sequences with the Amazon data's shape: 5-50 ads per user (median 6), head of 12 tokens, 4 S-ID tokens and
    2 cue tokens per ad (the amazon_full layout without ad words)."""
    out = []
    for _ in range(n):
        ads = min(50, max(3, int(rng.lognormvariate(1.7, 0.5))))
        ids = [rng.randrange(4096) for _ in range(12)]
        labels = [IGNORE] * 12
        for _ in range(ads):
            cue = [rng.randrange(4096) for _ in range(2)]
            sid = rng.choice(trie_items)
            ids += cue + sid
            labels += [IGNORE] * 2 + sid
        out.append(SequenceExample(ids, labels))
    return out


def pipeline_step(model: LlamaForCausalLM, bf16: bool, examples: list[SequenceExample], trie: TrieSoftmax) -> Any:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [examples[i : i + 64] for i in range(0, len(examples), 64)]
    state = {"i": 0}

    def step() -> int:
        batch = collate(batches[state["i"] % len(batches)], 0, 512, trie)
        state["i"] += 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = response_loss(model, batch, trie)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch.real_tokens

    return step, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    parser.add_argument("--sizes", default=",".join(SIZES), help="Comma-separated subset of " + ",".join(SIZES))
    parser.add_argument("--budget-s", type=float, default=20.0, help="Timing budget per (size, dtype, step).")
    parser.add_argument("--epoch-tokens", type=int, default=0, help="Tokens in one epoch (0: measured on a sample).")
    args = parser.parse_args()

    rng = random.Random(0)
    items = [
        [SID_OFFSET + sum(CODEBOOKS[:lvl]) + rng.randrange(CODEBOOKS[lvl]) for lvl in range(4)] for _ in range(4344)
    ]
    items = [list(t) for t in {tuple(i) for i in items}]
    trie = TrieSoftmax(TrieArrays.from_sequences(items, list(range(len(items)))))
    examples = amazon_like_examples(640, rng, items)
    # tokens in an epoch of the real data: 8,317 users with this shape
    epoch_tokens = args.epoch_tokens or round(sum(len(e.ids) for e in examples) / len(examples) * 8317)
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for name in args.sizes.split(","):
        hidden, layers = SIZES[name]
        for bf16 in (False, True):
            torch.set_num_threads(1)
            model = build(hidden, layers)
            params = sum(p.numel() for p in model.parameters())
            ref_s, ref_n = time_steps(reference_step(model, bf16), args.budget_s, 10)
            torch.set_num_threads(2)
            model = build(hidden, layers)
            step, batches = pipeline_step(model, bf16, examples, trie)
            tokens_per_batch = sum(sum(len(e.ids) for e in b) for b in batches) / len(batches)
            pipe_s, pipe_n = time_steps(step, args.budget_s, 10)
            row = {
                "size": name,
                "parameters": params,
                "dtype": "bf16" if bf16 else "fp32",
                "reference_tokens_per_s": 32 * 128 / ref_s,
                "reference_steps_timed": ref_n,
                "pipeline_tokens_per_s": tokens_per_batch / pipe_s,
                "pipeline_steps_timed": pipe_n,
                "pipeline_seconds_per_epoch": epoch_tokens / (tokens_per_batch / pipe_s),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for row in rows:
        fp32 = next(r for r in rows if r["size"] == row["size"] and r["dtype"] == "fp32")
        row["reference_vs_fp32"] = row["reference_tokens_per_s"] / fp32["reference_tokens_per_s"]
        row["pipeline_vs_fp32"] = row["pipeline_tokens_per_s"] / fp32["pipeline_tokens_per_s"]
    out = {
        "what": "training throughput per model size, fp32 vs bf16 autocast, same run",
        "cpu": {
            "machine": platform.machine(),
            "flags": cpu_flags(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "torch": torch.__version__,
        "epoch_tokens": epoch_tokens,
        "rows": rows,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
