"""What determines a synthetic world: the same `WorldConfig` gives byte-identical files."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WorldConfig(BaseModel):
    """Sizes, seed, time window and the shares of ad-lifecycle updates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(1000, ge=1, le=100_000_000)
    ads: int = Field(500, ge=1, le=20_000_000)
    seed: int = 0
    days: int = Field(60, ge=2, le=3650)
    start: datetime = Field(datetime(2026, 9, 1, tzinfo=UTC), description="Aware start of the event window.")
    content: int | None = Field(None, ge=1, description="Content items; default max(200, ads // 2).")
    queries: int = Field(1000, ge=0, description="Labelled search queries (fewer if distinct texts run out).")
    min_events: int = Field(20, ge=1)
    max_events: int = Field(80, ge=1)
    added_share: float = Field(0.05, ge=0, le=1)
    deleted_share: float = Field(0.03, ge=0, le=1)
    ecpm_change_share: float = Field(0.10, ge=0, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> WorldConfig:
        if self.min_events > self.max_events:
            raise ValueError(f"min_events ({self.min_events}) must not exceed max_events ({self.max_events})")
        if self.start.tzinfo is None:
            raise ValueError("start must carry a timezone, e.g. 2026-09-01T00:00:00Z")
        return self

    @property
    def content_count(self) -> int:
        return self.content if self.content is not None else max(200, self.ads // 2)
