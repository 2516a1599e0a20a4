"""docs/indexing.md: index quality on Amazon Scientific (docs/data/index-quality/, from `adgen index build`
+ `adgen index report`) and the index benchmark (bench/results/index.json)."""

from __future__ import annotations

from typing import Any

from adgen.figures.regions import region
from adgen.figures.sources import Sources

QUALITY = "docs/data/index-quality/report.json"
BUILD = "docs/data/index-quality/build_report.json"
RUN = "docs/data/index-quality/run.json"
INDEX = "index"


def _pct(x: float) -> str:
    return f"{x:.1%}"


@region("index-quality-run")
def index_quality_run(sources: Sources) -> str:
    q, b, run = sources.data(QUALITY), sources.data(BUILD), sources.data(RUN)
    levels = len(b["codebook_sizes"]) - 1
    return (
        f"Measured with `{run['command']}` (commit {run['commit']}, {run['started_at'][:10]}): {levels} levels x"
        f" {b['codebook_sizes'][0]} codes, seed {q['seed']}, {q['sampled_ads']:,} sampled ads for the neighbour"
        f" check. The {b['items'] - q['items']:,} products without a category are left out of the category checks,"
        f' so the report covers {q["items"]:,} of the {b["items"]:,} ads. "first-level" is the first category'
        ' under the catalogue root (e.g. *Fasteners*), "second-level" the pair of the first two (e.g.'
        " *Fasteners > Collated Fasteners*)."
    )


@region("index-quality-usage")
def index_quality_usage(sources: Sources) -> str:
    q, b = sources.data(QUALITY), sources.data(BUILD)
    n = len(q["utilisation"])
    lines = [
        "| code usage | " + " | ".join(f"level {i + 1}" for i in range(n)) + " |",
        "|---|" + "---|" * n,
        "| utilisation | " + " | ".join(f"{u:.0%}" for u in q["utilisation"]) + " |",
        f"| perplexity (max {q['codebook_sizes'][0]}) | " + " | ".join(f"{p:.1f}" for p in q["perplexity"]) + " |",
        "",
        f"Collision rate before the extra code (1 − distinct semantic code tuples / ads):"
        f" **{_pct(q['collision_rate_before_extra_code'])}** on the ads with a category, {_pct(b['collision_rate'])}"
        f" on all {b['items']:,}; the largest group of ads sharing their semantic codes holds {b['max_collisions']},"
        f" so the collision level was sized to {b['codebook_sizes'][-1]} codes (highest collision code used:"
        f" {q['max_collision_code']}).",
    ]
    return "\n".join(lines)


def _rows(checks: list[dict[str, Any]], level: str, key: str) -> list[dict[str, Any]]:
    return sorted((c for c in checks if c["level"] == level), key=lambda c: c[key])


@region("index-quality-neighbours")
def index_quality_neighbours(sources: Sources) -> str:
    q = sources.data(QUALITY)
    levels = list(dict.fromkeys(c["level"] for c in q["neighbours"]))
    ks = sorted({c["k"] for c in q["neighbours"]})
    lines = ["| category | " + " | ".join(f"K = {k}" for k in ks) + " | chance |", "|---|" + "---|" * (len(ks) + 1)]
    for level in levels:
        rows = _rows(q["neighbours"], level, "k")
        cells = " | ".join(_pct(c["same_category"]) for c in rows)
        lines.append(f"| {level} | {cells} | {_pct(rows[0]['chance'])} |")
    return "\n".join(lines)


@region("index-quality-coherence")
def index_quality_coherence(sources: Sources) -> str:
    q = sources.data(QUALITY)
    levels = list(dict.fromkeys(c["level"] for c in q["coherence"]))
    lengths = sorted({c["prefix_length"] for c in q["coherence"]})
    names = {1: "shared first code", 2: "first two codes", 3: "all three codes"}
    head = [names.get(n, f"first {n} codes") for n in lengths]
    lines = ["| category | " + " | ".join(head) + " | chance |", "|---|" + "---|" * (len(lengths) + 1)]
    for level in levels:
        rows = _rows(q["coherence"], level, "prefix_length")
        cells = [f"{_pct(c['same_category_given_shared_prefix'])} ({c['lift']:.1f}×)" for c in rows]
        lines.append(f"| {level} | " + " | ".join(cells) + f" | {_pct(rows[0]['chance'])} |")
    pairs = _rows(q["coherence"], levels[0], "prefix_length")
    shares = ", ".join(f"{c['pairs']:,} share the {names.get(c['prefix_length'], 'prefix')}" for c in pairs)
    lines += ["", f"(pairs: {shares}.)"]
    return "\n".join(lines)


@region("index-benchmark")
def index_benchmark(sources: Sources) -> str:
    d = sources.data(INDEX)
    s, r, t = d["synthetic"], d["real"], d["targets"]

    def ok(flag: bool) -> str:
        return "✔" if flag else "**✘ missed**"

    rows = [
        (
            "1M ads: S-IDs + CSR trie from codes",
            f"{s['trie_build_s']:.1f} s (assign {s['assign_sids_s']:.1f} s"
            f" + materialise {s['materialise_trie_s']:.1f} s)",
            "–",
            "–",
            f"< 60 s {ok(t['trie_build_under_60s'])}",
        ),
        (
            "1M ads: RQ-VAE inference + S-IDs + trie",
            f"{s['build_total_s']:.1f} s (inference {s['rqvae_inference_s']:.1f} s)",
            "–",
            "–",
            f"< 60 s {ok(t['build_incl_rqvae_under_60s'])}",
        ),
        (
            "CSR construction, 1M S-IDs",
            f"{s['vectorised_csr_s']:.2f} s",
            f"{s['reference_from_sequences_s']:.1f} s (`TrieArrays.from_sequences`)",
            f"{s['csr_build_speedup']:.1f}×",
            "",
        ),
        (
            "trie memory, 1M ads",
            f"{s['trie_bytes'] / 1e6:.1f} MB ({s['trie_bytes_per_ad']:.0f} B/ad, {s['trie_nodes']:,} nodes)",
            f"{s['naive_dict_trie_rss_bytes'] / 1e6:.0f} MB (dict-of-dicts, RSS growth)",
            f"{s['memory_ratio_naive_over_csr']:.1f}×",
            f"< 200 MB {ok(t['trie_under_200MB'])}",
        ),
        ("live map (dicts + codes), 1M ads", f"{s['live_map_rss_bytes'] / 1e6:.0f} MB RSS growth", "–", "–", ""),
        (
            f"allowed-token mask + step, {s['lookup_beams']:,} beams, vocab {s['lookup_vocab']:,}",
            f"{s['lookup_ms_per_step']:.1f} ms/step",
            f"{s['naive_lookup_ms_per_step']:.1f} ms/step (dict walk + Python mask)",
            f"{s['lookup_speedup']:.1f}×",
            "",
        ),
        (
            "insert one ad into the live 1M map, incl. RQ-VAE codes",
            f"{s['insert_ms_with_rqvae']:.3f} ms",
            "–",
            "–",
            f"< 1 ms {ok(t['insert_under_1ms'])}",
        ),
        (
            "insert, S-ID assignment only",
            f"{s['insert_ms_sid_only']:.3f} ms",
            f"{s['naive_dict_insert_ms']:.3f} ms (dict-of-dicts insert)",
            f"{s['naive_dict_insert_ms'] / s['insert_ms_sid_only']:.2f}×",
            "",
        ),
        ("delete one ad", f"{s['delete_ms']:.3f} ms", "–", "–", ""),
        (
            f"re-materialise TrieArrays after updates ({s['items_after_updates']:,} ads)",
            f"{s['rematerialise_after_updates_s']:.2f} s",
            "–",
            "–",
            "once per published version",
        ),
        (
            f"real catalogue ({r['items']:,} ads): RQ-VAE training ({r['rqvae_epochs']} epochs) + S-IDs + trie",
            f"{r['build_total_s']:.1f} s (train {r['train_rqvae_s']:.1f} s,"
            f" assign + trie {r['assign_and_trie_s']:.2f} s)",
            "–",
            "–",
            "",
        ),
    ]
    lines = ["| measure | ours | baseline (same run) | ratio | target |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)
