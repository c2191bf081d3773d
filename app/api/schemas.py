"""Request and response models: one place for validation and the OpenAPI spec."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from app.domain.states import JobStatus


class SubmitJob(BaseModel):
    """An inline job: records scored by one model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="Model name, e.g. `digits`.")
    inputs: list[Any] = Field(description="Records; for `digits`, objects with numeric p0…p63.")
    metadata: dict[str, Any] | None = Field(default=None, description="Yours, returned as is.")
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first.")
    webhook_url: AnyHttpUrl | None = Field(default=None, description="Called when the job ends.")


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class JobError(BaseModel):
    code: str
    message: str | None


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: str
    status: JobStatus
    model: str
    model_version: int | None
    priority: int
    request_counts: RequestCounts
    metadata: dict[str, Any]
    webhook_url: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    next_cursor: str | None


class JobPath(BaseModel):
    job_id: str = Field(description="The job's id.")


class JobQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    model: str | None = None
    limit: int = Field(default=20, ge=1, le=200)
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page.")


class ModelOut(BaseModel):
    id: str
    name: str
    version: int
    variant: str
    format: str
    builtin: bool
    signature: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    aliases: list[str]
    created_at: datetime


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
