"""Versioned event contracts for every input topic (pydantic v2, discriminated by `type`).

Every event carries `schema_version`, an `event_id` (idempotency key) and an aware `event_time`.
Unknown versions, unknown types, wrong types and extra fields are validation errors, never guesses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1
MAX_ID_LEN = 128
MAX_TEXT_LEN = 512
MAX_LIST_LEN = 32

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Text = Annotated[str, Field(max_length=MAX_TEXT_LEN)]


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("event_time must carry a timezone (e.g. 2026-11-22T10:00:00Z)")
    return value.astimezone(UTC)


EventTime = Annotated[datetime, AfterValidator(_aware_utc)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: Id
    event_time: EventTime


class _UserEvent(_Event):
    user_id: Id


class AdClick(_UserEvent):
    type: Literal["ad_click"] = "ad_click"
    ad_id: Id


class AdConversion(_UserEvent):
    type: Literal["ad_conversion"] = "ad_conversion"
    ad_id: Id
    value: float = Field(0.0, ge=0)


class ContentPlay(_UserEvent):
    type: Literal["content_play"] = "content_play"
    content_id: Id
    title: Text = ""
    category: Text = ""


class ContentComplete(_UserEvent):
    type: Literal["content_complete"] = "content_complete"
    content_id: Id
    title: Text = ""
    category: Text = ""


class ContentSearch(_UserEvent):
    type: Literal["content_search"] = "content_search"
    query: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LEN)]


class AdRequest(_UserEvent):
    """The user asked the ad server for ads: the nearline trigger for (re)generation."""

    type: Literal["ad_request"] = "ad_request"
    slot: Annotated[str, Field(max_length=64)] = "default"


class ProfileUpdate(_UserEvent):
    """Profile and value signal (ARPU) for prompts and the priority scheduler."""

    type: Literal["profile_update"] = "profile_update"
    age: int | None = Field(None, ge=0, le=130)
    sex: Annotated[str, Field(max_length=16)] | None = None
    residence: Annotated[str, Field(max_length=64)] | None = None
    education: Annotated[str, Field(max_length=64)] | None = None
    occupation: Annotated[str, Field(max_length=64)] | None = None
    consumption_level: Annotated[str, Field(max_length=16)] | None = None
    arpu: float = Field(0.0, ge=0)


UserBehaviorEvent = Annotated[
    AdClick | AdConversion | ContentPlay | ContentComplete | ContentSearch | AdRequest | ProfileUpdate,
    Field(discriminator="type"),
]


class AdUpsert(_Event):
    type: Literal["ad_upsert"] = "ad_upsert"
    ad_id: Id
    name: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LEN)]
    product_type: Text = ""
    category_path: Annotated[list[Text], Field(min_length=1, max_length=8)]
    brand: Text = ""
    description: Annotated[str, Field(max_length=4096)] = ""
    attributes: Annotated[list[Text], Field(max_length=MAX_LIST_LEN)] = []
    bid: float = Field(0.0, ge=0)
    ecpm: float = Field(0.0, ge=0)
    status: Literal["active", "paused"] = "active"


class AdDelete(_Event):
    type: Literal["ad_delete"] = "ad_delete"
    ad_id: Id


AdUpdateEvent = Annotated[AdUpsert | AdDelete, Field(discriminator="type")]


class SearchQuery(_Event):
    type: Literal["search_query"] = "search_query"
    query_id: Id
    user_id: Id | None = None
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LEN)]


USER_BEHAVIOR_ADAPTER: TypeAdapter[UserBehaviorEvent] = TypeAdapter(UserBehaviorEvent)
AD_UPDATE_ADAPTER: TypeAdapter[AdUpdateEvent] = TypeAdapter(AdUpdateEvent)
SEARCH_QUERY_ADAPTER: TypeAdapter[SearchQuery] = TypeAdapter(SearchQuery)
