"""Training data for the commercial-intention (CI) model, built from the catalogue.

RARE fine-tunes an LLM on CIs written by a stronger LLM. No external LLM is reachable here, so the
"teacher" is the catalogue itself: category paths, brand + category, product type, attribute phrases and
title key phrases. A user may plug in any OpenAI-compatible endpoint as an extra source
(`OpenAICompatibleCISource`, off by default). Labelled queries of the *training split only* add
query -> CI pairs (`query_targets`, distant supervision from their judged ads) and the query templates the
augmentation wraps CIs in; they never add CIs.

Two stages, as in RARE §3.3:
- knowledge injection: short facts about the catalogue (ad -> category path, ad -> brand, product type ->
  category, CI -> category) so the model learns the domain's vocabulary and structure;
- format fine-tuning: ad text -> one CI and query -> one CI, in the exact prompt format used at inference,
  where beam search over the CI trie turns "one CI per beam" into "several CIs per ad or query".
"""

from __future__ import annotations

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
from adgen.search.query_log import LoggedQuery

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


class QueryTarget(BaseModel):
    """A training query and the CI it should map to (the CI whose ads best match the query's labels)."""

    text: str
    ci: int
    f1: float


def query_targets(
    queries: Iterable[LoggedQuery],
    ci_set: CISet,
    assignment: Mapping[str, Sequence[int]],
    min_grade: int = 2,
    min_f1: float = 0.5,
) -> list[QueryTarget]:
    """Distant supervision for query -> CI: per training query, the CI whose catalogue ads best match its
    relevant ads (F1 of the two ad sets), if that F1 reaches `min_f1`; ties go to the CI sharing more of
    the query's words, then to the more supported CI.

    Works for any labelled log (no intent labels needed) and touches only the queries it is given, so
    passing the training split alone keeps validation and test labels out of the build.
    """
    ads_of: dict[int, set[str]] = {}
    for ad, cis in assignment.items():
        for ci in cis:
            ads_of.setdefault(ci, set()).add(ad)
    out: list[QueryTarget] = []
    for q in queries:
        relevant = q.relevant(min_grade)
        if not relevant:
            continue
        words = set(q.normalised.split())
        candidates = {ci for ad in relevant for ci in assignment.get(ad, ())}
        best: tuple[float, int, int, int] | None = None
        for ci in candidates:
            ads = ads_of[ci]
            f1 = 2 * len(ads & relevant) / (len(ads) + len(relevant))
            key = (f1, len(words & set(ci_set.texts[ci].split())), ci_set.support[ci], -ci)
            if best is None or key > best:
                best = key
        if best is not None and best[0] >= min_f1:
            out.append(QueryTarget(text=q.normalised, ci=-best[3], f1=best[0]))
    return out


def propose_cis(
    items: Mapping[str, Item],
    extra: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """Ad id -> raw CI proposals from the catalogue fields and an optional LLM teacher.

    Query labels are deliberately not a source: a CI proposed from a labelled query would carry that
    query's judgements into the index, and held-out judgements must not reach the build.
    """
    if not items:
        raise CIDataError("the catalogue is empty: no ads to derive commercial intentions from")
    return {ad_id: item_ci_candidates(item) + list((extra or {}).get(ad_id, [])) for ad_id, item in items.items()}


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
    targets: Sequence[QueryTarget] = (),
    cis_per_ad: int | None = None,
    seed: int = 0,
) -> list[TextPair]:
    """Stage 2: ad -> CI and query -> CI in the inference prompt format (one pair per target CI).

    Query pairs come from the training queries' targets and from each CI as its own query, so a query
    that *is* an intention maps onto it. `cis_per_ad` caps the (long, costly) ad pairs per ad with a
    seeded sample, to fit the CPU budget.
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
    for t in targets:
        pairs.append(TextPair(prompt=QUERY_PROMPT.format(text=t.text), response=ci_set.texts[t.ci], stage="format"))
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


def mine_templates(pairs: Iterable[tuple[str, str]], min_count: int = 2) -> list[str]:
    """Query templates ('top rated {}', '{} near me') mined from (query text, its CI text) pairs of training
    queries whose text contains the CI as whole words.

    Applied to every CI they teach the model how shoppers wrap an intention, without copying any query;
    `strip_template` uses them to find the intention inside a new query.
    """
    counts: Counter[str] = Counter()
    for query, ci_text in pairs:
        text, phrase = normalise_text(query), normalise_text(ci_text)
        if phrase and f" {phrase} " in f" {text} ":
            before, _, after = f" {text} ".partition(f" {phrase} ")
            counts[f"{before.strip()} {{}} {after.strip()}".strip()] += 1
    return sorted(t for t, n in counts.items() if n >= min_count and t != "{}")


def strip_template(normalised_query: str, templates: Sequence[str]) -> str:
    """The query without the longest template that wraps it ('top rated lawn care' -> 'lawn care'), or the
    query itself when no template fits or nothing would be left."""
    best = normalised_query
    text = f" {normalised_query} "
    for template in templates:
        before, _, after = template.partition("{}")
        head, tail = f" {before.strip()} " if before.strip() else " ", f" {after.strip()} " if after.strip() else " "
        if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
            inner = text[len(head) - 1 : len(text) - len(tail) + 1].strip()
            if inner and len(inner) < len(best):
                best = inner
    return best


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
