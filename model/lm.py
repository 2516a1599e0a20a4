"""The causal LM behind generation: a built-in small Llama-style model, or any local HF Llama/Qwen2 checkpoint.

The built-in model is a plain `transformers.LlamaForCausalLM` so every tool that speaks HF (training,
`generate`, TensorRT-LLM's converters) can read it. Checkpoints are HF directories: `model.safetensors`
plus `config.json` (never pickle). Loading is offline only (`local_files_only=True`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from adgen.core.checksums import file_sha256

DTypeName = Literal["float32", "bfloat16"]
DTypeSetting = Literal["auto", "float32", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: CPU flags with native bf16 matrix instructions; without them bf16 is emulated and slower than fp32
#: (measured: bench/results/train.json, 7-15x slower on an AVX2-only EPYC).
BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool(BF16_CPU_FLAGS & set(flags))


def resolve_dtype(setting: DTypeSetting, device: str | torch.device = "cpu") -> DTypeName:
    """'auto' = bf16 where it is native and faster (a CUDA device, or a CPU with AVX512-BF16/AMX), else fp32.

    bf16 decoding is not bit-identical to fp32; docs/results.md measures whether its NDCG@10 stays within one
    standard error of fp32 on the Amazon protocol, which is the bar for making it the default.
    """
    if setting != "auto":
        return setting
    if torch.device(device).type == "cuda":
        return "bfloat16"
    return "bfloat16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "float32"


# Decoder-only families whose layers expose q/k/v/o projections, RMSNorms, a gated MLP and RoPE the way
# `adgen.model.decoding` reads them. Llama and Qwen2 are tested; Mistral and Qwen3 share the layout.
SUPPORTED_MODEL_TYPES: frozenset[str] = frozenset({"llama", "qwen2", "mistral", "qwen3"})


class LMError(ValueError):
    """A checkpoint that cannot be loaded or used (missing, unsupported family, bad dtype)."""


class LMConfig(BaseModel):
    """Size of the built-in model. Defaults: hidden 256, 4 layers, vocab 8192 -> about 8.4M parameters."""

    model_config = ConfigDict(frozen=True)

    vocab_size: int = Field(8192, ge=2)
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1, description="Grouped-query attention; None = num_heads.")
    intermediate_size: int | None = Field(None, ge=8, description="MLP width; None = 4 x hidden.")
    max_positions: int = Field(2048, ge=16)
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = False
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention weights (training only).")
    init_std: float = Field(0.02, gt=0, description="Weight init std; larger gives peakier untrained outputs.")
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> LMConfig:
        kv = self.num_kv_heads or self.num_heads
        if self.hidden_size % self.num_heads or self.num_heads % kv:
            raise ValueError(
                f"hidden_size {self.hidden_size} must divide by num_heads {self.num_heads}, "
                f"and num_heads by num_kv_heads {kv}"
            )
        return self

    def to_hf(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size or 4 * self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads or self.num_heads,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            tie_word_embeddings=self.tie_embeddings,
            attention_dropout=self.attention_dropout,
            initializer_range=self.init_std,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )


def build_lm(config: LMConfig | None = None) -> LlamaForCausalLM:
    """A freshly initialised built-in model (seeded, so two builds with one config are identical)."""
    config = config or LMConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(config.to_hf())
    return model.eval()


CHECKSUMS_FILE = "checksums.json"


def save_lm(model: PreTrainedModel, directory: Path | str) -> Path:
    """Write `model.safetensors` + `config.json` (HF layout) and their sha256 to `directory`.

    safetensors checks its header, not the tensor bytes: the checksums let `load_lm` refuse a flipped bit.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    files = sorted(p for p in directory.iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    (directory / CHECKSUMS_FILE).write_text(json.dumps({p.name: file_sha256(p) for p in files}, indent=1))
    return directory


def verify_checksums(directory: Path) -> None:
    """Refuse a checkpoint whose files differ from the sha256 recorded by `save_lm` (foreign ones have none)."""
    recorded = directory / CHECKSUMS_FILE
    if not recorded.is_file():
        return
    for name, digest in json.loads(recorded.read_text()).items():
        path = directory / name
        if not path.is_file():
            raise LMError(f"checkpoint {directory} lacks {name}, listed in {CHECKSUMS_FILE}")
        if file_sha256(path) != digest:
            raise LMError(f"checkpoint file {path} does not match its recorded sha256: corrupt or modified")


def load_lm(directory: Path | str, dtype: DTypeName = "float32", device: str | torch.device = "cpu") -> PreTrainedModel:
    """Load a local HF causal-LM checkpoint (built-in, Llama or Qwen2 family) in eval mode, offline."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise LMError(f"no config.json in {directory}: expected an HF checkpoint dir written by save_lm")
    if dtype not in DTYPES:
        raise LMError(f"dtype {dtype!r} not supported; use one of {sorted(DTYPES)}")
    verify_checksums(directory)
    hf_config = AutoConfig.from_pretrained(directory, local_files_only=True)
    check_supported(hf_config.model_type)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=DTYPES[dtype])
    return model.to(device).eval()


def check_supported(model_type: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LMError(
            f"model_type {model_type!r} is not supported by the decoder; use one of {sorted(SUPPORTED_MODEL_TYPES)}"
        )


def quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Dynamic int8 quantisation of every Linear (CPU only); weights int8, activations quantised per call."""
    if next(model.parameters()).dtype != torch.float32:
        raise LMError("int8 dynamic quantisation needs a float32 model")
    with warnings.catch_warnings():  # torch.ao eager quantisation is deprecated in favour of torchao (not installed)
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
