"""Ads of the synthetic world: text, value (bid, eCPM), lifecycle (added, deleted, eCPM changes) and the
samplers users pick clicked ads from.

eCPM = bid x pCTR x 1000, where pCTR depends on the category, the brand tier and a per-ad quality draw, so
two equally plausible ads for a user can differ clearly in value (what DPO learns to prefer).
"""

from __future__ import annotations

import bisect
import itertools
import random
from array import array
from dataclasses import dataclass, field

from adgen.core.catalogue import Item
from adgen.world.taxonomy import SUB_CATEGORIES, SUBS_BY_TOP, TIERS, TOP_CATEGORIES, compatible

TIER_CTR = (0.9, 1.0, 1.25)
TIER_BID = (0.35, 0.8, 1.6)  # cost per click, in currency units
# Consumption level (low, medium, high) x brand tier: how much a user of that level favours the tier.
TIER_AFFINITY = ((3.0, 1.2, 0.3), (1.0, 2.0, 1.0), (0.4, 1.2, 3.0))
_SERIES = ("Pro", "Lite", "Max", "Air", "Plus", "Classic", "Edge", "One", "X", "Go", "Ultra", "Prime", "Flex", "S2")
_TIER_WORD = ("great-value", "dependable", "premium")


@dataclass(slots=True)
class Ad:
    """One ad and its lifecycle. Times are integer seconds since the epoch."""

    index: int
    ad_id: str
    sub: int
    product_type: str
    brand: str
    tier: int
    attributes: tuple[str, ...]
    series: str
    pctr: float
    bid: float
    ecpm: float
    created: int
    deleted: int | None = None
    ecpm_changes: list[tuple[int, float]] = field(default_factory=list)

    @property
    def category_path(self) -> tuple[str, str]:
        return SUB_CATEGORIES[self.sub].path

    @property
    def name(self) -> str:
        detail = " & ".join(a.capitalize() if i == 0 else a for i, a in enumerate(self.attributes[:2]))
        return f"{self.brand} {self.series} {_title(self.product_type)}, {detail}"

    @property
    def description(self) -> str:
        top, sub = self.category_path
        extra = f" Also {self.attributes[2]}." if len(self.attributes) > 2 else ""
        return (
            f"A {_TIER_WORD[self.tier]} {self.product_type} from {self.brand}: "
            f"{' and '.join(self.attributes[:2])}.{extra} Part of the {sub} range in {top}."
        )

    def is_live(self, ts: int) -> bool:
        return self.created <= ts and (self.deleted is None or ts < self.deleted)

    def upsert_fields(self, ecpm: float) -> dict[str, object]:
        """Payload fields of an AdUpsert event for this ad at the given eCPM (upserts carry the full ad)."""
        return {
            "ad_id": self.ad_id,
            "name": self.name,
            "product_type": self.product_type,
            "category_path": list(self.category_path),
            "brand": self.brand,
            "description": self.description,
            "attributes": list(self.attributes),
            "bid": self.bid,
            "ecpm": ecpm,
            "status": "active",
        }

    def to_item(self) -> Item:
        """Catalogue view at creation (initial eCPM)."""
        return Item(
            item_id=self.ad_id,
            title=self.name,
            description=self.description,
            brand=self.brand,
            categories=self.category_path,
            product_type=self.product_type,
            attributes=self.attributes,
            ecpm=self.ecpm,
        )


def _title(text: str) -> str:
    return " ".join(w if w[0].isupper() or w[0].isdigit() else w.capitalize() for w in text.split())


def ad_id(index: int) -> str:
    return f"ad{index:08d}"


def make_ad(seed: int, index: int, created: int) -> Ad:
    """Ad `index` drawn from its own seeded RNG, so any ad can be rebuilt without the others."""
    rng = random.Random(f"{seed}:ad:{index}")
    top = rng.choices(TOP_CATEGORIES, weights=[t.popularity for t in TOP_CATEGORIES])[0]
    sub = SUB_CATEGORIES[rng.choice(SUBS_BY_TOP[top.index])]
    brand, tier = rng.choice(top.brands)
    wanted = rng.choice((2, 2, 3))
    chosen: list[str] = []
    for attribute in rng.sample(top.attributes, k=len(top.attributes)):
        if len(chosen) < wanted and compatible(attribute, chosen):
            chosen.append(attribute)
    attributes = tuple(chosen)
    pctr = top.base_ctr * TIER_CTR[tier] * rng.lognormvariate(0.0, 0.35)
    bid = round(TIER_BID[tier] * rng.lognormvariate(0.0, 0.3), 2) or 0.01
    return Ad(
        index=index,
        ad_id=ad_id(index),
        sub=sub.index,
        product_type=rng.choice(sub.product_types),
        brand=brand,
        tier=tier,
        attributes=attributes,
        series=rng.choice(_SERIES),
        pctr=pctr,
        bid=bid,
        ecpm=round(bid * pctr * 1000, 4),
        created=created,
    )


@dataclass(frozen=True, slots=True)
class AdLifecycleConfig:
    added_share: float = 0.05
    deleted_share: float = 0.03
    ecpm_change_share: float = 0.10


def make_ads(seed: int, n_initial: int, start: int, end: int, lifecycle: AdLifecycleConfig) -> list[Ad]:
    """Initial ads (live from `start`), ads added during the window, deletions and eCPM changes."""
    ads = [make_ad(seed, i, start) for i in range(n_initial)]
    rng = random.Random(f"{seed}:ad-lifecycle")
    n_added = round(n_initial * lifecycle.added_share)
    for i in range(n_initial, n_initial + n_added):
        ads.append(make_ad(seed, i, rng.randrange(start + 3600, end - 3600)))
    for ad in rng.sample(ads, k=min(len(ads), round(n_initial * lifecycle.deleted_share))):
        ad.deleted = rng.randrange(ad.created + 3600, end)
    for ad in rng.choices(ads, k=round(n_initial * lifecycle.ecpm_change_share)):
        last = ad.deleted if ad.deleted is not None else end
        if last - ad.created <= 7200:
            continue
        when = rng.randrange(ad.created + 3600, last - 1)
        previous = ad.ecpm_changes[-1][1] if ad.ecpm_changes else ad.ecpm
        ad.ecpm_changes.append((when, round(previous * rng.lognormvariate(0.0, 0.3), 4)))
        ad.ecpm_changes.sort()
    return ads


class AdSampler:
    """Weighted ad choice within a second-level category for a user's consumption level.

    Weight = pCTR x tier affinity, so better and tier-matching ads are clicked more: the popularity
    skew that a global-popularity baseline captures, on top of which user interests add signal.
    """

    def __init__(self, ads: list[Ad]) -> None:
        self.ads = ads
        self.by_sub: list[list[int]] = [[] for _ in SUB_CATEGORIES]
        self.by_sub_brand: dict[tuple[int, str], list[int]] = {}
        for ad in ads:
            self.by_sub[ad.sub].append(ad.index)
            self.by_sub_brand.setdefault((ad.sub, ad.brand), []).append(ad.index)
        # cumulative[level][sub]: running sums of pick weights, for bisect sampling
        self.cumulative: list[list[array]] = [
            [
                array("d", itertools.accumulate(ads[i].pctr * TIER_AFFINITY[level][ads[i].tier] for i in members))
                for members in self.by_sub
            ]
            for level in range(len(TIERS))
        ]

    def pick(self, rng: random.Random, sub: int, level: int, ts: int, tries: int = 6) -> Ad | None:
        """A live ad in `sub` at time `ts`, or None if the category has none live."""
        members = self.by_sub[sub]
        if not members:
            return None
        cumulative = self.cumulative[level][sub]
        total = cumulative[-1]
        for _ in range(tries):
            ad = self.ads[members[min(bisect.bisect_right(cumulative, rng.random() * total), len(members) - 1)]]
            if ad.is_live(ts):
                return ad
        return None

    def pick_brand(self, rng: random.Random, sub: int, brand: str, ts: int, tries: int = 4) -> Ad | None:
        members = self.by_sub_brand.get((sub, brand))
        if not members:
            return None
        for _ in range(tries):
            ad = self.ads[rng.choice(members)]
            if ad.is_live(ts):
                return ad
        return None
