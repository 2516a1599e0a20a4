"""The decoder against Hugging Face `generate(num_beams=B, prefix_allowed_tokens_fn=...)` and other checkpoints."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from adgen.index.trie_arrays import TrieArrays
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.lm import LMConfig, build_lm, load_lm, quantize_int8, save_lm

VOCAB = 96


def random_items(n: int, levels: int, codes: int, offset: int, seed: int = 0) -> list[list[int]]:
    """n distinct fixed-depth S-ID-like sequences; level l uses token ids offset + l*codes + code."""
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        seen.add(tuple(offset + lvl * codes + rng.randrange(codes) for lvl in range(levels)))
    return [list(s) for s in sorted(seen)]


def dict_trie(items: list[list[int]]) -> dict:
    root: dict = {}
    for seq in items:
        node = root
        for tok in seq:
            node = node.setdefault(tok, {})
    return root


def hf_constrained_beam_search(
    model: PreTrainedModel, prompt: list[int], items: list[list[int]], beams: int
) -> list[tuple[tuple[int, ...], float]]:
    trie = dict_trie(items)
    plen = len(prompt)

    def allowed(_batch_id: int, ids: torch.Tensor) -> list[int]:
        node = trie
        for tok in ids[plen:].tolist():
            node = node[tok]
        return list(node)

    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, plen, dtype=torch.long),
        max_new_tokens=len(items[0]),
        num_beams=beams,
        num_return_sequences=beams,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        prefix_allowed_tokens_fn=allowed,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    seqs = [tuple(s[plen:].tolist()) for s in out.sequences]
    return list(zip(seqs, out.sequences_scores.tolist(), strict=True))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_llama() -> PreTrainedModel:
    return build_lm(LMConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2, init_std=0.2))


def test_top_beams_equal_hf_generate_on_a_2k_item_trie(tiny_llama):
    items = random_items(2000, levels=4, codes=16, offset=20)
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 4]]
    beams = 8
    ours = ConstrainedBeamSearch(tiny_llama).generate(prompts, trie, k=beams, beams=beams)
    for prompt, row in zip(prompts, ours, strict=True):
        ref = hf_constrained_beam_search(tiny_llama, prompt, items, beams)
        assert [tuple(items[v]) for v, _ in row] == [seq for seq, _ in ref]
        assert torch.allclose(torch.tensor([s for _, s in row]), torch.tensor([s for _, s in ref]), atol=1e-4)


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=True,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("qwen2")
    save_lm(Qwen2ForCausalLM(config).eval(), directory)
    return directory


def test_a_local_qwen2_checkpoint_decodes_exactly_like_hf_generate(qwen2_dir):
    model = load_lm(qwen2_dir)
    assert model.config.model_type == "qwen2"
    items = random_items(300, levels=3, codes=12, offset=30, seed=1)
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]
    ours = ConstrainedBeamSearch(model).generate(prompts, trie, k=6, beams=6)
    for prompt, row in zip(prompts, ours, strict=True):
        ref = hf_constrained_beam_search(model, prompt, items, 6)
        assert [tuple(items[v]) for v, _ in row] == [seq for seq, _ in ref]
        assert torch.allclose(torch.tensor([s for _, s in row]), torch.tensor([s for _, s in ref]), atol=1e-4)


def exact_scores(model: PreTrainedModel, prompt: list[int], seqs: list[list[int]]) -> list[float]:
    with torch.no_grad():
        ids = torch.tensor([prompt + s for s in seqs])
        lp = model(ids).logits.float().log_softmax(-1)
        cols = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
        return lp[:, cols].gather(2, ids[:, len(prompt) :, None]).squeeze(2).sum(1).tolist()


@pytest.mark.parametrize("variant", ["bfloat16", "int8"])
def test_reduced_precision_returns_valid_items_scored_close_to_fp32(tmp_path, tiny_llama, variant):
    save_lm(tiny_llama, tmp_path)
    if variant == "bfloat16":
        model = load_lm(tmp_path, dtype="bfloat16")
        assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    else:
        model = quantize_int8(load_lm(tmp_path))
    items = random_items(500, levels=3, codes=10, offset=20, seed=2)
    trie = TrieArrays.from_sequences(items, list(range(len(items))))
    prompt = [5, 6, 7, 8, 9, 10]
    row = ConstrainedBeamSearch(model).generate([prompt], trie, k=10, beams=10)[0]
    assert len({v for v, _ in row}) == 10
    fp32 = exact_scores(tiny_llama, prompt, [items[v] for v, _ in row])
    # the reduced-precision score of an item stays close to its exact fp32 log-probability
    errors = [abs(a - s) / abs(a) for a, (_, s) in zip(fp32, row, strict=True)]
    assert max(errors) < 0.03
