"""Request and response models: one place for validation and the OpenAPI spec."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask_openapi3 import FileStorage
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

from app.api.usage_schemas import JobUsage
from app.domain.states import JobStatus


Format = Literal["csv", "jsonl", "parquet"]


class SubmitJob(BaseModel):
    """A job: inline `inputs`, or an uploaded `input_file` for bulk scoring."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="Model name, e.g. `digits`.")
    inputs: list[Any] | None = Field(default=None,
                                     description="Records; for `digits`, objects with numeric p0…p63.")
    input_file: str | None = Field(default=None, description="A file id from `POST /v1/files`.")
    output_format: Format | None = Field(default=None, description="Default: the input's format.")
    keep_columns: list[str] | None = Field(default=None, description="Input columns to copy to the output.")
    id_column: str | None = Field(default=None, description="Column that identifies a row (default `custom_id` when present, else the row index).")
    max_failed_fraction: float = Field(default=1.0, ge=0, le=1, description="Fail the job when more rows than this fail.")
    metadata: dict[str, Any] | None = Field(default=None, description="Yours, returned as is.")
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first.")
    webhook_url: AnyHttpUrl | None = Field(default=None, description="Called when the job ends.")
    variant: str | None = Field(default=None, min_length=1, max_length=32,
                                description="`fp32`, `int8`, `fp16` or `graph`; default: the model version's default.")
    require_gpu: bool = Field(default=False, description="Run on a GPU worker (queue KILN_GPU_QUEUE).")
    completion_window: str = Field(default="24h", pattern=r"^[1-9][0-9]*[smhd]$",
                                   description="Finish within this (e.g. `90s`, `30m`, `24h`, `7d`), "
                                               "else the job ends `expired`, keeping finished rows.")

    # retention (issue 16)
    results_expire_after_seconds: int | None = Field(
        default=None, ge=0, description="Keep results this long after the job ends (0: keep); "
                                        "default KILN_RESULT_RETENTION_SECONDS; then 410.")

    @property
    def completion_window_seconds(self) -> float:
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        return float(self.completion_window[:-1]) * units[self.completion_window[-1]]

    @model_validator(mode="after")
    def _one_source(self) -> SubmitJob:
        if (self.inputs is None) == (self.input_file is None):
            raise ValueError("send exactly one of `inputs` and `input_file`")
        return self


class FormatQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Format | None = Field(default=None, description="Convert to this format while streaming.")


class UploadForm(BaseModel):
    file: FileStorage
    purpose: str = Field(default="input", max_length=32)
    format: str | None = Field(default=None, description="csv, jsonl or parquet (optionally .gz); default: from the file name")
    # retention (issue 16)
    expires_after_seconds: int | None = Field(default=None, ge=0, description="Delete the file this long after upload (0: keep); default: the tenant's, else KILN_FILE_RETENTION_SECONDS.")


class FilePath(BaseModel):
    file_id: str


class FileQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: str | None = None
    limit: int = Field(default=20, ge=1, le=200)
    after: str | None = Field(default=None, description="`next_cursor` of the previous page.")


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    purpose: str
    filename: str
    format: str
    compression: str | None
    bytes: int
    row_count: int | None
    sha256: str
    created_at: datetime
    expires_at: datetime | None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileOut]
    next_cursor: str | None


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
    variant: str | None = None
    priority: int
    queue: str | None = None
    request_counts: RequestCounts
    metadata: dict[str, Any]
    webhook_url: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None = None
    error: JobError | None
    rows_per_second: float | None = None
    eta_seconds: float | None = None
    input_file: str | None = None
    output_file: str | None = None
    error_file: str | None = None
    output_format: str | None = None
    parent_id: str | None = None
    usage: JobUsage | None = None  # usage (app.api.usage_schemas)
    # retention (issue 16)
    results_expire_at: datetime | None = None
    results_expired: bool = False


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    next_cursor: str | None


class JobPath(BaseModel):
    job_id: str = Field(description="The job's id.")


class JobDeleted(BaseModel):  # retention (issue 16)
    id: str
    deleted: Literal[True] = True


class JobQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    model: str | None = None
    limit: int = Field(default=20, ge=1, le=200)
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page.")
    search: str | None = Field(default=None, min_length=1, max_length=200,
                               description="A job id, or text found in the job's metadata.")


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
    request_id: str | None = Field(default=None, description="The `X-Request-Id` of the request.")
