"""Trie-constrained beam search: top-K distinct valid items per prompt, with their log-probabilities.

Why it is fast (and how it differs from `transformers.generate`):
- Each prompt is prefilled exactly once. Its K/V stay in one tensor per layer, [N, kv_heads, S, d]; the B
  beams of a prompt never copy it. A beam carries only the K/V of its own generated tokens
  ([N, kv_heads, B, t, d], t <= trie depth). Attention for a beam step is computed here, on top of the HF
  modules' weights: scores against the shared prompt K/V are one batched matmul with the B beams (x query
  heads per K/V head) as rows, scores against the beam's own suffix are a small einsum, and one softmax
  runs over the concatenation. No `expand`, no copy of the prompt cache.
- Allowed next tokens come from the trie's CSR arrays: the children of every beam's node are gathered as a
  padded [beams, max_children] block with a validity mask; the beam's log-probabilities are gathered at
  those tokens and invalid slots become -inf. Selection is one `topk` per step over [N, beams x children].
- There is no Python loop over prompts or beams; the only loop is over decoding steps (<= trie depth).

Scores are sums of log-softmax over the full vocabulary (the model's own probability of the item's token
sequence, as HF beam search scores with length_penalty=0). A beam ends at a leaf; its `leaf_value` is the
item returned. Search stops early when every prompt already holds K finished items that no live beam can
beat (log-probabilities only decrease as a sequence grows), so variable-length CI tries cost no extra steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from adgen.index.trie_arrays import TrieArrays, TrieError
from adgen.model.allocator import tune_allocator
from adgen.model.lm import check_supported
from adgen.model.pool_priors import PoolPrior, for_rows
from adgen.model.prefix_cache import PrefixKVCache

NEG_INF = float("-inf")
Prompt = Sequence[int] | torch.Tensor


class DecodingError(ValueError):
    """Invalid decoding request (empty prompt, token outside the vocabulary, k/beams out of range)."""


def resolve_beams(k: int, beams: int | None) -> int:
    """Beam width for a top-k request (default k); every backend refuses k < 1 or fewer beams than k."""
    beams = k if beams is None else beams
    if k < 1 or beams < k:
        raise DecodingError(f"need k >= 1 and beams >= k, got k={k}, beams={beams}")
    return beams


@dataclass
class PromptKV:
    """The prefilled prompts of a batch: per-layer K/V [N, kv_heads, S, d] shared by all beams of a prompt.

    `key_valid` [N, S] marks real (non-padding) keys; `lengths` [N] is each prompt's token count, i.e. the
    position id of its first generated token.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid: torch.Tensor
    lengths: torch.Tensor


@dataclass
class DecodeTimings:
    """Wall time of the last `generate` call, split so benchmarks can report the prefill share."""

    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompts: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    steps: list[int] = field(default_factory=list)


class Packing:
    """Moves rows between a padded [N, T, ...] batch and the packed [P, ...] rows of its real tokens.

    Linear layers cost per row, so running them on packed rows saves the padding's share of the work; a
    batch without padding packs and unpacks as plain views.
    """

    def __init__(self, valid: torch.Tensor) -> None:
        self.shape = tuple(valid.shape)
        self.index = None if bool(valid.all()) else valid.reshape(-1).nonzero().squeeze(1)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[N * T, ...] -> [P, ...]."""
        return padded if self.index is None else padded.index_select(0, self.index)

    def unpack(self, rows: torch.Tensor) -> torch.Tensor:
        """[P, ...] -> [N, T, ...] with zeros at padding positions."""
        if self.index is None:
            return rows.view(*self.shape, *rows.shape[1:])
        out = rows.new_zeros(self.shape[0] * self.shape[1], *rows.shape[1:])
        out.index_copy_(0, self.index, rows)
        return out.view(*self.shape, *rows.shape[1:])


class CausalLMRunner:
    """Forward passes of an HF Llama/Qwen2-family model for prompt prefill and shared-prompt beam steps.

    Uses the model's own modules (projections, norms, MLP, rotary embedding), so any checkpoint of a
    supported family works, fp32, bf16 or int8-dynamic-quantised.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        cfg = model.config
        check_supported(cfg.model_type)
        base = model.model
        self.model = model
        self.embed = base.embed_tokens
        self.layers = list(base.layers)[: cfg.num_hidden_layers]
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.lm_head = model.lm_head
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.scale = self.head_dim**-0.5
        self.vocab_size = int(cfg.vocab_size)
        self.sliding_window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        if cfg.model_type in {"llama", "qwen3"}:
            self.sliding_window = None
        self.silu_mlp = getattr(cfg, "hidden_act", None) == "silu" and hasattr(self.layers[0].mlp, "gate_proj")
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device

    # -- pieces -------------------------------------------------------------------------------------------
    def _project(
        self, attn: torch.nn.Module, h: torch.Tensor, query_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [..., H, d], k and v [..., Hkv, d] for hidden states h [..., hidden]; q only at `query_rows`
        (indices into h's first axis) when given."""
        lead = h.shape[:-1]
        hq = h if query_rows is None else h[query_rows]
        q = attn.q_proj(hq).view(*hq.shape[:-1], self.num_heads, self.head_dim)
        k = attn.k_proj(h).view(*lead, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(h).view(*lead, self.num_kv_heads, self.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    def _rms(self, norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The fused RMSNorm kernel when the module is a plain weighted RMSNorm (identical result, ~3x faster)."""
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            return norm(x)
        return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)

    def _mlp(self, mlp: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        if not self.silu_mlp:
            return mlp(h)
        return mlp.down_proj(F.silu(mlp.gate_proj(h), inplace=True).mul_(mlp.up_proj(h)))

    def _block_tail(self, layer: torch.nn.Module, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output, then the MLP with its residual."""
        x = x + layer.self_attn.o_proj(attn_out)
        return x.add_(self._mlp(layer.mlp, self._rms(layer.post_attention_layernorm, x)))

    def _logprobs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.lm_head(self._rms(self.norm, x)).float(), dim=-1)

    # -- prompt prefill -----------------------------------------------------------------------------------
    def prefill(
        self, tokens: torch.Tensor, new_lengths: torch.Tensor, past: PromptKV | None = None
    ) -> tuple[torch.Tensor, PromptKV]:
        """Run right-padded prompt tokens [N, T] (after an optional cached prefix `past`).

        Returns the next-token log-probs [N, V] at each prompt's last token and the prompts' K/V. Norms,
        projections and MLPs run on the packed real tokens only ([P, hidden], no padding rows); only
        attention sees the padded [N, heads, S, d] layout, which the returned K/V keep anyway. In the final
        layer only each prompt's last token gets a query, attention and an MLP: nothing else is read.
        """
        n, t = tokens.shape
        dev = tokens.device
        offsets = past.lengths if past is not None else torch.zeros(n, dtype=torch.long, device=dev)
        new_valid = torch.arange(t, device=dev)[None, :] < new_lengths[:, None]
        packed = Packing(new_valid)
        positions = packed.pack((offsets[:, None] + torch.arange(t, device=dev)[None, :]).reshape(n * t))
        x = self.embed(packed.pack(tokens.reshape(n * t)))  # [P, hidden]
        cos, sin = (c[0] for c in self.rotary(x[None], positions[None]))  # [P, d]
        if past is not None:
            key_valid = torch.cat([past.key_valid, new_valid], dim=1)
            causal = torch.ones(t, t, dtype=torch.bool, device=dev).tril()
            full_mask = torch.cat([past.key_valid[:, None, :].expand(n, t, -1), causal.expand(n, t, t)], dim=2)
            full_mask = full_mask[:, None]
        else:
            key_valid = new_valid
            full_mask = None
        if self.sliding_window is not None and int(key_valid.shape[1]) > self.sliding_window:
            raise DecodingError(f"prompt longer than the model's sliding window {self.sliding_window}")
        last = torch.cumsum(new_lengths, 0) - 1  # each prompt's last token in the packed rows
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        gqa = self.groups > 1
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = self._rms(layer.input_layernorm, x)
            final = i == len(self.layers) - 1
            q, k, v = self._project(attn, h, query_rows=last if final else None)
            # contiguous [N, Hkv, T, d]: every beam step multiplies by these, and a strided view would be
            # copied by each of those matmuls (4 layers x steps x K and V) instead of once here
            k = packed.unpack(rotate(k, cos, sin, 1)).transpose(1, 2).contiguous()
            v = packed.unpack(v).transpose(1, 2).contiguous()
            if past is not None:
                k = torch.cat([past.keys[i], k], dim=2)
                v = torch.cat([past.values[i], v], dim=2)
            keys.append(k)
            values.append(v)
            if not final:
                q = packed.unpack(rotate(q, cos, sin, 1)).transpose(1, 2)  # [N, H, T, d]
                if full_mask is None:
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=gqa)
                else:
                    o = F.scaled_dot_product_attention(q, k, v, attn_mask=full_mask, scale=self.scale, enable_gqa=gqa)
                x = self._block_tail(layer, x, packed.pack(o.transpose(1, 2).reshape(n * t, -1)))
            else:
                q_last = rotate(q, cos[last], sin[last], 1)[:, :, None]  # [N, H, 1, d]
                mask = key_valid[:, None, None, :]
                o = F.scaled_dot_product_attention(q_last, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)
                x = self._block_tail(layer, x[last], o.reshape(n, -1))
        lengths = offsets + new_lengths
        return self._logprobs(x), PromptKV(keys, values, key_valid, lengths)

    def empty_suffix(self, n: int) -> torch.Tensor:
        """Per-beam suffix K/V before any token is generated: [N, Hkv, 1, 0, d]."""
        return torch.empty(n, self.num_kv_heads, 1, 0, self.head_dim, dtype=self.dtype, device=self.device)

    # -- one beam step ------------------------------------------------------------------------------------
    def beam_step(
        self,
        tokens: torch.Tensor,
        prompt: PromptKV,
        suffix_k: list[torch.Tensor],
        suffix_v: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Feed each beam's newest token [N, B]; beams attend to the shared prompt K/V plus their own suffix.

        `suffix_k[l]` is [N, Hkv, B, t, d] (already reordered to the current beams). Returns log-probs
        [N, B, V] and the suffix K/V with the new token appended ([N, Hkv, B, t + 1, d]).
        """
        n, b = tokens.shape
        t = suffix_k[0].shape[3] if suffix_k else 0
        hkv, g, d = self.num_kv_heads, self.groups, self.head_dim
        positions = (prompt.lengths + t)[:, None].expand(n, b)
        x = self.embed(tokens)
        cos, sin = self.rotary(x, positions)
        prompt_bias = torch.zeros(prompt.key_valid.shape, dtype=torch.float32, device=x.device)
        prompt_bias = prompt_bias.masked_fill(~prompt.key_valid, NEG_INF)[:, None, None, :]  # [N,1,1,S]
        s = prompt.key_valid.shape[1]
        new_k: list[torch.Tensor] = []
        new_v: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = self._rms(layer.input_layernorm, x)
            q, k, v = self._project(attn, h)  # [N, B, H|Hkv, d]
            q, k = rotate(q, cos, sin, 2), rotate(k, cos, sin, 2)
            k_all = torch.cat([suffix_k[i], k.permute(0, 2, 1, 3).unsqueeze(3)], dim=3) if t else None
            v_all = torch.cat([suffix_v[i], v.permute(0, 2, 1, 3).unsqueeze(3)], dim=3) if t else None
            if k_all is None:
                k_all = k.permute(0, 2, 1, 3).unsqueeze(3)
                v_all = v.permute(0, 2, 1, 3).unsqueeze(3)
            new_k.append(k_all)
            new_v.append(v_all)
            qg = q.view(n, b, hkv, g, d).permute(0, 2, 1, 3, 4)  # [N, Hkv, B, g, d]
            q_rows = qg.reshape(n, hkv, b * g, d)
            s_prompt = torch.matmul(q_rows, prompt.keys[i].transpose(-1, -2)).float() * self.scale
            s_prompt = s_prompt + prompt_bias  # [N, Hkv, B*g, S]
            s_self = torch.einsum("nkbgd,nkbtd->nkbgt", qg, k_all).float() * self.scale
            probs = torch.softmax(torch.cat([s_prompt, s_self.reshape(n, hkv, b * g, t + 1)], dim=-1), dim=-1)
            probs = probs.to(x.dtype)
            o = torch.matmul(probs[..., :s], prompt.values[i]).view(n, hkv, b, g, d)
            o = o + torch.einsum("nkbgt,nkbtd->nkbgd", probs[..., s:].reshape(n, hkv, b, g, t + 1), v_all)
            x = self._block_tail(layer, x, o.permute(0, 2, 1, 3, 4).reshape(n, b, hkv * g * d))
        return self._logprobs(x), new_k, new_v


@dataclass
class BeamStep:
    """The beams chosen by one step: each new beam's parent beam [N, B] and the token it appends [N, B]."""

    parent: torch.Tensor
    tokens: torch.Tensor


class TrieBeams:
    """Constrained beam-search bookkeeping for a batch, independent of how log-probs are computed.

    `advance(logprobs)` takes the next-token log-probs of the current beams ([N, b, V]; b = 1 at the root),
    scores every (beam, allowed child) pair by a CSR gather, moves candidates that reach a leaf into each
    prompt's pool of the best k finished items, and keeps the best `beams` unfinished candidates. It returns
    the new beams, or None when the search is over (no live beam can still enter any prompt's top k).
    The torch decoder and the TensorRT-LLM backend share it, so both apply the trie identically.
    """

    def __init__(
        self,
        trie: TrieArrays,
        n: int,
        k: int,
        beams: int,
        floor: float | None,
        renormalize: bool = False,
        track_levels: bool = False,
    ) -> None:
        dev = trie.indptr.device
        self.trie, self.k, self.beams, self.floor = trie, k, beams, floor
        self.renormalize = renormalize
        # optional: each beam's and pooled item's log-prob per trie level [N, *, depth] (decode-lever studies)
        depth = max(trie.max_depth, 1)
        self.levels = torch.zeros(n, 1, depth, device=dev) if track_levels else None
        self.pool_levels = torch.zeros(n, k, depth, device=dev) if track_levels else None
        self.nodes = torch.full((n, 1), trie.root, dtype=torch.long, device=dev)  # live tries move their root
        self.scores = torch.zeros(n, 1, dtype=torch.float32, device=dev)
        self.pool_scores = torch.full((n, k), NEG_INF, device=dev)
        self.pool_values = torch.full((n, k), -1, dtype=torch.long, device=dev)
        self.width = max(trie.max_children, 1)
        self._slot = torch.arange(self.width, device=dev)
        self.steps = 0
        self.prompt_logprobs: torch.Tensor | None = None  # the prefill's next-token log-probs, when set by a caller

    def advance(self, lp: torch.Tensor) -> BeamStep | None:
        trie, nodes, width = self.trie, self.nodes, self.width
        if self.steps >= trie.max_depth:
            return None
        self.steps += 1
        n, b = nodes.shape
        start = trie.indptr[nodes]  # [N, b]
        count = trie.indptr[nodes + 1] - start
        valid = self._slot < count.unsqueeze(-1)  # [N, b, C]
        edges = (start.unsqueeze(-1) + self._slot).clamp(max=trie.child_token.numel() - 1)
        child_tok = trie.child_token[edges]
        child = trie.child_node[edges]
        tok_lp = lp.float().gather(2, torch.where(valid, child_tok, 0))
        if self.renormalize:  # log P(child | prefix, child is valid): the distribution a trie-trained model learnt
            tok_lp = tok_lp - torch.where(valid, tok_lp, NEG_INF).logsumexp(-1, keepdim=True)
        if self.floor is not None:
            valid = valid & (tok_lp >= self.floor)
        cand = torch.where(valid, self.scores.unsqueeze(-1) + tok_lp, NEG_INF).view(n, b * width)
        leaf_val = trie.leaf_value[child].view(n, b * width)
        is_leaf = leaf_val >= 0
        # finished: merge candidates that reach a leaf into the pool of the best k items
        pool, idx = torch.cat([self.pool_scores, torch.where(is_leaf, cand, NEG_INF)], 1).topk(self.k, dim=1)
        self.pool_scores = pool
        self.pool_values = torch.cat([self.pool_values, leaf_val], 1).gather(1, idx)
        # live: the best `beams` unfinished candidates become the next beams
        scores, pick = torch.where(is_leaf, NEG_INF, cand).topk(min(self.beams, b * width), dim=1)
        if self.levels is not None and self.pool_levels is not None:
            depth = self.levels.shape[-1]
            cand_levels = self.levels.unsqueeze(2).expand(n, b, width, depth).clone()
            cand_levels[..., self.steps - 1] = torch.where(valid, tok_lp, NEG_INF)
            cand_levels = cand_levels.view(n, b * width, depth)
            both = torch.cat([self.pool_levels, cand_levels], 1)
            self.pool_levels = both.gather(1, idx.unsqueeze(-1).expand(-1, -1, depth))
            self.levels = cand_levels.gather(1, pick.unsqueeze(-1).expand(-1, -1, depth))
        alive = torch.isfinite(scores)
        # log-probs only fall as a sequence grows: a prompt is done once its k-th item beats its best beam
        if not bool(alive.any()) or bool((self.pool_scores[:, -1] >= scores[:, 0]).all()):
            return None
        self.scores = scores
        self.nodes = torch.where(alive, child.view(n, -1).gather(1, pick), 0)
        tokens = torch.where(alive, child_tok.view(n, -1).gather(1, pick), 0)
        return BeamStep(pick // width, tokens)


class ConstrainedBeamSearch:
    """Top-K distinct valid items per prompt by trie-constrained beam search.

    >>> search = ConstrainedBeamSearch(model)                       # any supported HF causal LM
    >>> search.generate([[5, 9, 12], [7, 3]], trie, k=10)           # -> [[(item, logprob), ...], ...]

    `beams` defaults to k (must be >= k). `score_floor` (a log-probability, e.g. -8.0) drops any candidate
    token whose own log-prob is below it (RARE's low-score truncation), so fewer than k items may return.
    `prefix_cache` reuses the K/V of prompt prefixes seen in earlier calls (nearline: a user's new prompt
    mostly repeats the previous one). `max_batch_prompts` bounds memory by decoding in chunks.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        device: str | torch.device | None = None,
        prefix_cache: PrefixKVCache | None = None,
        max_batch_prompts: int = 64,
    ) -> None:
        if device is not None:
            model = model.to(device)
        tune_allocator()  # decode-sized buffers stay in the heap: ~25% less wall time on CPU (model/allocator.py)
        self.runner = CausalLMRunner(model.eval())
        self.device = self.runner.device
        self.prefix_cache = prefix_cache
        self.max_batch_prompts = max_batch_prompts
        self.timings = DecodeTimings()

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    # -- public API ---------------------------------------------------------------------------------------
    @torch.inference_mode()
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
        """For each prompt, up to k (item, log-prob) pairs, best first, items distinct and valid in `trie`.

        `renormalize` scores each token by its log-probability among the trie's valid children only (for
        models trained with a trie-constrained softmax); by default it is the log-probability over the vocabulary.
        `ad_prior` (a `PoolPrior`: the next-ad head of model/ad_head.py, popularity or transitions of
        model/pool_priors.py, or their sum) re-ranks the best `beams` finished items before the top k are cut; a
        per-prompt prior (transitions) has one row per prompt of this call and is sliced with each chunk.
        """
        beams = resolve_beams(k, beams)
        self._check_trie(trie)
        trie = trie.to(self.device)
        encoded = self._encode_prompts(prompts)
        self.timings = DecodeTimings(prompts=len(encoded))
        out: list[list[tuple[int, float]]] = []
        for start in range(0, len(encoded), self.max_batch_prompts):
            chunk = encoded[start : start + self.max_batch_prompts]
            chunk_prior = for_rows(ad_prior, start, start + len(chunk))
            state = self._run_search(chunk, trie, k, beams, score_floor, renormalize, chunk_prior)
            scores, items = rank_pool(state, chunk_prior)
            out.extend(to_results(scores, items, k))
        return out

    @torch.inference_mode()
    def generate_levels(
        self, prompts: Sequence[Prompt], trie: TrieArrays, k: int, beams: int, renormalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt's best k finished items (leaf values [N, k], -1 = empty) and their log-prob at every
        trie level ([N, k, depth]; the item's score is the sum). For studies that re-weight levels offline."""
        self._check_trie(trie)
        trie = trie.to(self.device)
        encoded = self._encode_prompts(prompts)
        values, levels = [], []
        for start in range(0, len(encoded), self.max_batch_prompts):
            chunk = encoded[start : start + self.max_batch_prompts]
            state = self._run_search(chunk, trie, k, beams, None, renormalize, None, track_levels=True)
            values.append(state.pool_values)
            levels.append(state.pool_levels)
        return torch.cat(values), torch.cat(levels)

    @torch.inference_mode()
    def generate_unconstrained(
        self, prompts: Sequence[Prompt], steps: int, beams: int
    ) -> list[list[tuple[tuple[int, ...], float]]]:
        """Plain beam search of fixed length `steps` over the whole vocabulary (the cost baseline).

        Same prefill, shared prompt K/V and beam step as `generate`; only the trie gather is replaced by a
        top-k over all B x V candidates. Returns each prompt's `beams` token sequences and scores.
        """
        encoded = self._encode_prompts(prompts)
        self.timings = DecodeTimings(prompts=len(encoded))
        out: list[list[tuple[tuple[int, ...], float]]] = []
        for start in range(0, len(encoded), self.max_batch_prompts):
            out.extend(self._search_unconstrained(encoded[start : start + self.max_batch_prompts], steps, beams))
        return out

    # -- validation and prefill ---------------------------------------------------------------------------
    def _check_trie(self, trie: TrieArrays) -> None:
        check_trie(trie, self.vocab_size)

    def _encode_prompts(self, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        return encode_prompts(prompts, self.vocab_size)

    def _prefill(self, prompts: list[np.ndarray]) -> tuple[torch.Tensor, PromptKV]:
        """Prefill (after any cached prefix) in groups of similar remaining length, so a batch that mixes
        cache hits (a few new tokens) with cold prompts (hundreds) does not pad the hits to the cold length."""
        t0 = time.perf_counter()
        cache = self.prefix_cache
        hits = [cache.lookup(p) for p in prompts] if cache is not None else [None] * len(prompts)
        cached = [h.length if h is not None else 0 for h in hits]
        rest = [p[c:] for p, c in zip(prompts, cached, strict=True)]
        parts: list[tuple[list[int], torch.Tensor, PromptKV]] = []
        for rows in _length_groups([len(r) for r in rest]):
            tokens = _pad([rest[i] for i in rows], self.device)
            new_lengths = torch.tensor([len(rest[i]) for i in rows], dtype=torch.long, device=self.device)
            sub_cached = [cached[i] for i in rows]
            past = (
                _stack_past([hits[i] for i in rows], sub_cached, self.runner, self.device) if any(sub_cached) else None
            )
            logprobs, prompt_kv = self.runner.prefill(tokens, new_lengths, past)
            if cache is not None:
                cache.insert_batch([prompts[i] for i in rows], prompt_kv)
            parts.append((rows, logprobs, prompt_kv))
        self.timings.prefill_s += time.perf_counter() - t0
        self.timings.prompt_tokens += sum(len(p) for p in prompts)
        self.timings.cached_tokens += sum(cached)
        if len(parts) == 1:
            return parts[0][1], parts[0][2]
        return _merge_parts(parts, len(prompts), self.device)

    # -- the search ---------------------------------------------------------------------------------------
    def _run_search(
        self,
        prompts: list[np.ndarray],
        trie: TrieArrays,
        k: int,
        beams: int,
        floor: float | None,
        renormalize: bool,
        ad_prior: PoolPrior | None,
        track_levels: bool = False,
    ) -> TrieBeams:
        logprobs, prompt_kv = self._prefill(prompts)
        t0 = time.perf_counter()
        runner, n = self.runner, len(prompts)
        pool = max(k, beams) if ad_prior is not None else k
        state = TrieBeams(trie, n, pool, beams, floor, renormalize, track_levels)
        state.prompt_logprobs = logprobs
        suffix_k = [runner.empty_suffix(n)] * len(runner.layers)
        suffix_v = list(suffix_k)
        lp = logprobs.unsqueeze(1)  # [N, b, V]
        while (step := state.advance(lp)) is not None:
            suffix_k = [_take_beams(s, step.parent) for s in suffix_k]
            suffix_v = [_take_beams(s, step.parent) for s in suffix_v]
            lp, suffix_k, suffix_v = runner.beam_step(step.tokens, prompt_kv, suffix_k, suffix_v)
        self.timings.decode_s += time.perf_counter() - t0
        self.timings.steps.append(state.steps)
        return state

    def _search_unconstrained(
        self, prompts: list[np.ndarray], steps: int, beams: int
    ) -> list[list[tuple[tuple[int, ...], float]]]:
        logprobs, prompt_kv = self._prefill(prompts)
        t0 = time.perf_counter()
        n, dev, runner = len(prompts), self.device, self.runner
        v = runner.vocab_size
        scores = torch.zeros(n, 1, device=dev)
        seqs = torch.zeros(n, 1, 0, dtype=torch.long, device=dev)
        lp = logprobs.unsqueeze(1)
        suffix_k = [runner.empty_suffix(n)] * len(runner.layers)
        suffix_v = list(suffix_k)
        for step in range(steps):
            b = scores.shape[1]
            cand = (scores.unsqueeze(-1) + lp).view(n, b * v)
            scores, pick = cand.topk(min(beams, b * v), dim=1)
            parent, tok = pick // v, pick % v
            seqs = torch.cat([seqs.gather(1, parent.unsqueeze(-1).expand(-1, -1, seqs.shape[2])), tok[..., None]], 2)
            if step == steps - 1:
                break
            suffix_k = [_take_beams(s, parent) for s in suffix_k]
            suffix_v = [_take_beams(s, parent) for s in suffix_v]
            lp, suffix_k, suffix_v = runner.beam_step(tok, prompt_kv, suffix_k, suffix_v)
        self.timings.decode_s += time.perf_counter() - t0
        s_list, q_list = scores.tolist(), seqs.tolist()
        return [[(tuple(q), s) for q, s in zip(qs, ss, strict=True)] for qs, ss in zip(q_list, s_list, strict=True)]


def check_trie(trie: TrieArrays, vocab_size: int) -> None:
    """A trie the model can decode: at least one item, every token inside the vocabulary."""
    if trie.num_values == 0 or trie.child_token.numel() == 0:
        raise TrieError("the trie is empty (no items): nothing can be generated; build it from >= 1 sequence")
    top = int(trie.child_token.max())
    if top >= vocab_size:
        raise TrieError(
            f"trie uses token id {top} but the model's vocabulary has {vocab_size} tokens; "
            "the trie and the checkpoint come from different tokenizers"
        )


def encode_prompts(prompts: Sequence[Prompt], vocab_size: int) -> list[np.ndarray]:
    """Prompts as int64 arrays; an empty prompt or a token outside [0, vocab_size) is a DecodingError."""
    if len(prompts) == 0:
        raise DecodingError("no prompts given")
    encoded = []
    for i, p in enumerate(prompts):
        arr = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
        arr = arr.astype(np.int64, copy=False).reshape(-1)
        if arr.size == 0:
            raise DecodingError(f"prompt {i} is empty; every prompt needs at least one token")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise DecodingError(f"prompt {i} has token id {bad} outside the vocabulary [0, {vocab_size})")
        encoded.append(arr)
    return encoded


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim_axis: int) -> torch.Tensor:
    """RoPE as HF's `apply_rotary_pos_emb` computes it (same ops, same result) without its cat/neg copies.

    `cos`/`sin` are [..., d] = cat(f, f); `head_dim_axis` is where the heads axis sits in x (unsqueezed there).
    """
    half = x.shape[-1] // 2
    c, s = cos[..., :half].unsqueeze(head_dim_axis), sin[..., :half].unsqueeze(head_dim_axis)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def _take_beams(suffix: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Reorder per-beam suffix K/V [N, Hkv, b, t, d] to the new beams' parents [N, B]."""
    n, h, _, t, d = suffix.shape
    idx = parent[:, None, :, None, None].expand(n, h, parent.shape[1], t, d)
    return suffix.gather(2, idx)


def _pad(rows: list[np.ndarray], device: torch.device) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out).to(device)


def _length_groups(lengths: list[int], min_fill: float = 0.75) -> list[list[int]]:
    """Row indices grouped so each group's shortest member is >= min_fill x its longest (bounded padding).

    One group, in the original order, when all lengths are already close (the common cold batch).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] >= min_fill * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) == 1:
        return [list(range(len(lengths)))]
    return groups


def _merge_parts(parts: list[tuple[list[int], torch.Tensor, PromptKV]], n: int, device: torch.device) -> tuple:
    """Scatter per-group log-probs and prompt K/V back into one batch in the original row order."""
    first = parts[0][2]
    s = max(kv.key_valid.shape[1] for _, _, kv in parts)
    hkv, d = first.keys[0].shape[1], first.keys[0].shape[3]
    keys = [torch.zeros(n, hkv, s, d, dtype=first.keys[0].dtype, device=device) for _ in first.keys]
    values = [torch.zeros_like(k) for k in keys]
    key_valid = torch.zeros(n, s, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    logprobs = torch.empty(n, parts[0][1].shape[1], dtype=parts[0][1].dtype, device=device)
    for rows, lp, kv in parts:
        idx = torch.tensor(rows, dtype=torch.long, device=device)
        width = kv.key_valid.shape[1]
        for layer in range(len(keys)):
            keys[layer][idx, :, :width] = kv.keys[layer]
            values[layer][idx, :, :width] = kv.values[layer]
        key_valid[idx, :width] = kv.key_valid
        lengths[idx] = kv.lengths
        logprobs[idx] = lp
    return logprobs, PromptKV(keys, values, key_valid, lengths)


def _stack_past(hits: list, cached: list[int], runner: CausalLMRunner, device: torch.device) -> PromptKV:
    """Right-pad the cached prefix K/V of each prompt into one [N, Hkv, S, d] tensor per layer."""
    n, s = len(hits), max(cached)
    shape = (n, runner.num_kv_heads, s, runner.head_dim)
    keys = [torch.zeros(shape, dtype=runner.dtype, device=device) for _ in runner.layers]
    values = [torch.zeros(shape, dtype=runner.dtype, device=device) for _ in runner.layers]
    for row, (hit, c) in enumerate(zip(hits, cached, strict=True)):
        if hit is None:
            continue
        for layer, (hk, hv) in enumerate(zip(hit.keys, hit.values, strict=True)):
            keys[layer][row, :, :c] = hk[:, :c]
            values[layer][row, :, :c] = hv[:, :c]
    lengths = torch.tensor(cached, dtype=torch.long, device=device)
    key_valid = torch.arange(s, device=device)[None, :] < lengths[:, None]
    return PromptKV(keys, values, key_valid, lengths)


def rank_pool(state: TrieBeams, prior: PoolPrior | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The finished search's pool (scores, leaf values), re-ranked by `prior` when one is given."""
    if prior is None:
        return state.pool_scores, state.pool_values
    if state.prompt_logprobs is None:
        raise DecodingError("a pool prior needs the prompts' next-token log-probs (TrieBeams.prompt_logprobs)")
    scores, order = prior.rescore(state.prompt_logprobs, state.pool_scores, state.pool_values).sort(
        dim=1, descending=True
    )
    return scores, state.pool_values.gather(1, order)


def to_results(scores: torch.Tensor, items: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Best-first (item, score) lists without -inf slots; a repeated item keeps its best score."""
    out = []
    for ss, vv in zip(scores.tolist(), items.tolist(), strict=True):
        seen: set[int] = set()
        row = []
        for s, v in zip(ss, vv, strict=True):
            if s == NEG_INF or v < 0 or v in seen:
                continue
            seen.add(v)
            row.append((int(v), float(s)))
        out.append(row[:k])
    return out
