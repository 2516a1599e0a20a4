"""The reader snippets of docs/feature-store.md, and one user's list written the way the worker writes it: shared
by the tests that run a documented reader against a single node and against a cluster."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from adgen.core.config import RedisSettings
from adgen.processors.feature_store import AdRecord, FeatureStore, GeneratedAd, UserAds

DOC = Path(__file__).resolve().parents[1] / "docs" / "feature-store.md"
USER, AD, AD_SID = "u00000018", "ad00000043", [27, 33, 7, 0]


def python_snippet(heading: str) -> str:
    """The first ```python block after `heading` in docs/feature-store.md."""
    section = DOC.read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)


def write_user_list(redis: RedisSettings, now: datetime, extra_ads: Sequence[AdRecord] = ()) -> None:
    """USER's generated list (AD alone) and AD's live record, plus `extra_ads`, through the worker's FeatureStore."""
    user_ads = UserAds(
        user_id=USER,
        ads=[GeneratedAd(ad_id=AD, sid=AD_SID, score=-2.9)],
        model_version="m",
        index_version="i",
        request_time=now,
        window_fingerprint="f",
        generated_at=now,
    )

    async def write() -> None:
        store = FeatureStore(redis)
        try:
            await store.write_user_ads([user_ads])
            await store.write_ads([AdRecord(ad_id=AD, status="active", sid=AD_SID, event_time=now), *extra_ads])
        finally:
            await store.close()

    asyncio.run(write())
