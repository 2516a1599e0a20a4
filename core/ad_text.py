"""One text per ad from a fixed template, so the encoder sees every ad (synthetic or real) the same way,
and the `TextEncoder` shape every encoder has (index/ embeds ad texts without knowing which model does it).

The template follows LEADRE: name, product type, first- and second-level category, attributes. Real data
has no product type or attribute list, so the brand, the deepest category and the description stand in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from adgen.core.catalogue import Item

ROOT_CATEGORIES: frozenset[str] = frozenset({"Industrial & Scientific"})
"""Catalogue-wide roots that every item shares; they say nothing about the item, so they are skipped."""

MAX_DESCRIPTION_CHARS = 300
"""MiniLM truncates at 256 word pieces; a long description would crowd out the title and categories."""


def meaningful_categories(item: Item) -> tuple[str, ...]:
    """The item's category path without catalogue-wide roots (e.g. Amazon's 'Industrial & Scientific')."""
    return tuple(c for c in item.categories if c and c not in ROOT_CATEGORIES)


def ad_text(item: Item) -> str:
    """The template text for one ad; empty fields are left out rather than printed as blanks."""
    cats = meaningful_categories(item)
    product_type = item.product_type or (cats[-1] if len(cats) > 2 else "")
    attributes = list(item.attributes)
    if item.brand:
        attributes.insert(0, f"brand {item.brand}")
    parts = [f"The name of the ad is {item.title.strip()}"]
    if product_type:
        parts.append(f"The product type is {product_type}")
    if cats:
        parts.append(f"The first-level category is {cats[0]}")
    if len(cats) > 1:
        parts.append(f"The second-level category is {cats[1]}")
    if attributes:
        parts.append("The attributes include: " + ", ".join(attributes))
    text = "; ".join(p.rstrip(". ") for p in parts) + "."
    description = " ".join(item.description.split())
    if description:
        text += " " + description[:MAX_DESCRIPTION_CHARS]
    return text


class TextEncoder(Protocol):
    """Turns texts into L2-normalised float32 vectors [N, dim] (implemented in model/encoder.py)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray: ...
