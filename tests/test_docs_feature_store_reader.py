"""The plain redis-py reader in docs/feature-store.md works against what the worker's FeatureStore writes."""

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from adgen.core.config import Settings
from adgen.processors.feature_store import AdRecord, FeatureStore, GeneratedAd, UserAds

DOC = Path(__file__).resolve().parents[1] / "docs" / "feature-store.md"
pytestmark = pytest.mark.integration


def _snippet() -> str:
    section = DOC.read_text().split("### Reading without adgen installed", 1)[1]
    return re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)


def test_documented_plain_reader_sees_the_list_and_prefix_similarity(
    runtime_settings: Settings, redis_client: redis.Redis
) -> None:
    now = datetime.now(UTC)
    user_ads = UserAds(
        user_id="u00000018",
        ads=[GeneratedAd(ad_id="ad00000043", sid=[27, 33, 7, 0], score=-2.9)],
        model_version="m",
        index_version="i",
        request_time=now,
        window_fingerprint="f",
        generated_at=now,
    )
    ads = [
        AdRecord(ad_id="ad00000043", status="active", sid=[27, 33, 7, 0], event_time=now),
        AdRecord(ad_id="ad00000077", status="active", sid=[27, 33, 9, 0], event_time=now),
    ]

    async def write() -> None:
        store = FeatureStore(runtime_settings.redis)
        try:
            await store.write_user_ads([user_ads])
            await store.write_ads(ads)
        finally:
            await store.close()

    asyncio.run(write())
    password = runtime_settings.redis.password
    code = _snippet().replace('"redis://127.0.0.1:6379/0", password=None', "URL, password=PASSWORD")
    scope = {"URL": runtime_settings.redis.url, "PASSWORD": password.get_secret_value() if password else None}
    exec(compile(code, str(DOC), "exec"), scope)
    assert [g["ad_id"] for g in scope["generated"]] == ["ad00000043"]
    assert scope["sid_prefix_similarity"] == {"ad00000043": 1.0, "ad00000077": 0.5}
