"""RQ-VAE: ad embeddings -> M residual codes (the semantic part of an ad's S-ID).

Encoder MLP -> M residual quantisation levels (K codes of dimension d each) -> decoder MLP. Loss is
reconstruction + sum over levels of codebook + beta * commitment with stop-gradients, and the
straight-through estimator carries gradients past the argmin. Codebooks are initialised by k-means on
the first pass (level by level, on the residuals) and codes no item used in an epoch are re-seeded
from live residuals, which is what keeps utilisation high (tests/test_rqvae.py checks both).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

WEIGHTS_FILE = "rqvae.safetensors"
CONFIG_FILE = "rqvae.json"


class RQVAEError(ValueError):
    """Bad RQ-VAE input (wrong shape, empty catalogue) or a saved model that does not match its config."""


class RQVAEConfig(BaseModel):
    """Architecture and training settings; saved next to the weights as JSON."""

    input_dim: int = Field(384, ge=1)
    hidden_dims: tuple[int, ...] = (256, 128)
    latent_dim: int = Field(32, ge=1)
    num_levels: int = Field(3, ge=1, le=7)
    codebook_size: int = Field(64, ge=2)
    beta: float = Field(0.25, ge=0)
    epochs: int = Field(100, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    kmeans_init: bool = True
    warmup_steps: int = Field(0, ge=0, description="Autoencoder-only steps before the k-means init.")
    reseed_dead_codes: bool = True
    kmeans_iters: int = Field(50, ge=1)
    seed: int = 0
    text_dim: int | None = Field(
        None,
        ge=1,
        description="Set when the input is [text embedding, collaborative vector] (model/collaborative.py): the "
        "first text_dim dims are text, the rest are predicted from them for ads without behaviour.",
    )
    collaborative_weight: float = Field(0.0, ge=0)

    @classmethod
    def sized_for(cls, num_items: int, input_dim: int, **overrides: object) -> RQVAEConfig:
        """Codebooks sized to the catalogue: K^M should dwarf N so the collision code stays short."""
        k = 64 if num_items <= 20_000 else 128 if num_items <= 200_000 else 256
        return cls.model_validate({"input_dim": input_dim, "codebook_size": k, **overrides})


class EpochMetrics(BaseModel):
    epoch: int
    loss: float
    reconstruction_loss: float
    quantisation_loss: float
    utilisation: list[float]  # share of the K codes used, per level
    perplexity: list[float]  # exp(entropy of code usage), per level; K at best
    collision_rate: float  # 1 - distinct code tuples / items (before the collision code)
    reseeded: list[int]  # dead codes re-seeded after this epoch, per level


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding, deterministic under `generator`; [k, d] centroids.

    Fewer points than k (tiny catalogues) are padded by resampling with a little noise, so every code
    starts near real data rather than at a random point no item will ever reach.
    """
    if x.shape[0] < k:
        extra = x[torch.randint(0, x.shape[0], (k - x.shape[0],), generator=generator)]
        x = torch.cat([x, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
    chosen = [x[torch.randint(0, x.shape[0], (1,), generator=generator)]]
    d2 = (x - chosen[0]).pow(2).sum(dim=1)  # squared distance to the nearest chosen centroid, kept up to date
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        chosen.append(x[torch.multinomial(probs, 1, generator=generator)])
        d2 = torch.minimum(d2, (x - chosen[-1]).pow(2).sum(dim=1))
    centroids = torch.cat(chosen)
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


class RQVAE(nn.Module):
    def __init__(self, config: RQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _mlp([config.input_dim, *config.hidden_dims, config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *reversed(config.hidden_dims), config.input_dim])
        self.codebooks = nn.Parameter(torch.randn(config.num_levels, config.codebook_size, config.latent_dim) * 0.1)
        if config.text_dim is not None and config.text_dim < config.input_dim:
            collab_dim = config.input_dim - config.text_dim
            self.register_buffer("text_to_collab", torch.zeros(config.text_dim, collab_dim))
            self.register_buffer("text_to_collab_bias", torch.zeros(collab_dim))

    def set_text_map(self, weights: np.ndarray, bias: np.ndarray) -> None:
        """Store the text -> collaborative ridge map (TextToCollaborative) so it ships inside these weights."""
        if not hasattr(self, "text_to_collab"):
            raise RQVAEError("this RQ-VAE has no collaborative part (config.text_dim is unset)")
        self.text_to_collab.copy_(torch.as_tensor(weights, dtype=torch.float32))
        self.text_to_collab_bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def input_from_text(self, text: np.ndarray) -> np.ndarray:
        """The RQ-VAE input for ads known only by their text embedding (what the live index codes).

        Text-only models take the embedding as it is; collaborative ones append weight x the unit collaborative
        vector predicted from the unit text embedding, the same recipe the catalogue's unseen ads got at build time.
        """
        text = np.asarray(text, dtype=np.float32)
        if not hasattr(self, "text_to_collab"):
            return text
        text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-8)
        collab = text @ self.text_to_collab.numpy() + self.text_to_collab_bias.numpy()
        collab /= np.maximum(np.linalg.norm(collab, axis=1, keepdims=True), 1e-8)
        return np.concatenate([text, self.config.collaborative_weight * collab], axis=1).astype(np.float32)

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(straight-through z_q, codes [B, M], codebook+commitment loss, residual entering each level)."""
        residual = z
        z_q = torch.zeros_like(z)
        codes, residuals = [], []
        qloss = z.new_zeros(())
        for level in range(self.config.num_levels):
            book = self.codebooks[level]
            residuals.append(residual.detach())
            code = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            chosen = book[code]
            qloss = qloss + (chosen - residual.detach()).pow(2).mean()
            qloss = qloss + self.config.beta * (residual - chosen.detach()).pow(2).mean()
            straight = residual + (chosen - residual).detach()
            z_q = z_q + straight
            residual = residual - straight
            codes.append(code)
        return z_q, torch.stack(codes, dim=1), qloss, residuals

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, codes, quantisation loss)."""
        z_q, codes, qloss, _ = self.quantise(self.encoder(x))
        return self.decoder(z_q), codes, qloss

    def _numpy_weights(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        """Numpy views of the encoder and codebooks, cached until any parameter changes (tensor version)."""
        stamp = tuple(p._version for p in self.parameters())
        cached = getattr(self, "_np_cache", None)
        if cached is None or cached[0] != stamp:
            linear = [m for m in self.encoder if isinstance(m, nn.Linear)]
            layers = [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in linear]
            books = self.codebooks.detach().numpy()
            cached = (stamp, layers, books, np.square(books).sum(axis=-1))
            self._np_cache = cached
        return cached[1], cached[2], cached[3]

    def codes(self, embeddings: np.ndarray | torch.Tensor, batch_size: int = 16384) -> np.ndarray:
        """Semantic codes [N, M] (int64) for embeddings [N, input_dim]; the frozen-model path for new ads.

        Plain numpy over views of the weights: one ad costs ~0.25 ms this way against ~4 ms of torch
        dispatch overhead on a busy CPU, which is what keeps a live insert under 1 ms. Build and live
        inserts share this one path, so they agree on every code.
        """
        x = np.asarray(embeddings.detach().numpy() if isinstance(embeddings, torch.Tensor) else embeddings)
        x = x.astype(np.float32, copy=False)
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise RQVAEError(f"expected embeddings [N, {self.config.input_dim}], got {list(x.shape)}")
        layers, books, book_norms = self._numpy_weights()
        out = np.empty((len(x), self.config.num_levels), dtype=np.int64)
        for start in range(0, len(x), batch_size):
            h = x[start : start + batch_size]
            for i, (weight, bias) in enumerate(layers):
                h = h @ weight + bias
                if i < len(layers) - 1:
                    np.maximum(h, 0, out=h)
            for level in range(self.config.num_levels):
                code = (book_norms[level] - 2 * (h @ books[level].T)).argmin(axis=1)
                out[start : start + len(h), level] = code
                h = h - books[level][code]
        return out

    @torch.no_grad()
    def _init_codebooks(self, x: torch.Tensor, generator: torch.Generator) -> None:
        residual = self.encoder(x)
        for level in range(self.config.num_levels):
            centroids = kmeans(residual, self.config.codebook_size, self.config.kmeans_iters, generator)
            self.codebooks[level].copy_(centroids)
            residual = residual - centroids[torch.cdist(residual, centroids).argmin(dim=1)]

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], float, float]:
        z = self.encoder(x)
        z_q, codes, qloss, residuals = self.quantise(z)
        recon = (self.decoder(z_q) - x).pow(2).mean().item()
        return codes, residuals, recon, float(qloss)

    @torch.no_grad()
    def _reseed_dead(self, codes: torch.Tensor, residuals: list[torch.Tensor], generator: torch.Generator) -> list[int]:
        counts = []
        for level in range(self.config.num_levels):
            used = torch.bincount(codes[:, level], minlength=self.config.codebook_size)
            dead = (used == 0).nonzero().flatten()
            if dead.numel():
                pool = residuals[level]
                pick = torch.randint(0, len(pool), (dead.numel(),), generator=generator)
                self.codebooks[level, dead] = pool[pick] + 1e-4 * torch.randn(
                    (dead.numel(), pool.shape[1]), generator=generator
                )
            counts.append(int(dead.numel()))
        return counts


def code_usage_metrics(codes: np.ndarray, codebook_size: int) -> tuple[list[float], list[float], float]:
    """(utilisation per level, perplexity per level, collision rate) of a code matrix [N, M]."""
    codes = np.asarray(codes)
    util, perp = [], []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        util.append(float((counts > 0).mean()))
        perp.append(float(math.exp(-(p * np.log(p)).sum())))
    distinct = len(np.unique(codes, axis=0)) if len(codes) else 0
    collision = 1.0 - distinct / len(codes) if len(codes) else 0.0
    return util, perp, collision


def train_rqvae(
    embeddings: np.ndarray, config: RQVAEConfig, metrics_path: Path | None = None, progress: bool = True
) -> tuple[RQVAE, list[EpochMetrics]]:
    """Train from scratch, deterministically for a given seed; metrics per epoch (and to JSON if asked).

    Runs on one thread: these matmuls are small, and on a shared 2-core box a second thread made an epoch
    8x slower in wall time (threads spin waiting for each other).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(embeddings, config, metrics_path, progress)
    finally:
        torch.set_num_threads(threads)


def _warm_up(
    model: RQVAE, x: torch.Tensor, config: RQVAEConfig, opt: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    """Train encoder + decoder without quantisation for `warmup_steps` minibatches.

    A fresh encoder maps every ad to nearly the same latent (spread ~0.003 against a bias of ~0.05), so
    k-means on it is arbitrary and the first optimiser steps move the latents past the clusters. A short
    autoencoder warm-up spreads the latents first, so the k-means init lands on real structure. It helps
    tiny catalogues (tens to hundreds of ads, a step or two per epoch); on Amazon Scientific 200 warm-up
    steps raised collisions from 17.9 % to 20.4 %, so it is off by default.
    """
    step = 0
    while step < config.warmup_steps:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            if step == config.warmup_steps:
                break
            batch = x[order[start : start + config.batch_size]]
            loss = (model.decoder(model.encoder(batch)) - batch).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1


def _train(
    embeddings: np.ndarray, config: RQVAEConfig, metrics_path: Path | None, progress: bool
) -> tuple[RQVAE, list[EpochMetrics]]:
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != config.input_dim or len(x) == 0:
        raise RQVAEError(f"expected a non-empty embedding matrix [N, {config.input_dim}], got {list(x.shape)}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = RQVAE(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    _warm_up(model, x, config, opt, generator)
    if config.kmeans_init:
        model._init_codebooks(x, generator)
    history: list[EpochMetrics] = []
    bar = tqdm(range(config.epochs), desc="rq-vae", disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        total = 0.0
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = x[order[start : start + config.batch_size]]
            recon, _, qloss = model(batch)
            loss = (recon - batch).pow(2).mean() + qloss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        model.eval()
        codes, residuals, recon_loss, q_loss = model._evaluate(x)
        util, perp, collision = code_usage_metrics(codes.numpy(), config.codebook_size)
        last = epoch == config.epochs - 1
        reseeded = model._reseed_dead(codes, residuals, generator) if config.reseed_dead_codes and not last else []
        history.append(
            EpochMetrics(
                epoch=epoch,
                loss=total / len(x),
                reconstruction_loss=recon_loss,
                quantisation_loss=q_loss,
                utilisation=util,
                perplexity=perp,
                collision_rate=collision,
                reseeded=reseeded,
            )
        )
        bar.set_postfix(recon=f"{recon_loss:.2e}", util=",".join(f"{u:.2f}" for u in util), coll=f"{collision:.3f}")
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps([m.model_dump() for m in history], indent=1))
    return model, history


def save_rqvae(model: RQVAE, directory: Path) -> str:
    """Write safetensors weights + JSON config; returns the model version (sha256 prefix of the weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    version = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    (directory / CONFIG_FILE).write_text(
        json.dumps({"config": model.config.model_dump(mode="json"), "version": version}, indent=1)
    )
    return version


def load_rqvae(directory: Path) -> tuple[RQVAE, str]:
    """Load a saved RQ-VAE (frozen, eval mode) and its version."""
    config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise RQVAEError(f"no RQ-VAE in {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    meta = json.loads(config_path.read_text())
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    if actual != str(meta.get("version")):  # save_rqvae's version is the weights' checksum
        raise RQVAEError(
            f"{weights} is corrupt or was replaced: sha256 prefix {actual} != version {meta.get('version')!r} "
            f"recorded in {config_path}; refusing to load it"
        )
    model = RQVAE(RQVAEConfig.model_validate(meta["config"]))
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise RQVAEError(f"weights in {weights} do not match the config in {config_path}: {exc}") from exc
    model.eval().requires_grad_(False)
    return model, str(meta["version"])
