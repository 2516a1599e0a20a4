"""Content items (videos, articles) whose titles and categories follow the ad taxonomy, so content
behaviour carries the same interests that later show up in ad clicks (LEADRE's cross-domain signal).
"""

from __future__ import annotations

import bisect
import itertools
import random
from array import array

from adgen.core.catalogue import ContentItem
from adgen.world.taxonomy import SUB_CATEGORIES, SUBS_BY_TOP, TOP_CATEGORIES

_TEMPLATES = (
    "Top 10 {pts} of {year}",
    "{brand} {pt} review: is it worth it?",
    "How to choose the right {pt}",
    "Unboxing the new {brand} {pt}",
    "{n} {attr} {pts} we tested",
    "A beginner's guide to {sub}",
    "{sub} on a budget: {n} tips",
    "Why everyone is talking about {attr} {pts}",
    "{pt} vs {pt2}: which one do you need?",
    "My {sub_lower} setup after one year",
    "{n} mistakes people make when buying a {pt}",
    "Is the {brand} {pt} still the best?",
)


def content_id(index: int, rng: random.Random) -> str:
    return f"{rng.choice(('vid', 'art'))}-{index:07d}"


def _plural(word: str) -> str:
    if word.endswith("shelf"):
        return word[:-1] + "ves"
    if word.endswith("knife set"):
        return word + "s"
    if word.endswith("s"):  # already plural ("hiking boots", "earbuds")
        return word
    if word.endswith(("x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def make_content(seed: int, count: int) -> list[ContentItem]:
    """`count` content items; item i comes from its own seeded RNG."""
    items = []
    for i in range(count):
        rng = random.Random(f"{seed}:content:{i}")
        top = rng.choices(TOP_CATEGORIES, weights=[t.popularity for t in TOP_CATEGORIES])[0]
        sub = SUB_CATEGORIES[rng.choice(SUBS_BY_TOP[top.index])]
        pt, pt2 = rng.sample(sub.product_types, k=2)
        title = rng.choice(_TEMPLATES).format(
            pt=pt,
            pt2=pt2,
            pts=_plural(pt),
            brand=rng.choice(top.brands)[0],
            attr=rng.choice(top.attributes),
            sub=sub.path[1],
            sub_lower=sub.path[1].lower(),
            n=rng.choice((3, 5, 7, 10, 12)),
            year=rng.choice((2025, 2026)),
        )
        items.append(
            ContentItem(content_id=content_id(i, rng), title=title[0].upper() + title[1:], categories=sub.path)
        )
    return items


class ContentSampler:
    """Zipf-weighted content choice within a second-level category (a few items get most plays)."""

    def __init__(self, content: list[ContentItem]) -> None:
        self.content = content
        sub_index = {s.path: s.index for s in SUB_CATEGORIES}
        self.by_sub: list[list[int]] = [[] for _ in SUB_CATEGORIES]
        for i, item in enumerate(content):
            self.by_sub[sub_index[(item.categories[0], item.categories[1])]].append(i)
        self.cumulative = [array("d", itertools.accumulate(1.0 / (r + 1) for r in range(len(m)))) for m in self.by_sub]

    def pick(self, rng: random.Random, sub: int) -> ContentItem | None:
        members = self.by_sub[sub]
        if not members:
            return None
        cumulative = self.cumulative[sub]
        rank = min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(members) - 1)
        return self.content[members[rank]]
