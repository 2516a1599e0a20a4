"""Collaborative item vectors from behaviour sequences, and a text -> collaborative map for ads nobody has seen yet.

Why: S-IDs quantised from text alone give two ads that are bought one after the other unrelated codes whenever
their descriptions differ (a filament and the nozzle it jams), so the generative model must learn every such pair
from scratch. Appending a collaborative vector to the text embedding before the RQ-VAE puts ads that co-occur in
users' sequences under shared code prefixes, and it splits near-duplicate texts that users treat differently
(fewer collisions). On Amazon Scientific this is one of the levers measured in docs/results.md.

How: positive pointwise mutual information of ads within `window` steps of each other in the *training* part of
the sequences (never a validation or test target), factorised by a truncated SVD (scipy, sparse), rows
L2-normalised. A new ad has no behaviour, so `TextToCollaborative` (ridge regression fitted on the ads that do)
predicts its collaborative vector from its text embedding; the map is stored inside the RQ-VAE's weights
(`RQVAE.input_from_text`), so live ads are coded the way the catalogue was and snapshots carry no extra file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.linalg import svds


class CollaborativeConfig(BaseModel):
    """How much the collaborative part weighs in the S-ID embedding (0 = text only) and how it is built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.0, ge=0, description="Norm of the collaborative part next to the unit text embedding.")
    dim: int = Field(64, ge=2, description="SVD rank.")
    window: int = Field(3, ge=1, description="Sequence steps within which two ads count as co-occurring.")
    ridge: float = Field(1.0, gt=0, description="L2 penalty of the text -> collaborative map.")


def cooccurrence(sequences: Sequence[Sequence[str]], index: Mapping[str, int], window: int) -> csr_matrix:
    """Symmetric counts of ads within `window` steps, weighted 1/distance; unknown ids are skipped."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for seq in sequences:
        ids = [index[i] for i in seq if i in index]
        for a, left in enumerate(ids):
            for gap in range(1, window + 1):
                if a + gap >= len(ids):
                    break
                right = ids[a + gap]
                if left != right:
                    rows += [left, right]
                    cols += [right, left]
                    vals += [1.0 / gap, 1.0 / gap]
    n = len(index)
    return coo_matrix((np.asarray(vals, np.float64), (rows, cols)), shape=(n, n)).tocsr()


def ppmi(counts: csr_matrix) -> csr_matrix:
    """Positive pointwise mutual information of a symmetric count matrix (zeros stay zeros: sparse)."""
    counts = counts.tocoo()
    total = counts.sum()
    if total == 0:
        return csr_matrix(counts.shape, dtype=np.float32)
    row = np.asarray(counts.sum(axis=1)).ravel()
    col = np.asarray(counts.sum(axis=0)).ravel()
    pmi = np.log(counts.data * total / (row[counts.row] * col[counts.col]))
    keep = pmi > 0
    return coo_matrix((pmi[keep].astype(np.float32), (counts.row[keep], counts.col[keep])), shape=counts.shape).tocsr()


def collaborative_vectors(
    sequences: Sequence[Sequence[str]], item_ids: Sequence[str], config: CollaborativeConfig, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit collaborative vectors [N, dim] for `item_ids` (zero rows for ads with no co-occurrence) and the mask of
    ads that have one."""
    index = {item: i for i, item in enumerate(item_ids)}
    matrix = ppmi(cooccurrence(sequences, index, config.window))
    rank = min(config.dim, min(matrix.shape) - 1)
    if rank < 1 or matrix.nnz == 0:
        return np.zeros((len(item_ids), config.dim), np.float32), np.zeros(len(item_ids), bool)
    v0 = np.random.default_rng(seed).standard_normal(matrix.shape[0])  # svds' start vector: seeded, reproducible
    u, s, _ = svds(matrix.astype(np.float64), k=rank, v0=v0)
    vectors = np.zeros((len(item_ids), config.dim), np.float32)
    vectors[:, :rank] = (u * np.sqrt(s))[:, ::-1]
    norms = np.linalg.norm(vectors, axis=1)
    seen = norms > 1e-8
    vectors[seen] /= norms[seen, None]
    return vectors, seen


class TextToCollaborative:
    """Ridge map from a unit text embedding to a unit collaborative vector (for ads without behaviour)."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        self.weights = weights.astype(np.float32)
        self.bias = bias.astype(np.float32)

    @classmethod
    def fit(cls, text: np.ndarray, collaborative: np.ndarray, ridge: float) -> TextToCollaborative:
        x_mean, y_mean = text.mean(0), collaborative.mean(0)
        x, y = text - x_mean, collaborative - y_mean
        gram = x.T @ x + ridge * np.eye(x.shape[1], dtype=x.dtype)
        weights = np.linalg.solve(gram.astype(np.float64), (x.T @ y).astype(np.float64))
        return cls(weights, y_mean - x_mean @ weights)

    def predict(self, text: np.ndarray) -> np.ndarray:
        return unit_rows(text @ self.weights + self.bias)


def catalogue_vectors(
    text: np.ndarray,
    item_ids: Sequence[str],
    sequences: Sequence[Sequence[str]],
    config: CollaborativeConfig,
    seed: int = 0,
) -> tuple[np.ndarray, TextToCollaborative | None]:
    """What the RQ-VAE codes for the catalogue: [unit text, weight x unit collaborative] (observed where an ad has
    behaviour, predicted from its text where it has none), and the map that codes later ads the same way.
    With weight 0, the text embeddings unchanged and no map."""
    if config.weight == 0:  # text only: the encoder's vectors as they are (what the RQ-VAE always coded)
        return np.asarray(text, dtype=np.float32), None
    text = unit_rows(text)
    collab, seen = collaborative_vectors(sequences, item_ids, config, seed)
    if seen.sum() < 2:
        raise ValueError("collaborative S-IDs need behaviour on at least two ads; set sids.collaborative.weight 0")
    mapping = TextToCollaborative.fit(text[seen], collab[seen], config.ridge)
    collab[~seen] = mapping.predict(text[~seen])
    return np.concatenate([text, config.weight * collab], axis=1).astype(np.float32), mapping


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)).astype(np.float32)
