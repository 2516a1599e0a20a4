"""Index quality on a real catalogue: are the embeddings and the S-IDs semantically meaningful?

Three checks. Code usage (utilisation, perplexity, collision rate before the extra code). The LEADRE
Table 3 check on the encoder: for sampled ads, the share of their top-K cosine neighbours in the same
category, against the chance rate sum_c p_c^2. S-ID coherence: the share of ad pairs that share a code
prefix and also share a category, against the same chance rate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from adgen.index.rqvae import code_usage_metrics


class NeighbourCheck(BaseModel):
    level: str
    k: int
    same_category: float
    chance: float


class CoherenceCheck(BaseModel):
    level: str
    prefix_length: int
    same_category_given_shared_prefix: float
    chance: float
    lift: float
    pairs: int


class QualityReport(BaseModel):
    items: int
    codebook_sizes: list[int]
    utilisation: list[float]
    perplexity: list[float]
    collision_rate_before_extra_code: float
    max_collision_code: int
    neighbours: list[NeighbourCheck]
    coherence: list[CoherenceCheck]
    sampled_ads: int
    seed: int


def _chance(labels: Sequence[str]) -> float:
    """Probability that two distinct random items share a label."""
    counts = np.array(list(Counter(labels).values()), dtype=np.float64)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1))) if n > 1 else 0.0


def neighbour_same_category(
    embeddings: np.ndarray, labels: Sequence[str], ks: Sequence[int], samples: int, seed: int, batch: int = 256
) -> dict[int, float]:
    """Share of each sampled ad's top-K cosine neighbours (self excluded) with the same label."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    lab = np.asarray(labels)
    picks = np.random.default_rng(seed).choice(len(x), size=min(samples, len(x)), replace=False)
    kmax = max(ks)
    hits = {k: 0.0 for k in ks}
    for start in range(0, len(picks), batch):
        rows = picks[start : start + batch]
        sims = x[rows] @ x.T
        sims[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-sims, kmax, axis=1)[:, :kmax]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        same = lab[top] == lab[rows][:, None]
        for k in ks:
            hits[k] += same[:, :k].mean(axis=1).sum()
    return {k: hits[k] / len(picks) for k in ks}


def prefix_coherence(sids: np.ndarray, labels: Sequence[str], prefix_length: int) -> tuple[float, int]:
    """P(same label | two distinct ads share the first `prefix_length` codes), and the number of such pairs."""
    groups: dict[tuple[int, ...], Counter[str]] = {}
    for sid, label in zip(map(tuple, sids[:, :prefix_length].tolist()), labels, strict=True):
        groups.setdefault(sid, Counter())[label] += 1
    same = pairs = 0
    for counter in groups.values():
        n = sum(counter.values())
        pairs += n * (n - 1)
        same += sum(c * (c - 1) for c in counter.values())
    return (same / pairs if pairs else 0.0), pairs // 2


def quality_report(
    embeddings: np.ndarray,
    sids: np.ndarray,
    codebook_sizes: Sequence[int],
    category_levels: dict[str, Sequence[str]],
    ks: Sequence[int] = (1, 10, 50),
    samples: int = 1000,
    seed: int = 0,
) -> QualityReport:
    """`sids` [N, M+1] (collision code last) aligned with `embeddings` and each label list."""
    semantic = sids[:, :-1]
    util, perp, collision = code_usage_metrics(semantic, int(max(codebook_sizes[:-1])))
    util = [u * max(codebook_sizes[:-1]) / size for u, size in zip(util, codebook_sizes[:-1], strict=True)]
    neighbours, coherence = [], []
    for level, labels in category_levels.items():
        chance = _chance(labels)
        for k, share in neighbour_same_category(embeddings, labels, ks, samples, seed).items():
            neighbours.append(NeighbourCheck(level=level, k=k, same_category=share, chance=chance))
        for length in range(1, semantic.shape[1] + 1):
            rate, pairs = prefix_coherence(sids, labels, length)
            lift = rate / chance if chance else 0.0
            coherence.append(
                CoherenceCheck(
                    level=level,
                    prefix_length=length,
                    same_category_given_shared_prefix=rate,
                    chance=chance,
                    lift=lift,
                    pairs=pairs,
                )
            )
    return QualityReport(
        items=len(sids),
        codebook_sizes=list(codebook_sizes),
        utilisation=util,
        perplexity=perp,
        collision_rate_before_extra_code=collision,
        max_collision_code=int(sids[:, -1].max()),
        neighbours=neighbours,
        coherence=coherence,
        sampled_ads=min(samples, len(sids)),
        seed=seed,
    )


def plot_report(report: QualityReport, path: Path) -> None:
    """Three panels a person can read at a glance: code usage, Table 3 check, S-ID coherence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    levels = [f"level {i + 1}" for i in range(len(report.utilisation))]
    axes[0].bar(levels, report.utilisation, color="tab:blue")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title(f"Code utilisation (collisions before extra code: {report.collision_rate_before_extra_code:.1%})")
    for level_name, ax, title in (
        ("neighbours", axes[1], "Encoder: top-K neighbours in same category"),
        ("coherence", axes[2], "S-ID: pairs sharing a prefix in same category"),
    ):
        rows = report.neighbours if level_name == "neighbours" else report.coherence
        cats = list(dict.fromkeys(r.level for r in rows))
        width = 0.8 / (len(cats) + 1)
        xs = sorted({r.k if level_name == "neighbours" else r.prefix_length for r in rows})
        for j, cat in enumerate(cats):
            sel = [r for r in rows if r.level == cat]
            vals = [r.same_category if level_name == "neighbours" else r.same_category_given_shared_prefix for r in sel]
            ax.bar(np.arange(len(xs)) + j * width, vals, width, label=cat)
            ax.axhline(sel[0].chance, ls="--", lw=1, color=f"C{j}", label=f"chance ({cat})")
        ax.set_xticks(np.arange(len(xs)) + width * (len(cats) - 1) / 2)
        ax.set_xticklabels([f"K={x}" if level_name == "neighbours" else f"prefix {x}" for x in xs])
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
