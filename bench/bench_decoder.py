"""Decoder benchmark: HF generate vs our constrained beam search, prefix-cache stream, reduced precision.

Run (about 10-20 minutes on 2 shared cores; everything is measured in this one run):

    .venv/bin/python bench/bench_decoder.py --out bench/results/decoder.json

Sections, per model (small: hidden 256 x 4 layers; larger: hidden 512 x 8 layers; vocab 8192, random init):
  (a) HF `generate(num_beams=B, prefix_allowed_tokens_fn=...)` over a dict trie (left-padded batches)
  (b) ours, unconstrained beam search of the same length (the cost of search without the trie)
  (c) ours, trie-constrained
with 32 prompts of 180-220 tokens, B = K = 20, a 100k-item 5-level trie (64 codes per level). The same
baseline policy for (a) and (c): the same prompts in batches of each of `--batch-sizes`, every timing the
median of `--repeats` full passes after a warm-up pass; each side is reported at its own best batch size
(and the whole sweep). Prints ms per prompt, prompts/s, (a)/(c) and (c)/(b), identity of (a) vs (c) top-K,
the prefill share and achieved GFLOP/s against the machine's matmul rate measured at the start of the run.
Then, small model only: a realistic request stream with and without the prefix K/V cache, and fp32 vs
bf16 vs int8 (speed, top-K overlap). The model weights are random (no trained checkpoint is involved):
results are about speed and identity, not relevance.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from transformers import PreTrainedModel

from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm, quantize_int8
from adgen.model.prefix_cache import PrefixCacheStats, PrefixKVCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_info import finish, run_info

console = Console(width=170)
VOCAB = 8192
LEVELS, CODES = 5, 64
MODELS = {
    "small": LMConfig(vocab_size=VOCAB, hidden_size=256, num_layers=4, num_heads=4, init_std=0.05),
    "larger": LMConfig(vocab_size=VOCAB, hidden_size=512, num_layers=8, num_heads=8, init_std=0.05),
}


# -- inputs --------------------------------------------------------------------------------------------------
def make_items(n: int, seed: int = 0) -> list[list[int]]:
    """n distinct 5-level S-ID sequences; level l uses tokens VOCAB - LEVELS*CODES + l*CODES + code."""
    rng = random.Random(seed)
    base = VOCAB - LEVELS * CODES
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        seen.add(tuple(base + lvl * CODES + rng.randrange(CODES) for lvl in range(LEVELS)))
    return [list(s) for s in sorted(seen)]


def make_prompts(n: int, seed: int = 1, lo: int = 180, hi: int = 220) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 4096, size=int(rng.integers(lo, hi + 1))).tolist() for _ in range(n)]


# -- measuring -----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def timed_alternating(
    search: ConstrainedBeamSearch, fns: list[Callable[[], object]], repeats: int
) -> list[tuple[float, object, float]]:
    """Like `timed` for several functions run in turn; also each one's median prefill share."""
    results = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    shares: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - t0)
            tm = search.timings
            shares[i].append(tm.prefill_s / max(tm.prefill_s + tm.decode_s, 1e-9))
    return [(statistics.median(t), r, statistics.median(sh)) for t, r, sh in zip(times, results, shares, strict=True)]


def matmul_gflops(seconds: float = 2.0, size: int = 1024) -> float:
    """The machine's fp32 GEMM rate right now, with the benchmark's thread setting."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * size**3 / (time.perf_counter() - t0) / 1e9


def decode_flops(model: PreTrainedModel, prompts: list[list[int]], beams: int, beam_steps: int) -> float:
    """Useful FLOPs of (c): prefill (last layer only at the last token), then beam steps (no padding)."""
    cfg = model.config
    layer_params = sum(m.weight.numel() for m in model.model.layers[0].modules() if isinstance(m, torch.nn.Linear))
    kv_params = model.model.layers[0].self_attn.k_proj.weight.numel() * 2
    hidden, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    total = 0.0
    for p in prompts:
        t = len(p)
        total += 2 * layer_params * t * (layers - 1) + 2 * kv_params * t + 2 * layer_params  # projections + MLP
        total += (layers - 1) * 2 * t * t * hidden + 4 * t * hidden  # causal attention QK^T and PV
        total += 2 * hidden * vocab  # lm_head at the last token
        for step in range(beam_steps):
            total += beams * (2 * layer_params * layers + 2 * hidden * vocab + layers * 4 * (t + step + 1) * hidden)
    return total


# -- (a) HF generate -----------------------------------------------------------------------------------------
def hf_generate(
    model: PreTrainedModel, prompts: list[list[int]], items: list[list[int]], beams: int
) -> list[list[tuple[tuple[int, ...], float]]]:
    """One `generate` call over `prompts` (left-padded), constrained by a dict trie walk."""
    root: dict = {}
    for seq in items:
        node = root
        for tok in seq:
            node = node.setdefault(tok, {})
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as HF decoder-only generation expects
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1

    def allowed(_batch_id: int, seq: torch.Tensor) -> list[int]:
        node = root
        for tok in seq[width:].tolist():
            node = node[tok]
        return list(node)

    with torch.inference_mode():
        res = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=LEVELS,
            num_beams=beams,
            num_return_sequences=beams,
            do_sample=False,
            length_penalty=0.0,
            prefix_allowed_tokens_fn=allowed,
            return_dict_in_generate=True,
            output_scores=True,
            pad_token_id=0,
            eos_token_id=None,
        )
    seqs = res.sequences[:, width:].view(len(prompts), beams, -1).tolist()
    scores = res.sequences_scores.view(len(prompts), beams).tolist()
    return [[(tuple(s), sc) for s, sc in zip(ss, cs, strict=True)] for ss, cs in zip(seqs, scores, strict=True)]


def identity(ours: list[list[tuple[int, float]]], ref: list[list[tuple[tuple[int, ...], float]]], items) -> dict:
    same, same_set, max_diff = 0, 0, 0.0
    for row, ref_row in zip(ours, ref, strict=True):
        a = [tuple(items[v]) for v, _ in row]
        b = [s for s, _ in ref_row]
        same += a == b
        same_set += set(a) == set(b)
        ref_scores = dict(ref_row)
        diffs = [abs(ref_scores[seq] - s) for seq, (_, s) in zip(a, row, strict=True) if seq in ref_scores]
        max_diff = max([max_diff, *diffs])
    return {"identical_order": same, "identical_set": same_set, "prompts": len(ours), "max_score_diff": max_diff}


# -- sections ------------------------------------------------------------------------------------------------
def in_batches(fn: Callable[[list[list[int]]], list], prompts: list[list[int]], batch: int) -> list:
    """`fn` over consecutive chunks of `batch` prompts (the batch policy both decoders get)."""
    out: list = []
    for start in range(0, len(prompts), batch):
        out.extend(fn(prompts[start : start + batch]))
    return out


def bench_model(name: str, cfg: LMConfig, trie, items, prompts, args, machine_gflops: float) -> dict:
    """(a) and (c) at every batch size of `--batch-sizes`, each the median of `--repeats` full passes over
    the same prompts after a warm-up pass; the headline ratio compares each one at its own best batch size.
    (b) runs interleaved with (c) at (c)'s best batch size."""
    console.print(f"[bold]{name}[/bold]: building model {cfg.hidden_size}x{cfg.num_layers}")
    model = build_lm(cfg)
    params = sum(p.numel() for p in model.parameters())
    k = beams = args.beams
    search = ConstrainedBeamSearch(model)
    n = len(prompts)

    def ours(batch: list[list[int]]) -> list:
        return search.generate(batch, trie, k=k, beams=beams)

    def theirs(batch: list[list[int]]) -> list:
        return hf_generate(model, batch, items, beams)

    sizes = args.larger_batch_sizes if name == "larger" else args.batch_sizes
    sweep: dict[str, dict[str, float]] = {}
    hf_results: dict[int, list] = {}
    for batch in sizes:
        t_c, _ = timed(lambda batch=batch: in_batches(ours, prompts, batch), args.repeats)
        console.print(f"  batch {batch}: (c) {t_c / n * 1000:.1f} ms/prompt; (a) HF generate ...")
        t_a, hf_results[batch] = timed(lambda batch=batch: in_batches(theirs, prompts, batch), args.repeats)
        sweep[str(batch)] = {"a_hf_ms_per_prompt": t_a / n * 1000, "c_constrained_ms_per_prompt": t_c / n * 1000}
        console.print(f"  batch {batch}: (a) {t_a / n * 1000:.0f} ms/prompt")
    best_a = min(sizes, key=lambda b: sweep[str(b)]["a_hf_ms_per_prompt"])
    best_c = min(sizes, key=lambda b: sweep[str(b)]["c_constrained_ms_per_prompt"])
    # (c) and (b) alternate at (c)'s best batch size, so the shared machine's load swings hit both alike
    (t_c, ours_out, prefill_share), (t_b, _, _) = timed_alternating(
        search,
        [
            lambda: in_batches(ours, prompts, best_c),
            lambda: in_batches(
                lambda ps: search.generate_unconstrained(ps, steps=LEVELS, beams=beams), prompts, best_c
            ),
        ],
        args.repeats,
    )
    t_a = sweep[str(best_a)]["a_hf_ms_per_prompt"] * n / 1000
    ident = identity(ours_out, hf_results[best_a], items)
    flops = decode_flops(model, prompts, beams, LEVELS - 1)
    return {
        "model": name,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_layers,
        "params": params,
        "batch_sweep": sweep,
        "a_best_batch": best_a,
        "c_best_batch": best_c,
        "a_hf_ms_per_prompt": t_a / n * 1000,
        "b_unconstrained_ms_per_prompt": t_b / n * 1000,
        "c_constrained_ms_per_prompt": t_c / n * 1000,
        "c_prompts_per_s": n / t_c,
        "speedup_a_over_c": t_a / t_c,
        "ratio_c_over_b": t_c / t_b,
        "identity_a_vs_c": ident,
        "prefill_share_c": prefill_share,
        "c_gflop": flops / 1e9,
        "c_gflops_per_s": flops / t_c / 1e9,
        "c_fraction_of_matmul_rate": flops / t_c / 1e9 / machine_gflops,
    }


def request_stream(users: int, rounds: int, new_share: float, seed: int = 2) -> list[list[int]]:
    """Nearline requests: each round, most users return with one new behaviour appended to their last prompt.

    A prompt is a shared instruction (32 tokens) + the user's profile (24) + their behaviours (12-16 tokens
    each, oldest first). A returning user's new prompt repeats the previous one and adds one behaviour at
    the end; a share of each round is new users (cold). Requests are interleaved across users.
    """
    rng = np.random.default_rng(seed)
    instruction = rng.integers(3, 4096, size=32).tolist()

    def new_user() -> list[int]:
        history = [t for _ in range(int(rng.integers(8, 12))) for t in rng.integers(3, 4096, size=14).tolist()]
        return instruction + rng.integers(3, 4096, size=24).tolist() + history

    current = [new_user() for _ in range(users)]
    stream = list(current)
    for _ in range(rounds):
        order = rng.permutation(users)
        for u in order:
            if rng.random() < new_share:
                current[u] = new_user()
            else:
                current[u] = current[u] + rng.integers(3, 4096, size=int(rng.integers(12, 17))).tolist()
            stream.append(current[u])
    return stream


def bench_prefix_cache(cfg: LMConfig, trie, args) -> dict:
    model = build_lm(cfg)
    stream = request_stream(users=args.stream_users, rounds=3, new_share=0.2)
    batch = args.stream_batch

    def run(search: ConstrainedBeamSearch) -> tuple[float, list]:
        t0 = time.perf_counter()
        out = []
        for start in range(0, len(stream), batch):
            out.extend(search.generate(stream[start : start + batch], trie, k=args.beams))
        return time.perf_counter() - t0, out

    cold = ConstrainedBeamSearch(model)
    cache = PrefixKVCache(max_bytes=args.cache_mb * 2**20)
    warm = ConstrainedBeamSearch(model, prefix_cache=cache)
    run(cold)  # warm-up
    cold_times, warm_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes on the shared machine hit both alike
        t, res_cold = run(cold)
        cold_times.append(t)
        cache.clear()
        cache.stats = PrefixCacheStats()
        t, res_warm = run(warm)
        warm_times.append(t)
    t_cold, t_warm = statistics.median(cold_times), statistics.median(warm_times)
    same = sum([v for v, _ in a] == [v for v, _ in b] for a, b in zip(res_cold, res_warm, strict=True))
    total_tokens = sum(len(p) for p in stream)
    return {
        "requests": len(stream),
        "batch": batch,
        "mean_prompt_tokens": total_tokens / len(stream),
        "no_cache_prompts_per_s": len(stream) / t_cold,
        "cache_prompts_per_s": len(stream) / t_warm,
        "speedup": t_cold / t_warm,
        "reused_token_share": cache.stats.reused_tokens / total_tokens,
        "hit_rate": cache.stats.hits / max(cache.stats.lookups, 1),
        "cache_mb_used": cache.nbytes / 2**20,
        "cache_mb_budget": args.cache_mb,
        "evicted": cache.stats.evicted,
        "superseded": cache.stats.superseded,
        "identical_results": f"{same}/{len(stream)}",
    }


def bench_precision(cfg: LMConfig, trie, prompts, args) -> dict:
    model = build_lm(cfg)
    k = args.beams
    t_fp32, ref = timed(lambda: ConstrainedBeamSearch(model).generate(prompts, trie, k=k), args.repeats)
    variants = {
        "bfloat16": build_lm(cfg).to(torch.bfloat16),
        "int8_dynamic": quantize_int8(build_lm(cfg)),
    }
    out = {"float32": {"ms_per_prompt": t_fp32 / len(prompts) * 1000, "topk_overlap": 1.0, "top1_agree": 1.0}}
    for name, m in variants.items():
        search = ConstrainedBeamSearch(m)
        t, got = timed(lambda search=search: search.generate(prompts, trie, k=k), args.repeats)
        overlap = [len({v for v, _ in a} & {v for v, _ in b}) / k for a, b in zip(ref, got, strict=True)]
        top1 = [a[0][0] == b[0][0] for a, b in zip(ref, got, strict=True)]
        out[name] = {
            "ms_per_prompt": t / len(prompts) * 1000,
            "speedup_vs_fp32": t_fp32 / t,
            "topk_overlap": float(np.mean(overlap)),
            "top1_agree": float(np.mean(top1)),
        }
    return out


# -- report --------------------------------------------------------------------------------------------------
def print_report(result: dict) -> None:
    table = Table(title=f"Constrained decoding, {result['setup']['prompts']} prompts, B=K={result['setup']['beams']}")
    for col in ["model", "(a) HF ms/p", "(a) batch", "(b) ours free ms/p", "(c) ours ms/p", "(c) batch", "(c) p/s"]:
        table.add_column(col, justify="right")
    for col in ["(a)/(c)", "(c)/(b)"]:
        table.add_column(col, justify="right")
    for col in ["a==c order", "prefill %", "GFLOP/s (% matmul)"]:
        table.add_column(col, justify="right")
    for r in result["models"]:
        ident = r["identity_a_vs_c"]
        table.add_row(
            f"{r['model']} ({r['params'] / 1e6:.1f}M)",
            f"{r['a_hf_ms_per_prompt']:.0f}",
            str(r["a_best_batch"]),
            f"{r['b_unconstrained_ms_per_prompt']:.1f}",
            f"{r['c_constrained_ms_per_prompt']:.1f}",
            str(r["c_best_batch"]),
            f"{r['c_prompts_per_s']:.1f}",
            f"{r['speedup_a_over_c']:.1f}x",
            f"{r['ratio_c_over_b']:.2f}",
            f"{ident['identical_order']}/{ident['prompts']}",
            f"{100 * r['prefill_share_c']:.0f}",
            f"{r['c_gflops_per_s']:.1f} ({100 * r['c_fraction_of_matmul_rate']:.0f}%)",
        )
    console.print(table)
    console.print(f"machine fp32 matmul rate (1024^3 GEMM, this run): {result['machine_matmul_gflops']:.1f} GFLOP/s")
    if "prefix_cache" in result:
        console.print("prefix cache on a request stream:", result["prefix_cache"])
    if "precision" in result:
        console.print("precision (small model):", result["precision"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/decoder.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (after one warm-up) for every variant")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32], help="prompts per call, same for HF and ours"
    )
    parser.add_argument(
        "--larger-batch-sizes",
        type=int,
        nargs="+",
        default=[4, 8, 16],
        help="the same for the larger model (HF's beam-expanded K/V of 32 prompts would need ~5 GB)",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--stream-users", type=int, default=48)
    parser.add_argument("--stream-batch", type=int, default=16)
    parser.add_argument("--cache-mb", type=int, default=256)
    parser.add_argument(
        "--sections", nargs="+", default=["table", "cache", "precision"], choices=["table", "cache", "precision"]
    )
    args = parser.parse_args(argv)

    info = run_info()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    machine = matmul_gflops()
    console.print(f"threads={args.threads}, matmul {machine:.1f} GFLOP/s; building {args.items} item trie ...")
    items = make_items(args.items)
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    prompts = make_prompts(args.prompts)
    result: dict = {
        "run": info,
        "setup": {
            "prompts": args.prompts,
            "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
            "beams": args.beams,
            "k": args.beams,
            "items": args.items,
            "levels": LEVELS,
            "codes_per_level": CODES,
            "threads": args.threads,
            "repeats": args.repeats,
            "batch_sizes": args.batch_sizes,
            "larger_batch_sizes": args.larger_batch_sizes,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": " ".join(sys.argv),
        },
        "machine_matmul_gflops": machine,
        "models": [],
    }
    if "table" in args.sections:
        for name in args.models:
            result["models"].append(bench_model(name, MODELS[name], trie, items, prompts, args, machine))
    if "cache" in args.sections:
        console.print("prefix cache stream (small model) ...")
        result["prefix_cache"] = bench_prefix_cache(MODELS["small"], trie, args)
    if "precision" in args.sections:
        console.print("precision variants (small model) ...")
        result["precision"] = bench_precision(MODELS["small"], trie, prompts, args)
    result["machine_matmul_gflops_end"] = matmul_gflops()
    finish(info)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
