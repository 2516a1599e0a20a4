"""Training data for the commercial-intention (CI) model, built from the catalogue.

RARE fine-tunes an LLM on CIs written by a stronger LLM. No external LLM is reachable here, so the
"teacher" is the catalogue itself: category paths, brand + category, product type, attribute phrases,
title key phrases and (for the synthetic world) the intents behind its training queries. A user may plug
in any OpenAI-compatible endpoint as an extra source (`OpenAICompatibleCISource`, off by default).

Two stages, as in RARE §3.3:
- knowledge injection: short facts about the catalogue (ad -> category path, ad -> brand, product type ->
  category, CI -> category) so the model learns the domain's vocabulary and structure;
- format fine-tuning: ad text -> one CI and query -> one CI, in the exact prompt format used at inference,
  where beam search over the CI trie turns "one CI per beam" into "several CIs per ad or query".
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import httpx
from pydantic import BaseModel, Field

from adgen.core.ad_text import meaningful_categories
from adgen.core.catalogue import Item
from adgen.search.ci_index import STOPWORDS, CISet, normalise_text

AD_PROMPT = "ad: {text}\nintent:"
QUERY_PROMPT = "query: {text}\nintent:"
FACT_PROMPT = "{subject}: {text}\n{relation}:"

MAX_AD_PROMPT_CHARS = 200
"""The small model reads a short ad text: title, deepest categories, brand, attributes (latency ~ length)."""

_TOKEN = re.compile(r"[a-z][a-z\-]+")


class CIDataError(ValueError):
    """A CI data source that cannot be used (unreachable endpoint, bad answer, empty catalogue)."""


class TextPair(BaseModel):
    """One (prompt, response) training pair in text form; the model tokenises it."""

    prompt: str
    response: str
    stage: str = Field(description="'knowledge' (injection) or 'format' (fine-tuning)")


def ad_prompt_text(item: Item) -> str:
    """The short ad description the CI model reads (same text at training and at inference)."""
    cats = meaningful_categories(item)
    parts = [item.title.strip()]
    if cats:
        parts.append(" > ".join(cats[-2:]))
    if item.product_type:
        parts.append(item.product_type)
    if item.brand:
        parts.append(f"brand {item.brand}")
    parts.extend(item.attributes[:4])
    return " | ".join(p for p in parts if p)[:MAX_AD_PROMPT_CHARS]


def title_key_phrases(title: str, brand: str = "", max_phrases: int = 4) -> list[str]:
    """Content-word bigrams and trigrams of a title, brand and model-number-like tokens removed.

    These approximate what a shopper would type; most are unique to one ad and the cleaning step drops
    them, the ones shared by several ads survive as intentions.
    """
    brand_words = set(normalise_text(brand).split())
    words = [w for w in _TOKEN.findall(normalise_text(title)) if w not in brand_words]
    phrases: list[str] = []
    for n in (2, 3):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS:
                continue
            phrase = " ".join(gram)
            if phrase not in phrases:
                phrases.append(phrase)
    return phrases[:max_phrases]


def item_ci_candidates(item: Item) -> list[str]:
    """Raw CI proposals for one ad from its catalogue fields (not yet normalised or cleaned)."""
    cats = meaningful_categories(item)
    leaf = cats[-1] if cats else ""
    out: list[str] = [*cats[1:]]  # the first level is usually too generic; cleaning drops it anyway
    if item.product_type:
        out.append(item.product_type)
    if item.brand and leaf:
        out.append(f"{item.brand} {leaf}")
    if item.brand and item.product_type:
        out.append(f"{item.brand} {item.product_type}")
    head = item.product_type or leaf
    if head:
        out.extend(f"{attr} {head}" for attr in item.attributes[:4])
    if not item.product_type:  # real catalogues lack a product type; the title is the best stand-in
        out.extend(title_key_phrases(item.title, item.brand))
    return [c for c in out if c.strip()]


def query_split(query_id: str, eval_share: float = 0.5) -> str:
    """'train' or 'eval' by a stable hash, so training never sees the queries the evaluation scores."""
    bucket = int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:4], "big") / 2**32
    return "eval" if bucket < eval_share else "train"


class QueryIntent(BaseModel):
    """A training query: its text, its intent phrase and the ads that match that intent exactly."""

    query_id: str
    text: str
    intent: str = ""
    exact_ads: list[str] = []


def intent_proposals(queries: Iterable[QueryIntent]) -> dict[str, list[str]]:
    """Ad id -> intent phrases of the training queries whose exact intent the ad matches."""
    out: dict[str, list[str]] = {}
    for q in queries:
        if q.intent:
            for ad in q.exact_ads:
                out.setdefault(ad, []).append(q.intent)
    return out


def propose_cis(
    items: Mapping[str, Item],
    queries: Sequence[QueryIntent] = (),
    extra: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """Ad id -> raw CI proposals from every source (catalogue fields, training-query intents, optional LLM)."""
    if not items:
        raise CIDataError("the catalogue is empty: no ads to derive commercial intentions from")
    intents = intent_proposals(queries)
    out: dict[str, list[str]] = {}
    for ad_id, item in items.items():
        out[ad_id] = item_ci_candidates(item) + intents.get(ad_id, []) + list((extra or {}).get(ad_id, []))
    return out


def knowledge_pairs(
    items: Mapping[str, Item], ci_set: CISet, assignment: Mapping[str, Sequence[int]]
) -> list[TextPair]:
    """Stage 1: catalogue facts, so the model knows which words, brands and categories belong together."""
    pairs: list[TextPair] = []
    ci_category: dict[int, Counter[str]] = {}
    for ad_id, item in items.items():
        cats = meaningful_categories(item)
        text = item.title.strip()
        if cats:
            path = " > ".join(cats)
            pairs.append(TextPair(prompt=_fact("ad", text, "category"), response=path, stage="knowledge"))
            for ci in assignment.get(ad_id, ()):
                ci_category.setdefault(ci, Counter())[cats[-1]] += 1
        if item.brand:
            pairs.append(TextPair(prompt=_fact("ad", text, "brand"), response=item.brand, stage="knowledge"))
        if item.product_type and cats:
            pairs.append(
                TextPair(prompt=_fact("product", item.product_type, "category"), response=cats[-1], stage="knowledge")
            )
    for ci, counts in sorted(ci_category.items()):
        pairs.append(
            TextPair(
                prompt=_fact("intent", ci_set.texts[ci], "category"),
                response=counts.most_common(1)[0][0],
                stage="knowledge",
            )
        )
    return _dedup(pairs)


def format_pairs(
    items: Mapping[str, Item],
    ci_set: CISet,
    assignment: Mapping[str, Sequence[int]],
    queries: Sequence[QueryIntent] = (),
    cis_per_ad: int | None = None,
    seed: int = 0,
) -> list[TextPair]:
    """Stage 2: ad -> CI and query -> CI in the inference prompt format (one pair per target CI).

    Query pairs come from the training queries (query text -> the CI of its intent) and from each CI as
    its own query, so a query that *is* an intention maps onto it. `cis_per_ad` caps the (long, costly)
    ad pairs per ad with a seeded sample, to fit the CPU budget.
    """
    rng = random.Random(seed)
    pairs: list[TextPair] = []
    for ad_id, cis in assignment.items():
        item = items.get(ad_id)
        if item is None:
            continue
        prompt = AD_PROMPT.format(text=ad_prompt_text(item))
        chosen = list(cis) if cis_per_ad is None or len(cis) <= cis_per_ad else rng.sample(list(cis), cis_per_ad)
        pairs.extend(TextPair(prompt=prompt, response=ci_set.texts[ci], stage="format") for ci in chosen)
    for ci_text in ci_set.texts:
        pairs.append(TextPair(prompt=QUERY_PROMPT.format(text=ci_text), response=ci_text, stage="format"))
    for q in queries:
        ci = ci_set.id_of(q.intent) if q.intent else None
        if ci is not None:
            pairs.append(
                TextPair(
                    prompt=QUERY_PROMPT.format(text=normalise_text(q.text)), response=ci_set.texts[ci], stage="format"
                )
            )
    return _dedup(pairs)


def _fact(subject: str, text: str, relation: str) -> str:
    return FACT_PROMPT.format(subject=subject, text=text[:MAX_AD_PROMPT_CHARS], relation=relation)


def _dedup(pairs: list[TextPair]) -> list[TextPair]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in pairs:
        key = (p.prompt, p.response)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


class OpenAICompatibleCISource:
    """Optional teacher: any OpenAI-compatible chat endpoint writes CIs for an ad (RARE's data source).

    Off unless a user passes a base URL. Every failure is a CIDataError saying what to check, because a
    silently empty answer would just shrink the CI set.
    """

    SYSTEM = (
        "You write commercial intentions for ads: short search phrases (2-5 words) a shopper would type "
        "when they want this product. Answer with a JSON list of strings only."
    )

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def propose(self, item: Item, n: int = 8) -> list[str]:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": self.SYSTEM},
                {"role": "user", "content": f"Ad: {ad_prompt_text(item)}\nWrite {n} commercial intentions."},
            ],
        }
        try:
            resp = self.client.post(self.url, json=body)
            resp.raise_for_status()
            content = resp.json()["choices"][0]["message"]["content"]
        except httpx.HTTPError as exc:
            raise CIDataError(
                f"CI teacher endpoint {self.url} failed for ad {item.item_id!r}: {exc!r}; "
                "check --llm-url / the server, or build without --llm-url (catalogue-only CIs)"
            ) from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise CIDataError(f"CI teacher endpoint {self.url} returned an unexpected body: {exc!r}") from exc
        match = re.search(r"\[.*\]", content, re.S)
        try:
            values = json.loads(match.group(0)) if match else None
        except ValueError:
            values = None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise CIDataError(
                f"CI teacher answer for ad {item.item_id!r} is not a JSON list of strings: {content[:200]!r}"
            )
        return values[:n]


def intent_phrase(intent: str) -> str:
    """The phrase behind a synthetic-world intent label, e.g. 'attribute_product:LED|floor mats|A>B' ->
    'LED floor mats', 'brand_category:Ferrant|Home>Small Appliances' -> 'Ferrant Small Appliances'.

    A plain phrase (no 'kind:' prefix) is returned as is; an unknown kind gives ''.
    """
    kind, sep, rest = intent.partition(":")
    if not sep:
        return intent
    parts = rest.split("|")
    leaf = parts[-1].split(">")[-1] if parts else ""
    if kind == "product_type":
        return parts[0]
    if kind == "attribute_product" and len(parts) >= 2:
        return f"{parts[0]} {parts[1]}"
    if kind == "brand_category" and len(parts) >= 2:
        return f"{parts[0]} {leaf}"
    if kind == "category":
        return leaf
    return ""


def mine_templates(queries: Iterable[QueryIntent], min_count: int = 2) -> list[str]:
    """Query templates ('top rated {}', '{} near me') mined from training queries that contain their intent.

    Applied to every CI they teach the model how shoppers wrap an intention, without copying any query.
    """
    counts: Counter[str] = Counter()
    for q in queries:
        text, phrase = normalise_text(q.text), normalise_text(q.intent)
        if phrase and f" {phrase} " in f" {text} ":
            before, _, after = f" {text} ".partition(f" {phrase} ")
            counts[f"{before.strip()} {{}} {after.strip()}".strip()] += 1
    return sorted(t for t, n in counts.items() if n >= min_count and t != "{}")


def noisy(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """Typing noise: with probability `rate`, one adjacent swap, drop or doubling inside a longer word."""
    words = text.split()
    long_words = [i for i, w in enumerate(words) if len(w) >= 4]
    if not long_words or rng.random() >= rate:
        return text
    i = rng.choice(long_words)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    op = rng.randrange(3)
    if op == 0:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif op == 1:
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def augmented_query_pairs(
    ci_set: CISet, templates: Sequence[str], per_ci: int = 2, typo_rate: float = 0.3, seed: int = 0
) -> list[TextPair]:
    """Query -> CI pairs: each CI wrapped in `per_ci` mined templates, some with typing noise."""
    rng = random.Random(seed)
    pairs: list[TextPair] = []
    if not templates:
        return pairs
    for ci_text in ci_set.texts:
        for template in rng.sample(list(templates), min(per_ci, len(templates))):
            query = noisy(template.format(ci_text), rng, typo_rate)
            pairs.append(TextPair(prompt=QUERY_PROMPT.format(text=query), response=ci_text, stage="format"))
    return _dedup(pairs)
