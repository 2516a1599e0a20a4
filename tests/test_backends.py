"""Backends behind one interface: torch from a checkpoint, the request-level beam loop, TRT-LLM (GPU only)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from adgen.core.config import ModelSettings
from adgen.index.trie_arrays import TrieArrays
from adgen.model.backend_trtllm import RequestBeamSearch
from adgen.model.backends import BackendUnavailable, GenerationBackend, TorchBackend, load_backend
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, LMError, build_lm, save_lm

VOCAB = 48
PROMPTS = [[5, 6, 7, 8, 9], [4, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 41]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("lm")
    save_lm(build_lm(LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, init_std=0.2)), directory)
    return directory


@pytest.fixture(scope="module")
def trie() -> TrieArrays:
    items = [[*s, 3] for s in itertools.product(range(10, 14), range(20, 23))] + [[15, 3], [16, 17, 18, 3]]
    return TrieArrays.from_sequences(items, list(range(len(items))))


def hf_next_logprobs(model: PreTrainedModel):
    """A forward-only engine: full HF forward of each (right-padded) sequence, logits after its last token."""

    def forward(sequences: list[list[int]]) -> torch.Tensor:
        width = max(map(len, sequences))
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
        return logits[torch.arange(len(sequences)), mask.sum(1) - 1]

    return forward


def test_torch_backend_from_settings_matches_the_decoder(checkpoint, trie):
    backend = load_backend(ModelSettings(checkpoint=checkpoint))
    assert isinstance(backend, GenerationBackend) and backend.name == "torch"
    direct = ConstrainedBeamSearch(backend.search.runner.model).generate(PROMPTS, trie, k=5)
    assert backend.generate(PROMPTS, trie, k=5) == direct


def test_request_level_beam_loop_matches_the_shared_cache_decoder(checkpoint, trie):
    """The loop the TRT-LLM backend runs, fed by a plain HF forward pass, gives the torch decoder's results."""
    model = TorchBackend.from_checkpoint(checkpoint).search.runner.model
    loop = RequestBeamSearch(hf_next_logprobs(model), VOCAB)
    expected = ConstrainedBeamSearch(model).generate(PROMPTS, trie, k=6, beams=8, score_floor=-4.0)
    got = loop.generate(PROMPTS, trie, k=6, beams=8, score_floor=-4.0)
    assert [[v for v, _ in r] for r in got] == [[v for v, _ in r] for r in expected]
    flat = torch.tensor([s for r in got for _, s in r])
    assert torch.allclose(flat, torch.tensor([s for r in expected for _, s in r]), atol=1e-4)


def test_int8_backend_needs_cpu_and_float32(checkpoint):
    with pytest.raises(LMError, match="int8"):
        TorchBackend.from_checkpoint(checkpoint, dtype="bfloat16", int8=True)
    assert TorchBackend.from_checkpoint(checkpoint, int8=True).generate([[1, 2]], _tiny_trie(), k=1)


def _tiny_trie() -> TrieArrays:
    return TrieArrays.from_sequences([[10, 11], [12, 13]], [0, 1])


def test_cuda_without_a_gpu_is_a_clear_error(checkpoint):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        TorchBackend.from_checkpoint(checkpoint, device="cuda")


def test_tensorrt_llm_backend_without_gpu_or_package_is_a_clear_error(checkpoint):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real TRT-LLM test below applies")
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU"):
        load_backend(ModelSettings(checkpoint=checkpoint, backend="tensorrt_llm"))


def test_tensorrt_llm_backend_gives_the_torch_results(checkpoint, trie, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("TensorRT-LLM needs an NVIDIA GPU; none here (this path is unverified, see docs/decoding.md)")
    pytest.importorskip("tensorrt_llm")
    from adgen.model.backend_trtllm import TensorRTLLMBackend

    trt = TensorRTLLMBackend(checkpoint, engine_dir=tmp_path / "engine")
    expected = TorchBackend.from_checkpoint(checkpoint, device="cuda").generate(PROMPTS, trie, k=5)
    got = trt.generate(PROMPTS, trie, k=5)
    assert [[v for v, _ in r] for r in got] == [[v for v, _ in r] for r in expected]
