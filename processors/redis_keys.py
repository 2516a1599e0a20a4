"""Every Redis key adgen writes, in one place: `{namespace}:{env}:...` (docs/feature-store.md lists them all).

User and ad features are read by the ranking service; `ci:*` is the search path's CI index (ids valid per
CI-set version, which `ci:current` names); `search:*` holds answered queries; `{budget}:*` is the generation
budget the workers share. Change a key only together with docs/feature-store.md.

Hash tags (the part in braces) decide the Redis Cluster slot: a user's keys share the tag `{user_id}`, an
ad's `{ad_id}`, a CI-set version's keys `{version}` (its incremental update is one MULTI) and the shared
budget's keys `{budget}` (one Lua script reads and writes all of them). The guarded batch write groups its
keys by slot, so every script call stays within one slot; on a single node the tags are only characters.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from adgen.core.config import RedisSettings


class RedisKeys(BaseModel):
    """The key schema (namespace and env come from RedisSettings)."""

    namespace: str = "adgen"
    env: str = "dev"

    @classmethod
    def of(cls, settings: RedisSettings) -> RedisKeys:
        return cls(namespace=settings.namespace, env=settings.env)

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:{self.env}"

    # -- display path (LEADRE) ----------------------------------------------------------------------------
    def user_ads(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}:ads"

    def user_window(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}:window"

    def ad(self, ad_id: str) -> str:
        return f"{self.prefix}:ad:{{{ad_id}}}"

    def index_current(self) -> str:
        return f"{self.prefix}:index:current"

    # -- search path (RARE) -------------------------------------------------------------------------------
    def ci_current(self) -> str:
        return f"{self.prefix}:ci:current"

    def ci_texts(self, version: str) -> str:
        return f"{self.prefix}:ci:{{{version}}}:texts"

    def ci_ads(self, version: str, ci_id: int) -> str:
        return f"{self.prefix}:ci:{{{version}}}:ads:{ci_id}"

    def ad_cis(self, version: str, ad_id: str) -> str:
        return f"{self.prefix}:ci:{{{version}}}:ad:{ad_id}"

    def search_result(self, query_id: str) -> str:
        return f"{self.prefix}:search:result:{query_id}"

    def search_by_query(self, normalised: str) -> str:
        digest = hashlib.sha1(normalised.encode(), usedforsecurity=False).hexdigest()
        return f"{self.prefix}:search:query:{digest}"

    # -- generation budget shared by every worker (processors/shared_budget.py) ---------------------------
    def budget_bucket(self) -> str:
        return f"{self.prefix}:{{budget}}:bucket"

    def budget_demand(self) -> str:
        return f"{self.prefix}:{{budget}}:demand"

    def budget_served(self) -> str:
        return f"{self.prefix}:{{budget}}:served"
