import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from adgen.index.rqvae import EpochMetrics, RQVAEConfig, RQVAEError, kmeans, load_rqvae, save_rqvae, train_rqvae


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matmuls on a shared 2-core box run fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clustered(n: int = 500, dim: int = 16, clusters: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim)) * 0.3
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _config(**kw: object) -> RQVAEConfig:
    base = dict(input_dim=16, hidden_dims=(32,), latent_dim=8, num_levels=2, codebook_size=32, epochs=6, batch_size=64)
    return RQVAEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[EpochMetrics]]:
    metrics = tmp_path_factory.mktemp("rq") / "metrics.json"
    torch.set_num_threads(1)
    _, hist = train_rqvae(_clustered(), _config(), metrics_path=metrics, progress=False)
    return metrics, hist


def test_kmeans_init_and_dead_code_reseeding_raise_utilisation(trained: tuple[Path, list[EpochMetrics]]) -> None:
    _, plain = train_rqvae(_clustered(), _config(kmeans_init=False, reseed_dead_codes=False), progress=False)
    cared = trained[1]
    plain_util, cared_util = plain[-1].utilisation, cared[-1].utilisation
    assert min(cared_util) > 0.8, cared_util
    assert all(c > p + 0.2 for c, p in zip(cared_util, plain_util, strict=True)), (plain_util, cared_util)
    assert cared[-1].collision_rate < plain[-1].collision_rate


def test_reseeding_alone_revives_dead_codes() -> None:
    _, hist = train_rqvae(_clustered(seed=1), _config(kmeans_init=False, epochs=4), progress=False)
    assert sum(hist[0].reseeded) > 0
    assert min(hist[-1].utilisation) > min(hist[0].utilisation)


def test_training_reduces_reconstruction_loss_and_writes_metrics(trained: tuple[Path, list[EpochMetrics]]) -> None:
    metrics_path, hist = trained
    assert hist[-1].reconstruction_loss < 0.9 * hist[0].reconstruction_loss
    saved = json.loads(metrics_path.read_text())
    assert len(saved) == 6 and {"reconstruction_loss", "utilisation", "perplexity", "collision_rate"} <= set(saved[0])
    assert all(1.0 <= p <= 32 for p in saved[-1]["perplexity"])


def test_training_is_deterministic_for_a_seed() -> None:
    x = _clustered(n=200)
    a, hist_a = train_rqvae(x, _config(epochs=2), progress=False)
    b, hist_b = train_rqvae(x, _config(epochs=2), progress=False)
    assert np.array_equal(a.codes(x), b.codes(x))
    assert [h.loss for h in hist_a] == [h.loss for h in hist_b]
    c, _ = train_rqvae(x, _config(epochs=2, seed=1), progress=False)
    assert not np.array_equal(a.codes(x), c.codes(x))


def test_saved_model_reloads_as_safetensors_with_same_codes(tmp_path: Path) -> None:
    x = _clustered(n=100)
    model, _ = train_rqvae(x, _config(epochs=1), progress=False)
    version = save_rqvae(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"rqvae.safetensors", "rqvae.json"}
    loaded, loaded_version = load_rqvae(tmp_path)
    assert loaded_version == version and np.array_equal(loaded.codes(x), model.codes(x))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RQVAEError, match=r"\[N, 16\]"):
        train_rqvae(np.zeros((4, 3), np.float32), _config(), progress=False)
    model, _ = train_rqvae(_clustered(n=40), _config(epochs=0), progress=False)
    with pytest.raises(RQVAEError, match="expected embeddings"):
        model.codes(np.zeros((2, 5), np.float32))
    with pytest.raises(RQVAEError, match="no RQ-VAE"):
        load_rqvae(tmp_path)


def test_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres_true = (torch.tensor([5.0, 0.0]), torch.tensor([-5.0, 0.0]))
    pts = torch.cat([torch.randn(50, 2, generator=g) * 0.1 + c for c in centres_true])
    centres = kmeans(pts, 2, 20, torch.Generator().manual_seed(1))
    assert sorted(round(v) for v in centres[:, 0].tolist()) == [-5, 5]


def test_numpy_inference_matches_the_torch_quantiser() -> None:
    x = _clustered(n=300, seed=3)
    model, _ = train_rqvae(x, _config(epochs=2), progress=False)
    with torch.no_grad():
        _, torch_codes, _, _ = model.quantise(model.encoder(torch.from_numpy(x)))
    assert np.array_equal(model.codes(x), torch_codes.numpy())
    single = np.stack([model.codes(x[i : i + 1])[0] for i in range(len(x))])
    assert np.array_equal(single, model.codes(x))  # one ad at a time == the whole batch


def test_autoencoder_warm_up_before_kmeans_raises_utilisation() -> None:
    _, cold = train_rqvae(_clustered(), _config(), progress=False)
    _, warm = train_rqvae(_clustered(), _config(warmup_steps=200), progress=False)
    assert min(warm[-1].utilisation) > min(cold[-1].utilisation)
    assert warm[-1].reconstruction_loss < cold[-1].reconstruction_loss
