"""Request and response models of usage (`GET /v1/usage`, a job's `usage`), kept apart from
`app.api.schemas` so that each reads (and changes) on its own."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def iso_only(value: Any) -> Any:
    """ISO 8601, as the schema says: pydantic alone would read `0.5` as Unix seconds."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and NUMBER.match(value)):
        raise ValueError("an ISO 8601 date-time, e.g. 2026-12-01T00:00:00Z")
    return value


class JobUsage(BaseModel):
    """What a job's kept results cost: rows scored (completed and failed), model seconds, the
    bytes of its input rows and of its result and error rows."""

    rows: int
    model_seconds: float
    bytes_in: int
    bytes_out: int


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime | None = Field(default=None, description="ISO 8601; jobs created from then (UTC if no offset).")
    end: datetime | None = Field(default=None, description="ISO 8601; jobs created before then.")
    group_by: Literal["model", "day"] | None = Field(default=None, description="Also sum per model name or per UTC day.")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso_only(cls, value: Any) -> Any:
        return iso_only(value)


class UsageLimits(BaseModel):
    max_queued_rows: int
    max_active_jobs: int
    max_storage_bytes: int
    submits_per_second: float
    submit_burst: int


class UsageCurrent(BaseModel):
    queued_rows: int
    active_jobs: int
    storage_bytes: int


class UsageTotals(BaseModel):
    jobs: int
    rows: int
    failed_rows: int
    model_seconds: float
    bytes_in: int
    bytes_out: int


class UsageGroup(UsageTotals):
    model: str | None = Field(default=None, description="With `group_by=model`.")
    day: date | None = Field(default=None, description="With `group_by=day` (UTC).")


class UsageOut(BaseModel):
    object: Literal["usage"] = "usage"
    tenant: str
    start: datetime | None
    end: datetime | None
    limits: UsageLimits
    current: UsageCurrent
    totals: UsageTotals
    groups: list[UsageGroup] | None = Field(default=None, description="With `group_by`.")
