"""DPO for value-aware generation (LEADRE §4.3.2): among two plausible ads, prefer the higher-eCPM one.

TRL is not installed here (and pulls accelerate/datasets), so the loss is the compact DPO objective:
    L = -log sigmoid(beta * [(log pi(c|x) - log ref(c|x)) - (log pi(r|x) - log ref(r|x))])
over S-ID responses. The reference is the policy before DPO, frozen; its log-probabilities are computed
once up front, which is exactly a frozen copy's output at a fraction of the cost.

Pairs: `model` = two of the model's own top candidates for the user (its top 1 and the next candidate
with a different eCPM), `category` = the true next ad and a random ad of the same top category.
chosen = the higher eCPM of the two.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from adgen.core.catalogue import Item, SplitExample
from adgen.model.evaluate import evaluate_recommender, top_category
from adgen.model.lm_training import collate, response_logprobs
from adgen.model.trie_loss import TrieSoftmax

if TYPE_CHECKING:
    from adgen.model.pipeline import Run


@dataclass(frozen=True)
class PreferencePair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_item: str
    rejected_item: str


class DPOConfig(BaseModel):
    out_dir: Path
    beta: float = Field(0.1, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0)
    max_len: int = 256
    seed: int = 0
    torch_threads: int = Field(2, ge=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss and the implicit rewards beta * (log pi - log ref) of chosen and rejected."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    return loss, chosen_reward.detach(), rejected_reward.detach()


def model_pairs(
    ranked: Sequence[Sequence[str]], examples: Sequence[SplitExample], items: Mapping[str, Item]
) -> list[tuple[int, str, str]]:
    """(example index, chosen, rejected) from each user's own top candidates; users without two eCPMs skipped."""
    out = []
    for n, top in enumerate(ranked):
        if not top:
            continue
        first = top[0]
        other = next((c for c in top[1:] if items[c].ecpm != items[first].ecpm), None)
        if other is None:
            continue
        chosen, rejected = (first, other) if items[first].ecpm > items[other].ecpm else (other, first)
        out.append((n, chosen, rejected))
    return out


def category_pairs(
    examples: Sequence[SplitExample], items: Mapping[str, Item], candidates: Sequence[str], seed: int
) -> list[tuple[int, str, str]]:
    """(example index, chosen, rejected): the target vs a random same-category ad, higher eCPM chosen."""
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for item_id in candidates:
        by_cat.setdefault(top_category(items[item_id]), []).append(item_id)
    out = []
    for n, example in enumerate(examples):
        target = items[example.target]
        peers = [i for i in by_cat.get(top_category(target), []) if items[i].ecpm != target.ecpm]
        if not peers:
            continue
        other = rng.choice(peers)
        pair = (example.target, other) if target.ecpm > items[other].ecpm else (other, example.target)
        out.append((n, *pair))
    return out


def _logps(
    model: torch.nn.Module,
    prompts: list[list[int]],
    responses: list[list[int]],
    pad: int,
    max_len: int,
    trie: TrieSoftmax | None = None,
) -> torch.Tensor:
    batch = collate(list(zip(prompts, responses, strict=True)), pad, max_len, trie)
    return response_logprobs(model, batch, trie)


def train_dpo(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    config: DPOConfig,
    trie: TrieSoftmax | None = None,
) -> dict:
    """Train `model` in place with DPO against its own frozen starting point; writes metrics.json.

    `trie`: score responses the way a trie-trained model was trained and is served (among valid siblings).
    """
    if not pairs:
        raise ValueError("no preference pairs: every candidate pair had equal eCPM or no candidates")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id
    torch.set_num_threads(min(config.torch_threads, 2))
    torch.manual_seed(config.seed)
    model.eval()
    with torch.no_grad():  # the frozen reference, evaluated once
        ref_c, ref_r = [], []
        for s in range(0, len(pairs), 64):
            chunk = pairs[s : s + 64]
            ref_c.append(
                _logps(model, [p.prompt_ids for p in chunk], [p.chosen_ids for p in chunk], pad, config.max_len, trie)
            )
            ref_r.append(
                _logps(model, [p.prompt_ids for p in chunk], [p.rejected_ids for p in chunk], pad, config.max_len, trie)
            )
        ref_chosen, ref_rejected = torch.cat(ref_c), torch.cat(ref_r)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    rng = random.Random(config.seed)
    history = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"dpo ep{epoch + 1}", leave=False)
        for s in bar:
            idx = order[s : s + config.batch_size]
            batch = [pairs[i] for i in idx]
            prompts = [p.prompt_ids for p in batch]
            pc = _logps(model, prompts, [p.chosen_ids for p in batch], pad, config.max_len, trie)
            pr = _logps(model, prompts, [p.rejected_ids for p in batch], pad, config.max_len, trie)
            loss, cr, rr = dpo_loss(pc, pr, ref_chosen[idx], ref_rejected[idx], config.beta)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            totals["loss"] += loss.item() * len(idx)
            totals["accuracy"] += float((cr > rr).float().sum())
            totals["margin"] += float((cr - rr).sum())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch + 1, **{k: v / len(pairs) for k, v in totals.items()}})
        tqdm.write("[dpo] " + json.dumps(history[-1]))
    model.eval()
    metrics = {"pairs": len(pairs), "beta": config.beta, "epochs": history, "seconds": time.perf_counter() - started}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def run_dpo(run: Run) -> dict[str, Any]:
    """Pipeline stage: pairs from training users, DPO, then before/after on the test users."""
    from adgen.model.lm import save_lm
    from adgen.model.recipe import save_recipe
    from adgen.model.tasks import select_targets

    cfg = run.cfg.dpo
    out = run.out / "dpo"
    examples = select_targets(run.split.train, reuse_positives=False)
    if cfg.max_users is not None and len(examples) > cfg.max_users:
        examples = random.Random(run.cfg.seed).sample(examples, cfg.max_users)
    before = evaluate_recommender(run.recommender("leadre"), run.test, run.data, run.cfg.eval)
    if cfg.pair_source == "model":
        ranked = run.recommender().recommend(examples, cfg.candidates)
        triples = model_pairs(ranked, examples, run.data.items)
    else:
        triples = category_pairs(examples, run.data.items, sorted(run.data.active_items()), run.cfg.seed)
    b = run.builder
    pairs = [
        PreferencePair(
            b.user_prompt(examples[n].history, run.profiles.get(examples[n].user_id)).ids,
            b.response_ids(c),
            b.response_ids(r),
            c,
            r,
        )
        for n, c, r in triples
    ]
    train = train_dpo(
        run.model,
        run.tok,
        pairs,
        DPOConfig(
            out_dir=out,
            beta=cfg.beta,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            max_len=run.cfg.prompts.max_prompt_tokens + 16,
            seed=run.cfg.seed,
            torch_threads=run.cfg.train.torch_threads,
        ),
        trie=TrieSoftmax(run.training_trie()) if run.recipe.renormalize else None,
    )
    after = evaluate_recommender(run.recommender("leadre+dpo"), run.test, run.data, run.cfg.eval)
    save_lm(run.model, out / "model")
    save_recipe(run.recipe, out / "model")
    report = {"train": train, "before": before, "after": after, "pair_source": cfg.pair_source}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report
