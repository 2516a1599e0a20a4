"""Index benchmark: build time (real catalogue, 1M synthetic ads), live inserts, allowed-token lookups, memory.

Run (about 5-10 minutes on 2 shared cores; baselines are measured in the same run):

    .venv/bin/python bench/bench_index.py --out bench/results/index.json

Sections:
  real   Amazon Scientific (4,344 ads): ad text -> embeddings (from the on-disk cache; the first run
         encodes them, ~100 texts/s) -> RQ-VAE training -> S-IDs -> trie. Skipped with --skip-real.
  1m     1,000,000 synthetic ads: random unit embeddings (no text encoding) -> RQ-VAE inference (3 x 256
         codes, trained briefly on 20k of them) -> S-IDs -> CSR trie. Baseline: the reference dict-walk
         builder `TrieArrays.from_sequences` on the same S-IDs.
  insert one ad into the live 1M-ad map (frozen RQ-VAE codes + next free collision code), per insert,
         with and without the RQ-VAE call; then re-materialising the decoder's TrieArrays.
  lookup allowed-token masks + trie steps for 1,000 beams per step down all levels of the 1M trie, vs a
         dict-of-dicts trie with a Python loop filling the mask.
  memory TrieArrays bytes per 1M ads vs the dict-of-dicts trie (process RSS growth), and the live map.
Targets from the issue: 1M-ad trie built in < 60 s and < 200 MB; one insert < 1 ms excluding encoding.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from adgen.index.ad_index import collision_level_size
from adgen.index.rqvae import RQVAEConfig, train_rqvae
from adgen.index.semantic_ids import SemanticIdMap, level_offsets, sid_vocabulary
from adgen.index.sid_trie import build_fixed_depth_trie, trie_nbytes
from adgen.index.trie_arrays import TrieArrays

console = Console()
AMAZON = Path("/work/shared/datasets/amazon-scientific")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_real(epochs: int) -> dict:
    from adgen.core.ad_text import ad_text
    from adgen.datasets import load_amazon
    from adgen.index.ad_index import build_ad_index
    from adgen.model.encoder import CachedEncoder, load_encoder

    items = sorted(load_amazon(AMAZON).active_items().values(), key=lambda i: i.item_id)
    t_load, encoder = timed(lambda: CachedEncoder(load_encoder(), Path("var/cache/embeddings")))
    t_embed, emb = timed(lambda: encoder.encode([ad_text(i) for i in items], progress=False))
    config = RQVAEConfig.sized_for(len(items), encoder.dim, epochs=epochs)
    model_dir = Path("var/runs/bench-index-real")
    t_build, (_index, report) = timed(lambda: build_ad_index(items, emb, config, model_dir, progress=False))
    return {
        "items": len(items),
        "encoder_load_s": t_load,
        "embed_s_from_cache": t_embed,
        "rqvae_epochs": epochs,
        "train_rqvae_s": report.seconds["train_rqvae"],
        "assign_and_trie_s": report.seconds["assign_and_trie"],
        "build_total_s": t_build,
        "collision_rate": report.collision_rate,
        "utilisation": report.utilisation,
        "codebook_sizes": report.codebook_sizes,
    }


def naive_trie(sequences: np.ndarray) -> dict:
    """Baseline: nested dicts, leaves hold the row number."""
    root: dict = {}
    for row, seq in enumerate(sequences.tolist()):
        node = root
        for tok in seq[:-1]:
            node = node.setdefault(tok, {})
        node[seq[-1]] = row
    return root


def naive_masks(root: dict, paths: list[tuple[int, ...]], vocab: int) -> torch.Tensor:
    """Baseline mask building: walk each beam's prefix in Python, set its children one by one."""
    mask = torch.zeros(len(paths), vocab, dtype=torch.bool)
    for i, path in enumerate(paths):
        node = root
        for tok in path:
            node = node[tok]
        mask[i, list(node.keys())] = True
    return mask


def bench_1m(n: int, beams: int, token_offset: int, repeats: int, reference_builder: bool) -> dict:
    out: dict = {"items": n}
    rng = np.random.default_rng(0)
    config = RQVAEConfig(input_dim=384, num_levels=3, codebook_size=256, epochs=2, seed=0)
    train = rng.standard_normal((20_000, 384), dtype=np.float32)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    out["train_rqvae_20k_s"], (model, _) = timed(lambda: train_rqvae(train, config, progress=False))

    torch.set_num_threads(1)
    embeddings = np.empty((n, 384), dtype=np.float32)  # stands in for the embedding cache; not timed
    for s in range(0, n, 100_000):
        chunk = rng.standard_normal((min(100_000, n - s), 384), dtype=np.float32)
        embeddings[s : s + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    start = time.perf_counter()
    codes = model.codes(embeddings, batch_size=50_000)
    out["rqvae_inference_s"] = time.perf_counter() - start
    del embeddings
    ids = [f"ad{i:07d}" for i in range(n)]
    sizes = (256, 256, 256, collision_level_size(codes, None))
    out["codebook_sizes"] = list(sizes)
    gc.collect()
    rss0 = rss_bytes()
    out["assign_sids_s"], sid_map = timed(lambda: SemanticIdMap.build(ids, codes, sizes))
    out["live_map_rss_bytes"] = rss_bytes() - rss0
    out["materialise_trie_s"], (trie, _leaf_items) = timed(lambda: sid_map.trie_arrays(token_offset))
    out["trie_build_s"] = out["assign_sids_s"] + out["materialise_trie_s"]
    out["build_total_s"] = out["rqvae_inference_s"] + out["trie_build_s"]
    out["trie_nodes"] = trie.num_nodes
    out["trie_bytes"] = trie_nbytes(trie)
    out["trie_bytes_per_ad"] = out["trie_bytes"] / n

    sids, _ = sid_map.to_arrays()
    tokens = sids.astype(np.int64) + level_offsets(sizes) + token_offset
    out["vectorised_csr_s"], _ = timed(lambda: build_fixed_depth_trie(tokens, np.arange(n)))
    if reference_builder:
        seqs = tokens.tolist()
        out["reference_from_sequences_s"], _ = timed(lambda: TrieArrays.from_sequences(seqs, list(range(n))))
        out["csr_build_speedup"] = out["reference_from_sequences_s"] / out["vectorised_csr_s"]
        del seqs
    gc.collect()
    rss0 = rss_bytes()
    out["naive_dict_trie_build_s"], naive = timed(lambda: naive_trie(tokens))
    out["naive_dict_trie_rss_bytes"] = rss_bytes() - rss0
    out["memory_ratio_naive_over_csr"] = out["naive_dict_trie_rss_bytes"] / out["trie_bytes"]

    # lookups: `beams` random live S-IDs walked level by level; masks over the full vocabulary
    vocab = token_offset + len(sid_vocabulary(sizes))
    pick = rng.choice(n, size=beams, replace=False)
    fast_ms, naive_ms = [], []
    for _ in range(repeats):
        nodes = torch.zeros(beams, dtype=torch.int64)
        t_fast = 0.0
        for level in range(len(sizes)):
            start = time.perf_counter()
            mask = trie.allowed_mask(nodes, vocab)
            nodes = trie.step(nodes, torch.from_numpy(tokens[pick, level]))
            t_fast += time.perf_counter() - start
            assert bool(mask[torch.arange(beams), torch.from_numpy(tokens[pick, level])].all())
        assert bool((trie.leaf_value[nodes] == torch.from_numpy(pick)).all())
        fast_ms.append(1000 * t_fast / len(sizes))
        t_naive = 0.0
        for level in range(len(sizes)):
            paths = [tuple(p) for p in tokens[pick, :level].tolist()]
            start = time.perf_counter()
            naive_masks(naive, paths, vocab)
            t_naive += time.perf_counter() - start
        naive_ms.append(1000 * t_naive / len(sizes))
    out["lookup_vocab"] = vocab
    out["lookup_beams"] = beams
    out["lookup_ms_per_step"] = statistics.median(fast_ms)
    out["naive_lookup_ms_per_step"] = statistics.median(naive_ms)
    out["lookup_speedup"] = out["naive_lookup_ms_per_step"] / out["lookup_ms_per_step"]
    del naive
    gc.collect()

    # live inserts into the 1M-ad map: frozen RQ-VAE codes + next free collision code
    k = 2000
    fresh = rng.standard_normal((k, 384), dtype=np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    new_codes = model.codes(fresh).tolist()
    start = time.perf_counter()
    for i, c in enumerate(new_codes):
        sid_map.add(f"new{i:05d}", c)
    out["insert_ms_sid_only"] = 1000 * (time.perf_counter() - start) / k
    start = time.perf_counter()
    for i in range(k):
        sid_map.add(f"newer{i:05d}", model.codes(fresh[i : i + 1])[0].tolist())
    out["insert_ms_with_rqvae"] = 1000 * (time.perf_counter() - start) / k
    start = time.perf_counter()
    for i in range(k):
        sid_map.remove(f"new{i:05d}")
    out["delete_ms"] = 1000 * (time.perf_counter() - start) / k
    out["rematerialise_after_updates_s"], (trie2, _) = timed(lambda: sid_map.trie_arrays(token_offset))
    out["items_after_updates"] = trie2.num_values
    start = time.perf_counter()
    naive_root = {}
    for i in range(k):
        node = naive_root
        for tok in tokens[i, :-1].tolist():
            node = node.setdefault(tok, {})
        node[int(tokens[i, -1])] = i
    out["naive_dict_insert_ms"] = 1000 * (time.perf_counter() - start) / k
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/index.json"))
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--beams", type=int, default=1000)
    parser.add_argument("--token-offset", type=int, default=4096, help="Where S-ID tokens start in the LM vocab.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real-epochs", type=int, default=100)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-reference-builder", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "cpus": os.cpu_count()},
        "platform": platform.platform(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if not args.skip_real:
        console.print("[bold]real catalogue[/bold] ...")
        result["real"] = bench_real(args.real_epochs)
        console.print_json(json.dumps(result["real"]))
    console.print(f"[bold]{args.items:,} synthetic ads[/bold] ...")
    big = bench_1m(args.items, args.beams, args.token_offset, args.repeats, not args.skip_reference_builder)
    result["synthetic"] = big
    result["targets"] = {
        "trie_build_under_60s": big["trie_build_s"] < 60,
        "build_incl_rqvae_under_60s": big["build_total_s"] < 60,
        "trie_under_200MB": big["trie_bytes"] < 200e6,
        "insert_under_1ms": big["insert_ms_with_rqvae"] < 1.0,
    }
    table = Table(title=f"index benchmark ({args.items:,} ads)")
    for col in ("measure", "ours", "baseline", "ratio"):
        table.add_column(col)
    rows = [
        ("build: S-IDs + trie from codes (s)", big["trie_build_s"], None, None),
        ("build: RQ-VAE inference + S-IDs + trie (s)", big["build_total_s"], None, None),
        (
            "CSR construction (s) vs from_sequences",
            big["vectorised_csr_s"],
            big.get("reference_from_sequences_s"),
            big.get("csr_build_speedup"),
        ),
        (
            "trie memory (MB) vs dict-of-dicts RSS",
            big["trie_bytes"] / 1e6,
            big["naive_dict_trie_rss_bytes"] / 1e6,
            big["memory_ratio_naive_over_csr"],
        ),
        (
            f"mask+step, {args.beams} beams (ms/step)",
            big["lookup_ms_per_step"],
            big["naive_lookup_ms_per_step"],
            big["lookup_speedup"],
        ),
        ("insert, S-ID only (ms)", big["insert_ms_sid_only"], big["naive_dict_insert_ms"], None),
        ("insert incl. RQ-VAE (ms)", big["insert_ms_with_rqvae"], None, None),
        ("delete (ms)", big["delete_ms"], None, None),
        ("re-materialise TrieArrays (s)", big["rematerialise_after_updates_s"], None, None),
    ]
    for name, ours, base, ratio in rows:
        fmt = lambda v: "-" if v is None else f"{v:,.4g}"  # noqa: E731
        table.add_row(name, fmt(ours), fmt(base), "-" if ratio is None else f"{ratio:,.1f}x")
    console.print(table)
    console.print_json(json.dumps(result["targets"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
