"""The plain redis-py reader in docs/feature-store.md works against what the worker's FeatureStore writes."""

from datetime import UTC, datetime

import pytest
import redis
from feature_store_docs import AD, DOC, python_snippet, write_user_list

from adgen.core.config import Settings
from adgen.processors.feature_store import AdRecord

pytestmark = pytest.mark.integration


def test_documented_plain_reader_sees_the_list_and_prefix_similarity(
    runtime_settings: Settings, redis_client: redis.Redis
) -> None:
    now = datetime.now(UTC)
    write_user_list(
        runtime_settings.redis, now, [AdRecord(ad_id="ad00000077", status="active", sid=[27, 33, 9, 0], event_time=now)]
    )
    password = runtime_settings.redis.password
    snippet = python_snippet("### Reading without adgen installed")
    code = snippet.replace('"redis://127.0.0.1:6379/0", password=None', "URL, password=PASSWORD")
    scope = {"URL": runtime_settings.redis.url, "PASSWORD": password.get_secret_value() if password else None}
    exec(compile(code, str(DOC), "exec"), scope)
    assert [g["ad_id"] for g in scope["generated"]] == [AD]
    assert scope["sid_prefix_similarity"] == {AD: 1.0, "ad00000077": 0.5}
