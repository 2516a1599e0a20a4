"""Collaborative S-ID vectors: co-occurring ads end up close, new ads are coded from text the catalogue's way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adgen.index.rqvae import RQVAEConfig, load_rqvae, save_rqvae, train_rqvae
from adgen.model.collaborative import (
    CollaborativeConfig,
    TextToCollaborative,
    catalogue_vectors,
    collaborative_vectors,
)

ITEMS = [f"i{n}" for n in range(12)]
# two groups of ads bought together: {i0..i5} and {i6..i11}; i11 never co-occurs with anything
SEQUENCES = [[f"i{(s + j) % 6}" for j in range(4)] for s in range(30)] + [
    [f"i{6 + (s + j) % 5}" for j in range(4)] for s in range(30)
]


def test_ads_bought_together_get_closer_vectors_than_ads_never_seen_together():
    # rank 2 for two groups: each group gets its own direction
    vectors, seen = collaborative_vectors(SEQUENCES, ITEMS, CollaborativeConfig(weight=1.0, dim=2), seed=0)
    assert seen[:11].all() and not seen[11]
    sims = vectors @ vectors.T
    within = np.mean([sims[a, b] for a in range(6) for b in range(6) if a != b])
    across = np.mean([abs(sims[a, b]) for a in range(6) for b in range(6, 11)])
    assert within > 0.9 and across < 0.1
    assert np.allclose(np.linalg.norm(vectors[:11], axis=1), 1.0, atol=1e-5)


def test_vectors_are_reproducible_for_a_seed():
    cfg = CollaborativeConfig(weight=1.0, dim=4)
    a, _ = collaborative_vectors(SEQUENCES, ITEMS, cfg, seed=3)
    b, _ = collaborative_vectors(SEQUENCES, ITEMS, cfg, seed=3)
    assert np.array_equal(a, b)


def test_text_map_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((200, 8)).astype(np.float32)
    true = rng.standard_normal((8, 3)).astype(np.float32)
    target = text @ true
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    mapping = TextToCollaborative.fit(text, target, ridge=1e-3)
    assert np.mean(np.sum(mapping.predict(text) * target, axis=1)) > 0.98


def test_weight_zero_is_the_text_embedding_alone():
    text = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)
    vectors, mapping = catalogue_vectors(text, ITEMS, SEQUENCES, CollaborativeConfig(weight=0.0))
    assert mapping is None and np.array_equal(vectors, text)


def test_unseen_ads_get_predicted_vectors_and_the_rqvae_codes_new_ads_the_same_way(tmp_path: Path):
    text = np.random.default_rng(2).standard_normal((12, 8)).astype(np.float32)
    cfg = CollaborativeConfig(weight=1.5, dim=4)
    vectors, mapping = catalogue_vectors(text, ITEMS, SEQUENCES, cfg)
    assert mapping is not None and vectors.shape == (12, 12)
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    assert np.allclose(vectors[11, 8:], 1.5 * mapping.predict(unit[11:12])[0], atol=1e-6)  # i11: never seen
    rq_cfg = RQVAEConfig(
        input_dim=12,
        hidden_dims=(16,),
        latent_dim=4,
        codebook_size=4,
        num_levels=2,
        epochs=3,
        text_dim=8,
        collaborative_weight=1.5,
    )
    model, _ = train_rqvae(vectors, rq_cfg, progress=False)
    model.set_text_map(mapping.weights, mapping.bias)
    save_rqvae(model, tmp_path)
    loaded, _ = load_rqvae(tmp_path)
    # a new ad known only by its text is coded from [text, predicted collaborative], like i11 was at build time
    assert np.array_equal(loaded.codes(loaded.input_from_text(text[11:12])), model.codes(vectors[11:12]))


def test_a_text_only_rqvae_refuses_a_text_map():
    model, _ = train_rqvae(
        np.eye(8, dtype=np.float32),
        RQVAEConfig(input_dim=8, hidden_dims=(8,), latent_dim=4, codebook_size=2, num_levels=1, epochs=1),
        progress=False,
    )
    with pytest.raises(ValueError, match="no collaborative part"):
        model.set_text_map(np.zeros((8, 2)), np.zeros(2))
