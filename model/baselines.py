"""Baselines in the same harness and split as the generative model: most popular, and SASRec.

SASRec (Kang & McAuley, 2018) is the ID-based sequential recommender generative retrieval papers compare
against: item embeddings + learned positions, causal self-attention blocks, next-item prediction at every
position. Trained here with full-softmax cross-entropy over the whole catalogue (stronger than the
original's sampled BCE), early-stopped on validation NDCG@10. Both see only the ad sequence.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from adgen.core.catalogue import AD_KINDS, HistoryEvent, SplitExample
from adgen.model.metrics import ranking_metrics


def ad_ids(history: Sequence[HistoryEvent]) -> list[str]:
    return [e.ref for e in history if e.kind in AD_KINDS]


class PopularityRecommender:
    """Ranks ads by how often they were clicked/converted in the training part of the histories."""

    name = "popularity"

    def __init__(self, candidates: Sequence[str]) -> None:
        self.candidates = list(candidates)
        self.ranking: list[str] = list(candidates)

    def fit(self, train_histories: Sequence[Sequence[HistoryEvent]]) -> PopularityRecommender:
        counts = Counter(ref for h in train_histories for ref in ad_ids(h))
        allowed = set(self.candidates)
        self.ranking = sorted(allowed, key=lambda i: (-counts.get(i, 0), i))
        return self

    def recommend(self, examples: Sequence[SplitExample], k: int) -> list[list[str]]:
        return [self.ranking[:k] for _ in examples]


class SASRecConfig(BaseModel):
    hidden: int = Field(64, ge=8)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, ge=2)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1, description="Epochs without a better validation NDCG@10 before stopping.")
    eval_every: int = Field(1, ge=1)
    seed: int = 0
    torch_threads: int = Field(2, ge=1, description="1 is far faster on a busy machine (threads wait on each other).")


class SASRecNet(nn.Module):
    def __init__(self, num_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, config.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.hidden)
        layer = nn.TransformerEncoderLayer(
            config.hidden,
            config.heads,
            dim_feedforward=config.hidden * 4,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.hidden)
        self.drop = nn.Dropout(config.dropout)
        # nn.Embedding's default N(0, 1) makes the tied output logits ~sqrt(hidden) wide and the first epochs
        # diverge (CE far above ln N); std hidden^-0.5 gives unit-scale inputs after the sqrt(d) scaling.
        nn.init.normal_(self.item_emb.weight, std=config.hidden**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=config.hidden**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] for left-padded item-index sequences (0 = padding)."""
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(pos)
        x = self.drop(x) * (seq > 0).unsqueeze(-1)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=seq.device)
        return self.norm(self.blocks(x, mask=causal, is_causal=True))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over items 1..N (index i-1 = item index i)."""
        return hidden @ self.item_emb.weight[1:].T


def top_items(
    probs: Callable[[Sequence[SplitExample]], torch.Tensor],
    items: Sequence[str],
    examples: Sequence[SplitExample],
    k: int,
) -> list[list[str]]:
    """The k most probable of `items` per example, from `probs` (a [chunk, items] scorer) in chunks of 256."""
    out: list[list[str]] = []
    for start in range(0, len(examples), 256):
        top = probs(examples[start : start + 256]).topk(min(k, len(items)), dim=-1).indices
        out.extend([items[i] for i in row] for row in top.tolist())
    return out


class SASRecRecommender:
    """SASRec over the candidate ads; `fit` trains, `recommend` ranks the whole catalogue."""

    name = "sasrec"

    def __init__(self, candidates: Sequence[str], config: SASRecConfig | None = None) -> None:
        self.config = config or SASRecConfig()
        self.items = list(candidates)
        self.index = {item: i + 1 for i, item in enumerate(self.items)}
        torch.manual_seed(self.config.seed)
        self.net = SASRecNet(len(self.items), self.config)

    def _encode(self, sequences: Sequence[Sequence[str]], length: int) -> torch.Tensor:
        out = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids = [self.index[i] for i in seq if i in self.index][-length:]
            if ids:
                out[row, length - len(ids) :] = torch.tensor(ids)
        return out

    def fit(
        self, train_sequences: Sequence[Sequence[str]], valid: Sequence[SplitExample], out_dir: Path | None = None
    ) -> dict[str, Any]:
        """Train on each user's training ad sequence; early stopping on `valid` NDCG@10."""
        cfg = self.config
        torch.set_num_threads(min(cfg.torch_threads, 2))
        rng = random.Random(cfg.seed)
        seqs = [s for s in train_sequences if len(s) >= 2]
        if not seqs:
            raise ValueError("SASRec needs training sequences with at least 2 ads")
        data = self._encode([s[-(cfg.max_len + 1) :] for s in seqs], cfg.max_len + 1)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, bad, history = -1.0, None, 0, []
        started = time.perf_counter()
        bar = tqdm(range(cfg.epochs), desc="sasrec", leave=False)
        for epoch in bar:
            self.net.train()
            order = list(range(len(data)))
            rng.shuffle(order)
            total, count = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = data[order[start : start + cfg.batch_size]]
                inputs, targets = batch[:, :-1], batch[:, 1:]
                hidden = self.net(inputs)
                mask = (targets > 0) & (inputs > 0)
                logits = self.net.scores(hidden[mask])
                loss = nn.functional.cross_entropy(logits, targets[mask] - 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * int(mask.sum())
                count += int(mask.sum())
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
            if valid and (epoch + 1) % cfg.eval_every == 0:
                rankings = self.recommend(valid, 10)
                scores = ranking_metrics(rankings, [e.target for e in valid], [10])
                record["valid"] = scores
                if scores["ndcg@10"] > best:
                    best, bad = scores["ndcg@10"], 0
                    best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
                else:
                    bad += 1
            history.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", best=f"{best:.4f}")
            if bad >= cfg.patience:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        metrics = {"epochs": history, "best_valid_ndcg@10": best, "train_seconds": time.perf_counter() - started}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(out_dir / "model.safetensors"))
            (out_dir / "config.json").write_text(self.config.model_dump_json(indent=1))
            (out_dir / "metrics.json").write_text(json.dumps({**metrics, "candidates": self._digest()}, indent=1))
        return metrics

    def _digest(self) -> str:
        return hashlib.blake2b("\n".join(self.items).encode(), digest_size=8).hexdigest()

    def load_fitted(self, out_dir: Path) -> dict[str, Any] | None:
        """The model `fit` saved in `out_dir`, if it was fitted with this config (threads aside) over these
        candidates; its fit metrics, or None (nothing loaded) when there is none or it differs."""
        paths = [out_dir / name for name in ("config.json", "metrics.json", "model.safetensors")]
        if not all(p.exists() for p in paths):
            return None
        saved = SASRecConfig.model_validate_json(paths[0].read_text())
        if saved.model_dump(exclude={"torch_threads"}) != self.config.model_dump(exclude={"torch_threads"}):
            return None
        metrics = json.loads(paths[1].read_text())
        if metrics.get("candidates", self._digest()) != self._digest():
            return None
        state = load_file(str(paths[2]))
        if tuple(state["item_emb.weight"].shape) != tuple(self.net.item_emb.weight.shape):
            return None
        self.net.load_state_dict(state)
        self.net.eval()
        return metrics

    @torch.no_grad()
    def next_probs(self, sequence: Sequence[str]) -> torch.Tensor:
        """[L, candidates]: after each of the last L = min(len, max_len) ads of `sequence`, the probability of every
        candidate being next (row r follows the r-th of those ads). An ad that is no candidate stays in place as
        padding, so rows keep their positions."""
        length = min(len(sequence), self.config.max_len)
        seq = torch.tensor([[self.index.get(a, 0) for a in sequence[len(sequence) - length :]]], dtype=torch.long)
        self.net.eval()
        return torch.softmax(self.net.scores(self.net(seq)[0]), dim=-1)

    @torch.no_grad()
    def last_probs(self, examples: Sequence[SplitExample]) -> torch.Tensor:
        """[len(examples), candidates]: each user's next-ad distribution after their whole history."""
        self.net.eval()
        seq = self._encode([ad_ids(e.history) for e in examples], self.config.max_len)
        return torch.softmax(self.net.scores(self.net(seq)[:, -1]), dim=-1)

    def recommend(self, examples: Sequence[SplitExample], k: int) -> list[list[str]]:
        return top_items(self.last_probs, self.items, examples, k)
