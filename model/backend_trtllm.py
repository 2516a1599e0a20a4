"""TensorRT-LLM backend (GPU only, extra `[trt]`): TRT-LLM runs the forward passes, our loop applies the trie.

TRT-LLM's logits processors are reported not to act per beam (NVIDIA/TensorRT-LLM#7368; the Dynamo adapter
refuses beam width > 1), so its own beam search cannot enforce a per-beam trie. Here TRT-LLM only computes
next-token logits: every step sends each live beam's full sequence (prompt + its generated tokens) as a
request for one token with `return_generation_logits=True`, with KV-cache block reuse on, so the prompt's
K/V blocks are computed once and shared by the beams (and by later requests with the same prefix) inside
TRT-LLM's paged cache. Beam bookkeeping is `TrieBeams`, the same code the torch decoder uses, so both
backends apply the trie identically.

VERIFICATION STATUS: the beam loop (`RequestBeamSearch`) is tested on CPU with a plain HF forward pass as the
logit source and matches the torch decoder. The TensorRT-LLM calls themselves (engine build from the HF
checkpoint, `generate` with generation logits) have NOT been run: this machine has no GPU and no
tensorrt_llm. Their tests skip. See docs/decoding.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from adgen.index.trie_arrays import TrieArrays
from adgen.model.backends import BackendUnavailable
from adgen.model.decoding import (
    Prompt,
    TrieBeams,
    check_trie,
    encode_prompts,
    rank_pool,
    resolve_beams,
    to_results,
)
from adgen.model.pool_priors import PoolPrior

NextLogprobs = Callable[[list[list[int]]], torch.Tensor]


class RequestBeamSearch:
    """Trie-constrained beam search over any engine that maps token sequences to next-token log-probs.

    `next_logprobs(sequences)` returns [len(sequences), vocab] log-probabilities (or logits; they are
    normalised here) of the token after each sequence. The engine is expected to reuse the shared prompt
    prefix internally (TRT-LLM: KV block reuse); this class only sends sequences.
    """

    name = "request_beam_search"

    def __init__(self, next_logprobs: NextLogprobs, vocab_size: int) -> None:
        self.next_logprobs = next_logprobs
        self.vocab_size = vocab_size

    def _logprobs(self, sequences: list[list[int]]) -> torch.Tensor:
        out = self.next_logprobs(sequences).float().cpu()
        if out.shape != (len(sequences), self.vocab_size):
            raise RuntimeError(f"engine returned logits {tuple(out.shape)} for {len(sequences)} sequences")
        return torch.log_softmax(out, dim=-1)

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
        beams = resolve_beams(k, beams)
        check_trie(trie, self.vocab_size)
        base = [p.tolist() for p in encode_prompts(prompts, self.vocab_size)]
        trie = trie.to("cpu")
        n = len(base)
        state = TrieBeams(trie, n, max(k, beams) if ad_prior is not None else k, beams, score_floor, renormalize)
        suffix = torch.zeros(n, 1, 0, dtype=torch.long)
        state.prompt_logprobs = self._logprobs(base)
        lp = state.prompt_logprobs.unsqueeze(1)
        while (step := state.advance(lp)) is not None:
            parent = step.parent.unsqueeze(-1).expand(-1, -1, suffix.shape[2])
            suffix = torch.cat([suffix.gather(1, parent), step.tokens.unsqueeze(-1)], dim=2)
            b = suffix.shape[1]
            # request marshalling for the engine's list API (the search itself stays in tensors)
            tails = suffix.view(n * b, -1).tolist()
            sequences = [base[i // b] + tail for i, tail in enumerate(tails)]
            lp = self._logprobs(sequences).view(n, b, -1)
        return to_results(*rank_pool(state, ad_prior), k)


class TensorRTLLMBackend(RequestBeamSearch):
    """TRT-LLM engine built from (or loaded as) a local HF checkpoint, driven by `RequestBeamSearch`.

    `engine_dir`: where the built engine is saved and, if it already holds one, loaded from.
    """

    name = "tensorrt_llm"

    def __init__(
        self,
        checkpoint: Path | str,
        engine_dir: Path | str | None = None,
        max_batch_size: int = 640,
        max_seq_len: int = 512,
        free_gpu_memory_fraction: float = 0.5,
    ) -> None:
        if not torch.cuda.is_available():
            raise BackendUnavailable("the tensorrt_llm backend needs an NVIDIA GPU; none is visible to torch")
        try:
            import tensorrt_llm
            from tensorrt_llm import SamplingParams
            from tensorrt_llm.llmapi import BuildConfig, KvCacheConfig
        except ImportError as exc:
            raise BackendUnavailable(
                f"tensorrt_llm is not installed ({exc}); install the extra: pip install 'adgen[trt]'"
            ) from exc
        try:  # TRT-LLM >= 1.0 keeps the TensorRT-engine LLM here (the top-level LLM is the PyTorch flow)
            from tensorrt_llm._tensorrt_engine import LLM
        except ImportError:
            LLM = tensorrt_llm.LLM

        checkpoint = Path(checkpoint)
        vocab_size = int(json.loads((checkpoint / "config.json").read_text())["vocab_size"])
        kv_cache = KvCacheConfig(enable_block_reuse=True, free_gpu_memory_fraction=free_gpu_memory_fraction)
        engine = Path(engine_dir) if engine_dir is not None else None
        if engine is not None and (engine / "config.json").is_file():
            self.llm = LLM(model=str(engine), kv_cache_config=kv_cache)
        else:
            build = BuildConfig(max_batch_size=max_batch_size, max_seq_len=max_seq_len, gather_generation_logits=True)
            self.llm = LLM(model=str(checkpoint), build_config=build, kv_cache_config=kv_cache)
            if engine is not None:
                self.llm.save(str(engine))
        self._params = SamplingParams(max_tokens=1, return_generation_logits=True)
        super().__init__(self._forward, vocab_size)

    def _forward(self, sequences: list[list[int]]) -> torch.Tensor:
        outputs = self.llm.generate(sequences, self._params, use_tqdm=False)
        return torch.stack([o.outputs[0].generation_logits[0].float() for o in outputs])
