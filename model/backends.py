"""One interface for constrained generation, several engines behind it.

Callers (LEADRE evaluation, the RARE query path, the Faust generation agent) hold a `GenerationBackend` and
never care which engine runs the model:

- `torch`: `ConstrainedBeamSearch` on CPU or CUDA (fp32 / bf16, optional int8 dynamic quantisation on CPU),
  optional prompt-prefix K/V cache. This is the tested, default path.
- `tensorrt_llm`: `adgen.model.backend_trtllm.TensorRTLLMBackend`, GPU only, extra `[trt]`; imported only
  when asked for, so nothing here needs TensorRT-LLM installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from adgen.core.config import ModelSettings
from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch, Prompt
from adgen.model.lm import LMError, load_lm, quantize_int8, resolve_dtype
from adgen.model.pool_priors import PoolPrior
from adgen.model.prefix_cache import PrefixKVCache


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (missing package, no GPU); the message says what is missing."""


@runtime_checkable
class GenerationBackend(Protocol):
    """Top-k distinct valid items per prompt, best first, as (item, log-probability)."""

    name: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        trie: TrieArrays,
        k: int,
        beams: int | None = None,
        score_floor: float | None = None,
        renormalize: bool = False,
        ad_prior: PoolPrior | None = None,
    ) -> list[list[tuple[int, float]]]: ...


class TorchBackend:
    """`ConstrainedBeamSearch` behind the backend interface."""

    name = "torch"

    def __init__(
        self,
        model: PreTrainedModel,
        device: str | torch.device | None = None,
        prefix_cache: PrefixKVCache | None = None,
        max_batch_prompts: int = 64,
    ) -> None:
        self.search = ConstrainedBeamSearch(model, device, prefix_cache, max_batch_prompts)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path | str,
        device: str = "cpu",
        dtype: str = "float32",
        int8: bool = False,
        prefix_cache_mb: int = 0,
    ) -> TorchBackend:
        """Load a local HF checkpoint; `int8` quantises Linears dynamically (CPU, fp32 only)."""
        if int8 and (device != "cpu" or dtype != "float32"):
            raise LMError("int8 dynamic quantisation runs on CPU from a float32 model")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} asked for but no CUDA GPU is visible to torch")
        model = load_lm(checkpoint, dtype=dtype, device=device)  # type: ignore[arg-type]
        if int8:
            model = quantize_int8(model)
        cache = PrefixKVCache(max_bytes=prefix_cache_mb * 2**20) if prefix_cache_mb > 0 else None
        return cls(model, device, cache)

    def generate(
        self,
        prompts: Sequence[Prompt],
        trie: TrieArrays,
        k: int,
        beams: int | None = None,
        score_floor: float | None = None,
        renormalize: bool = False,
        ad_prior: PoolPrior | None = None,
    ) -> list[list[tuple[int, float]]]:
        return self.search.generate(prompts, trie, k, beams, score_floor, renormalize, ad_prior)


def load_backend(
    settings: ModelSettings,
    checkpoint: Path | str | None = None,
    *,
    model: PreTrainedModel | None = None,
    prefix_cache_mb: int | None = None,
) -> GenerationBackend:
    """The backend named in settings (`ADGEN_MODEL__BACKEND`), for the LM in `checkpoint` (or settings').

    Every generating caller goes through here (the worker's LEADRE generator, RARE's CI model), so one
    setting switches them all. `model`: the same LM already loaded (the torch backend then reuses it instead
    of loading it twice). `prefix_cache_mb` overrides settings' prompt-prefix cache budget (0: none).
    """
    cache_mb = settings.prefix_cache_mb if prefix_cache_mb is None else prefix_cache_mb
    if settings.backend == "torch" and model is not None:
        cache = PrefixKVCache(max_bytes=cache_mb * 2**20) if cache_mb > 0 else None
        return TorchBackend(model, settings.device, cache)
    checkpoint = checkpoint or settings.checkpoint
    if checkpoint is None:
        raise LMError("no checkpoint: pass one or set ADGEN_MODEL__CHECKPOINT to a local HF checkpoint dir")
    if settings.backend == "torch":
        return TorchBackend.from_checkpoint(
            checkpoint,
            device=settings.device,
            dtype=resolve_dtype(settings.dtype, settings.device),
            prefix_cache_mb=cache_mb,
        )
    if settings.backend == "tensorrt_llm":
        from adgen.model.backend_trtllm import TensorRTLLMBackend

        return TensorRTLLMBackend(checkpoint)
    raise BackendUnavailable(f"unknown backend {settings.backend!r}; use 'torch' or 'tensorrt_llm'")
