from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from adgen.core.ad_text import ad_text
from adgen.core.catalogue import Item
from adgen.model.encoder import (
    CachedEncoder,
    EmbeddingCache,
    EncoderError,
    MeanPoolEncoder,
    SentenceTransformerEncoder,
    load_encoder,
    resolve_encoder_path,
)

TEXTS = ["heavy duty stainless steel staples", "nitrile examination gloves, powder free", "steel staples for a gun"]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    encoder = load_encoder()
    assert isinstance(encoder, SentenceTransformerEncoder)
    return encoder


class _Counting:
    """Passes through to a real encoder and records how many texts it was asked to encode."""

    def __init__(self, inner: SentenceTransformerEncoder) -> None:
        self.inner, self.name, self.dim, self.calls = inner, inner.name, inner.dim, 0

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        self.calls += len(texts)
        return self.inner.encode(texts, batch_size, progress)


def test_default_encoder_loads_offline_and_separates_meanings(minilm: SentenceTransformerEncoder) -> None:
    vecs = minilm.encode(TEXTS, progress=False)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 2] > sims[0, 1] + 0.2  # staples are closer to staples than to gloves


def test_plain_hf_mean_pooling_matches_the_sentence_transformers_pipeline(minilm: SentenceTransformerEncoder) -> None:
    plain = MeanPoolEncoder(resolve_encoder_path("all-MiniLM-L6-v2"))
    cos = (plain.encode(TEXTS, progress=False) * minilm.encode(TEXTS, progress=False)).sum(axis=1)
    assert np.all(cos > 0.99), cos
    assert plain.name != minilm.name  # different pipelines never share a cache


def test_cache_serves_repeated_texts_without_encoding_again(minilm: SentenceTransformerEncoder, tmp_path: Path) -> None:
    counting = _Counting(minilm)
    first = CachedEncoder(counting, tmp_path).encode(TEXTS + TEXTS[:1], progress=False)
    assert counting.calls == 3  # duplicates are encoded once
    again = CachedEncoder(counting, tmp_path).encode([TEXTS[2], "a new text", TEXTS[0]], progress=False)
    assert counting.calls == 4  # a fresh process (new cache object) only encodes the new text
    assert np.array_equal(again[0], first[2]) and np.array_equal(again[2], first[0])
    assert all(p.suffix == ".npy" for p in (tmp_path / minilm.name).iterdir())


def test_unknown_encoder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="cannot be downloaded"):
        load_encoder(str(tmp_path / "no-such-model"))


def test_ad_text_follows_the_template_and_skips_the_catalogue_root() -> None:
    item = Item(
        item_id="7",
        title="Stanley staples.",
        brand="Stanley",
        description="Heavy   duty",
        categories=("Industrial & Scientific", "Fasteners", "Collated Fasteners", "Staples"),
    )
    assert ad_text(item) == (
        "The name of the ad is Stanley staples; The product type is Staples; The first-level category is "
        "Fasteners; The second-level category is Collated Fasteners; The attributes include: brand Stanley. "
        "Heavy duty"
    )
    synthetic = Item(item_id="1", title="Trail shoe", product_type="sneaker", categories=("Shoes",), attributes=["red"])
    assert ad_text(synthetic) == (
        "The name of the ad is Trail shoe; The product type is sneaker; The first-level category is Shoes; "
        "The attributes include: red."
    )


def test_cache_keys_ending_in_nul_bytes_survive_a_reload(tmp_path: Path) -> None:
    keys = [b"\x01" * 31 + b"\x00", b"\x02" * 32]
    EmbeddingCache(tmp_path, "enc").put(keys, np.eye(2, dtype=np.float32))
    found = EmbeddingCache(tmp_path, "enc").get(keys)
    assert found[0] is not None and found[0].tolist() == [1.0, 0.0]
