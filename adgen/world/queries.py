"""Search queries derived from ads' intents, with graded relevance labels for RARE evaluation.

An intent is what the searcher wants: a second-level category, a brand within a category, a product
type, or an attribute of a product type. The query text is the intent's phrase with paraphrase and
noise (templates, typos). Grades: 2 = ads that satisfy the whole intent; 1 = ads in the intent's
enclosing category (same first-level category for a category intent, same second-level category for
a brand intent, same product type for an attribute intent, same second-level category for a product
type intent); everything else 0 (not listed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from adgen.world.ads import Ad
from adgen.world.taxonomy import SUB_CATEGORIES

INTENT_KINDS = ("category", "brand_category", "product_type", "attribute_product")
_INTENT_WEIGHTS = (0.25, 0.25, 0.3, 0.2)
_PARAPHRASES = (
    "{x}",
    "{x}",
    "best {x}",
    "cheap {x}",
    "{x} deals",
    "buy {x} online",
    "{x} for sale",
    "top rated {x}",
    "{x} near me",
    "{x} 2026",
    "affordable {x}",
    "{x} reviews",
    "good {x} to buy",
)
TYPO_RATE = 0.08


@dataclass(frozen=True, slots=True)
class Intent:
    kind: str
    sub: int
    brand: str = ""
    product_type: str = ""
    attribute: str = ""

    @property
    def phrase(self) -> str:
        sub_name = SUB_CATEGORIES[self.sub].path[1].lower()
        if self.kind == "category":
            return sub_name
        if self.kind == "brand_category":
            return f"{self.brand} {sub_name}"
        if self.kind == "product_type":
            return self.product_type
        return f"{self.attribute} {self.product_type}"

    @property
    def label(self) -> str:
        """Machine-readable intent, e.g. `brand_category:Ridgeline|Sports & Outdoors>Hiking`."""
        path = ">".join(SUB_CATEGORIES[self.sub].path)
        detail = {"category": "", "brand_category": self.brand, "product_type": self.product_type}
        value = detail.get(self.kind, f"{self.attribute}|{self.product_type}")
        return f"{self.kind}:{value + '|' if value else ''}{path}"


def intent_from_ad(rng: random.Random, ad: Ad) -> Intent:
    kind = rng.choices(INTENT_KINDS, weights=_INTENT_WEIGHTS)[0]
    return Intent(
        kind=kind,
        sub=ad.sub,
        brand=ad.brand if kind == "brand_category" else "",
        product_type=ad.product_type if kind in ("product_type", "attribute_product") else "",
        attribute=rng.choice(ad.attributes) if kind == "attribute_product" else "",
    )


def render_query(rng: random.Random, phrase: str) -> str:
    """Paraphrase and add noise the way people type: lower case, templates, the odd swapped letters."""
    text = rng.choice(_PARAPHRASES).format(x=phrase).lower()
    if rng.random() < TYPO_RATE:
        words = text.split()
        candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
        if candidates:
            i = rng.choice(candidates)
            j = rng.randrange(1, len(words[i]) - 2)
            w = words[i]
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
            text = " ".join(words)
    return text


class AdLookup:
    """Ads grouped by second-level category, first-level category and product type (label candidates)."""

    def __init__(self, ads: list[Ad]) -> None:
        self.by_sub: dict[int, list[Ad]] = {}
        self.by_top: dict[int, list[Ad]] = {}
        self.by_product_type: dict[str, list[Ad]] = {}
        for ad in ads:
            self.by_sub.setdefault(ad.sub, []).append(ad)
            self.by_top.setdefault(SUB_CATEGORIES[ad.sub].top_index, []).append(ad)
            self.by_product_type.setdefault(ad.product_type, []).append(ad)

    def relevance(self, intent: Intent) -> dict[str, int]:
        """Graded relevance of every ad for the intent (only grades 1 and 2 are listed)."""
        if intent.kind == "category":
            pool = self.by_top.get(SUB_CATEGORIES[intent.sub].top_index, [])
            return {ad.ad_id: 2 if ad.sub == intent.sub else 1 for ad in pool}
        if intent.kind == "brand_category":
            return {ad.ad_id: 2 if ad.brand == intent.brand else 1 for ad in self.by_sub.get(intent.sub, [])}
        same_type = self.by_product_type.get(intent.product_type, [])
        if intent.kind == "product_type":
            grades = {ad.ad_id: 1 for ad in self.by_sub.get(intent.sub, [])}
            grades.update({ad.ad_id: 2 for ad in same_type})
            return grades
        return {ad.ad_id: 2 if intent.attribute in ad.attributes else 1 for ad in same_type}


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    query_id: str
    text: str
    intent: Intent


def make_queries(seed: int, ads: list[Ad], count: int) -> list[LabelledQuery]:
    """`count` distinct query texts from intents of randomly chosen ads (fewer if texts run out)."""
    rng = random.Random(f"{seed}:queries")
    queries: list[LabelledQuery] = []
    seen: set[str] = set()
    attempts = 0
    while len(queries) < count and attempts < count * 20 and ads:
        attempts += 1
        intent = intent_from_ad(rng, rng.choice(ads))
        text = render_query(rng, intent.phrase)
        if text in seen:
            continue
        seen.add(text)
        queries.append(LabelledQuery(query_id=f"q{len(queries):06d}", text=text, intent=intent))
    return queries
