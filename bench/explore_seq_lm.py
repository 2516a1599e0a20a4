"""Exploration harness behind docs/data/amazon-full/exploration/*.json (issue 13): a decoder-only LM over S-ID
(+ optional item words) sequences, every position trained per pass, on the full Amazon Scientific data.

    .venv/bin/python bench/explore_seq_lm.py --text none --collab 1.0 --epochs 24 --eval_every 4 \
        --rdrop 0.2 --adrop 0.1 --drop 0.2 --tie 1 --out docs/data/amazon-full/exploration/e5_tiereg.json

Each JSON keeps its arguments (`args`), per-epoch validation history and the final full-validation metrics. It
reads validation users only (e1 and e2 were run by an earlier version that also printed test; their `test` field is
kept as it was read, and no setting was chosen by it). The levers it measured were then built into the pipeline
(prompts.layout=sequence, train.scoring=trie, sids.collaborative, train.*_dropout): configs/amazon_full.yaml.
Scratch code, kept so the committed figures can be regenerated; the pipeline (`adgen train`) is the product.
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from adgen.core.ad_text import ad_text, meaningful_categories
from adgen.core.catalogue import leave_one_out
from adgen.datasets import load_amazon
from adgen.index.ad_index import build_ad_index
from adgen.index.rqvae import RQVAEConfig
from adgen.index.semantic_ids import sid_tokens, sid_vocabulary
from adgen.model.decoding import ConstrainedBeamSearch
from adgen.model.encoder import CachedEncoder, load_encoder
from adgen.model.metrics import ranking_metrics
from adgen.model.tokenizer import SOFT_PROMPT_TOKEN, build_tokenizer, token_offset

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=0)
p.add_argument("--levels", type=int, default=3)
p.add_argument("--k", type=int, default=64)
p.add_argument("--collab", type=float, default=0.0, help="weight of collaborative part in S-ID embedding")
p.add_argument("--text", default="none", choices=["none", "cat", "title", "cattitle"])
p.add_argument("--title_words", type=int, default=6)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--heads", type=int, default=4)
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--wd", type=float, default=0.1)
p.add_argument("--drop", type=float, default=0.1)
p.add_argument("--rdrop", type=float, default=0.0)
p.add_argument("--adrop", type=float, default=0.0)
p.add_argument("--ls", type=float, default=0.0)
p.add_argument("--max_items", type=int, default=50)
p.add_argument("--beams", type=int, default=20)
p.add_argument("--eval_every", type=int, default=2)
p.add_argument("--val_users", type=int, default=100000)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--ex", type=int, default=0, help="explicit alignment examples per item per epoch")
p.add_argument("--tie", type=int, default=0)
p.add_argument("--item_tok", type=int, default=0, help="1: each history event also carries its own item-id token")
p.add_argument("--crop", type=float, default=0.0)
p.add_argument("--norm", default="children", choices=["full", "children"])
p.add_argument("--out", default="/tmp/exp/out.json")
a = p.parse_args()
torch.set_num_threads(a.threads)
random.seed(a.seed)
np.random.seed(a.seed)
torch.manual_seed(a.seed)
T0 = time.time()
data = load_amazon(Path(__file__).resolve().parents[1] / "../shared/datasets/amazon-scientific")
split = leave_one_out(data, 3)
items = sorted(data.items)
seqs = {e.user_id: [h.ref for h in e.history] for e in split.valid}  # train part: items[:-2]
# ---- embeddings
enc = CachedEncoder(load_encoder("all-MiniLM-L6-v2"), Path("var/cache/embeddings"))
text_emb = enc.encode([ad_text(data.items[i]) for i in items], progress=False)
text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
emb = text_emb
if a.collab > 0:
    idx = {it: n for n, it in enumerate(items)}
    N = len(items)
    C = np.zeros((N, N), np.float32)
    for s in seqs.values():
        ids = [idx[x] for x in s]
        for i in range(len(ids)):
            for j in range(max(0, i - 3), min(len(ids), i + 4)):
                if i != j:
                    C[ids[i], ids[j]] += 1.0 / abs(i - j)
    tot = C.sum()
    row = C.sum(1, keepdims=True) + 1e-9
    col = C.sum(0, keepdims=True) + 1e-9
    pmi = np.log(np.maximum(C * tot / (row * col), 1e-12))
    ppmi = np.where(C > 0, np.maximum(pmi, 0), 0).astype(np.float32)
    U, S, Vt = np.linalg.svd(ppmi, full_matrices=False)
    cf = U[:, :64] * np.sqrt(S[:64])
    cf /= np.linalg.norm(cf, axis=1, keepdims=True) + 1e-9
    emb = np.concatenate([text_emb, a.collab * cf], 1).astype(np.float32)
print(f"emb {emb.shape} {time.time() - T0:.0f}s", flush=True)
rq = RQVAEConfig.sized_for(len(items), emb.shape[1], num_levels=a.levels, codebook_size=a.k, epochs=100, seed=a.seed)
index, report = build_ad_index(
    [data.items[i] for i in items], emb, rq, Path(f"/tmp/exp/rq_{a.seed}_{a.levels}_{a.k}_{a.collab}"), progress=False
)
sid_map = index.sid_map
print(
    "sids",
    report.codebook_sizes,
    "collision",
    round(report.collision_rate, 3),
    "max",
    report.max_collisions,
    f"{time.time() - T0:.0f}s",
    flush=True,
)
# ---- tokenizer
vocab = sid_vocabulary(sid_map.codebook_sizes)
corpus = []
for it in data.items.values():
    corpus.append(" ".join([it.title, it.brand, *it.categories]))
    corpus.append(it.description[:300])
corpus += ["Predict the next ad this user will click.", "click^"] * 1000
tok = build_tokenizer(corpus, vocab, 4096, 2)
off = token_offset(tok, vocab)
enc_cache = {}


def encode(t):
    if t not in enc_cache:
        enc_cache[t] = tok(t, add_special_tokens=False).input_ids
    return enc_cache[t]


def sid_ids(it):
    sid = sid_map.sid_of(it)
    return tok.convert_tokens_to_ids(sid_tokens(sid))


def item_text(it):
    item = data.items[it]
    cats = meaningful_categories(item)
    if a.text == "cat":
        return " " + (cats[-1] if cats else "")
    t = " ".join(item.title.split()[: a.title_words])
    if a.text == "title":
        return " " + t
    if a.text == "cattitle":
        return " " + (cats[-1] if cats else "") + ": " + t
    return ""


trie, leaf = sid_map.trie_arrays(off)
indptr, ctok, cnode = trie.indptr.numpy(), trie.child_token.numpy(), trie.child_node.numpy()
nsid = len(vocab)
num_nodes = len(indptr) - 1
C = int(max(indptr[1:] - indptr[:-1]))
child_tab = np.full((num_nodes, C), -1, np.int64)
for nd in range(num_nodes):
    ch = ctok[indptr[nd] : indptr[nd + 1]] - off
    child_tab[nd, : len(ch)] = ch
child_tab_t = torch.from_numpy(child_tab)
# parent node of every (token position) of an item's S-ID: walk the trie
tok2node = {}


def path_nodes(sid_tok_ids):
    nd, out = 0, []
    for t in sid_tok_ids:
        out.append(nd)
        a, b = indptr[nd], indptr[nd + 1]
        j = np.nonzero(ctok[a:b] == t)[0]
        nd = int(cnode[a + j[0]]) if len(j) else -1
    return out


item_nodes = {it: path_nodes(sid_ids(it)) for it in items}
item_token = {it: len(tok) + n for n, it in enumerate(items)}  # ids past the tokenizer: input-only item tokens
head = [tok.bos_token_id, *encode(SOFT_PROMPT_TOKEN + " Predict the next ad this user will click.")]


def build(seq, with_last_text=True):
    ids, lab = list(head), [-100] * len(head)
    for _n, it in enumerate(seq):
        s = sid_ids(it)
        ids += s
        lab += [t + 1_000_000 * (nd + 1) for t, nd in zip(s, item_nodes[it], strict=False)]
        if a.item_tok:
            ids.append(item_token[it])
            lab.append(-100)
        if a.text != "none":
            t = encode(item_text(it))
            ids += t
            lab += [-100] * len(t)
    return ids, lab


def prompt(seq):
    return build(seq[-a.max_items :])[0]


train_seqs = [s[-a.max_items :] for s in seqs.values() if len(s) >= 1]
train = [build(s) for s in train_seqs]
ntok = sum(len(x) for x, _ in train)
print(f"train seqs {len(train)} tokens {ntok} mean {ntok / len(train):.1f}", flush=True)


# explicit alignment: text -> sid
def ex_example(it):
    item = data.items[it]
    t = encode(
        SOFT_PROMPT_TOKEN
        + " Ad: "
        + " ".join(item.title.split()[:16])
        + " | "
        + " > ".join(meaningful_categories(item)[:3])
        + " ID:"
    )
    s = sid_ids(it)
    return [tok.bos_token_id, *t, *s], [-100] * (1 + len(t)) + [
        x + 1_000_000 * (nd + 1) for x, nd in zip(s, item_nodes[it], strict=False)
    ]


# ---- model
cfg = LlamaConfig(
    vocab_size=len(tok) + (len(items) if a.item_tok else 0),
    hidden_size=a.hidden,
    intermediate_size=4 * a.hidden,
    num_hidden_layers=a.layers,
    num_attention_heads=a.heads,
    max_position_embeddings=1024,
    pad_token_id=tok.pad_token_id,
    bos_token_id=tok.bos_token_id,
    eos_token_id=tok.eos_token_id,
    tie_word_embeddings=bool(a.tie),
    attention_dropout=a.adrop,
)
model = LlamaForCausalLM(cfg)
if a.rdrop > 0:

    def _hook(mod, inp, out):
        return torch.nn.functional.dropout(out, a.rdrop, mod.training)

    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(_hook)
        layer.mlp.down_proj.register_forward_hook(_hook)
print("params", sum(p.numel() for p in model.parameters()), flush=True)
decay = [p for p in model.parameters() if p.dim() >= 2]
nodecay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0}], lr=a.lr, betas=(0.9, 0.98)
)
steps_per_epoch = math.ceil(len(train) / a.bs) + (math.ceil(len(items) * a.ex / a.bs) if a.ex else 0)
total = steps_per_epoch * a.epochs
warm = int(0.05 * total)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda s: (
        (s + 1) / warm
        if s < warm
        else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1, (s - warm) / max(1, total - warm))))
    ),
)
drop = torch.nn.Dropout(a.drop)


def batches(examples, rng):
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for st in range(0, len(order), a.bs * 50):
        chunk = sorted(order[st : st + a.bs * 50], key=lambda i: len(examples[i][0]))
        out += [chunk[i : i + a.bs] for i in range(0, len(chunk), a.bs)]
    rng.shuffle(out)
    return out


def collate(rows):
    w = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), w), tok.pad_token_id)
    lab = torch.full((len(rows), w), -100)
    m = torch.zeros((len(rows), w), dtype=torch.long)
    for i, (x, lbl) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(lbl)] = torch.tensor(lbl)
        m[i, : len(x)] = 1
    return ids, lab, m


val_ex = [e for e in split.valid]
vrng = random.Random(123)
val_sub = sorted(vrng.sample(val_ex, min(a.val_users, len(val_ex))), key=lambda e: e.user_id)


def evaluate(examples):
    model.eval()
    search = ConstrainedBeamSearch(model, max_batch_prompts=64)
    prompts = [prompt([h.ref for h in e.history]) for e in examples]
    res = search.generate(prompts, trie, 10, beams=a.beams, renormalize=a.norm == "children")
    recs = [[leaf[v] for v, _ in r] for r in res]
    model.train()
    return ranking_metrics(recs, [e.target for e in examples], [1, 5, 10])


hist = []
best, best_state = -1, None
rng = random.Random(a.seed)
model.train()
for ep in range(a.epochs):
    t = time.time()
    exs = list(train)
    if a.crop > 0:
        crng = random.Random(a.seed * 1000 + ep)
        exs = [
            build(sq[crng.randrange(0, len(sq) - 1) :]) if len(sq) > 2 and crng.random() < a.crop else ex
            for sq, ex in zip(train_seqs, train, strict=False)
        ]
    if a.ex:
        exs += [ex_example(it) for it in items for _ in range(a.ex)]
    tl, tn = 0.0, 0
    for b in tqdm(batches(exs, rng), desc=f"ep{ep + 1}", leave=False, mininterval=5):
        ids, lab, m = collate([exs[i] for i in b])
        x = drop(model.get_input_embeddings()(ids))
        h = model.model(inputs_embeds=x).last_hidden_state  # right padding + causal: no mask needed
        tgt = lab[:, 1:]
        sel = tgt != -100
        enc_t = tgt[sel]
        tok_t = enc_t % 1_000_000
        node_t = enc_t // 1_000_000 - 1
        hs = model.model.norm(h[:, :-1][sel]) if False else h[:, :-1][sel]
        if a.norm == "full":
            logits = model.lm_head(hs)
            target = tok_t
        else:
            block = hs @ model.lm_head.weight[off : off + nsid].T  # [T, nsid]
            cand = child_tab_t[node_t]  # [T, C]
            logits = block.gather(1, cand.clamp(min=0)).masked_fill(cand < 0, float("-inf"))
            target = (cand == (tok_t - off)[:, None]).float().argmax(1)
        loss = torch.nn.functional.cross_entropy(logits, target, label_smoothing=a.ls)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tl += loss.item() * int(sel.sum())
        tn += int(sel.sum())
    rec = {"epoch": ep + 1, "loss": tl / tn, "secs": time.time() - t}
    if (ep + 1) % a.eval_every == 0 or ep + 1 == a.epochs:
        t2 = time.time()
        v = evaluate(val_sub)
        rec["val"] = v
        rec["eval_secs"] = time.time() - t2
        if v["ndcg@10"] > best:
            best = v["ndcg@10"]
            best_state = {k: x.clone() for k, x in model.state_dict().items()}
            rec["best"] = True
    hist.append(rec)
    print(json.dumps(rec), flush=True)
model.load_state_dict(best_state)
t2 = time.time()
full_val = evaluate(val_ex)
if a.beams != 50:
    a.beams = 50
    full_val_b50 = evaluate(val_ex)
    print(json.dumps({"full_val_beam50": full_val_b50}), flush=True)
out = {
    "args": vars(a),
    "history": hist,
    "full_val": full_val,
    "total_s": time.time() - T0,
    "final_eval_s": time.time() - t2,
}
print(json.dumps({"full_val": full_val, "total_s": out["total_s"]}), flush=True)
Path(a.out).write_text(json.dumps(out, indent=1))
