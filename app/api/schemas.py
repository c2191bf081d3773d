"""Request and response models: one place for validation and the OpenAPI spec."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from flask import has_request_context, request
from flask_openapi3 import FileStorage
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      model_validator)

from app.api.usage_schemas import JobUsage
from app.domain.states import JobStatus


Format = Literal["csv", "jsonl", "parquet"]
# An absolute http(s) URL to a named host, or to an IP literal (which the service refuses unless
# KILN_WEBHOOK_ALLOW_PRIVATE or KILN_WEBHOOK_ALLOWED_HOSTS lets it): the pattern the schema states
# is the one checked. `app.api.spec` narrows it to https, and to names, as the settings do.
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
NAMED_HOST = rf"(?:{LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?"
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IP_HOST = rf"(?:{OCTET}\.){{3}}{OCTET}"  # IPv4 only: IPv6 literals are not taken
PORT = r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
URL_REST = r"(?:/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?(?:\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?$"
WEBHOOK_URL = rf"^https?://(?:{NAMED_HOST}|{IP_HOST}){PORT}{URL_REST}"
NAMED_WEBHOOK_URL = rf"^https?://{NAMED_HOST}{PORT}{URL_REST}"
WebhookUrl = Annotated[str, Field(pattern=WEBHOOK_URL, max_length=2000)]
DEPRECATED = {"deprecated": True}
NO_NUL = r"^[^\x00]*$"  # Postgres stores no NUL character in text
# `name`, `name@alias` or `name@3` (app.domain.onnx_check's NAME and ALIAS, or a version)
MODEL_REF = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}(?:@(?:[a-z][a-z0-9_-]{0,63}|[0-9]{1,9}))?$"
MAX_RETENTION_SECONDS = 100 * 366 * 86400  # a century: past it, dates overflow


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A JSON Schema integer: `3` or `3.0`, never `true` or `"3"` (strict models refuse those).
WholeNumber = Annotated[int, BeforeValidator(_whole)]
RetentionSeconds = Annotated[int, Field(ge=0, le=MAX_RETENTION_SECONDS), BeforeValidator(_whole)]


class SubmitJob(BaseModel):
    """A job: inline `inputs`, or an uploaded `input_file` for bulk scoring."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "oneOf": [{"title": "inline", "required": ["inputs"]},
                  {"title": "file", "required": ["input_file"]}]})

    model: str = Field(min_length=1, max_length=264, pattern=MODEL_REF,
                       description="Model name, e.g. `digits`; `name@alias` or `name@3` for a "
                                   "version.")
    # Absent, not null: exactly one of the two is sent (the schema's `oneOf`).
    inputs: list[Any] = Field(default=None, min_length=1,
                              description="An inline job's records (at most "
                                          "KILN_MAX_INLINE_INPUTS); for `digits`, objects with "
                                          "numeric p0…p63.")
    input_file: str = Field(default=None, description="A file job's input: a file id from "
                                                      "`POST /v1/files`.")
    output_format: Format | None = Field(default=None, description="Default: the input's format.")
    keep_columns: list[str] | None = Field(default=None, description="Input columns to copy to the output.")
    id_column: str | None = Field(default=None, description="Column that identifies a row (default `custom_id` when present, else the row index).")
    max_failed_fraction: float = Field(default=1.0, ge=0, le=1, description="Fail the job when more rows than this fail.")
    metadata: dict[str, Any] | None = Field(default=None, description="Yours, returned as is.")
    priority: WholeNumber = Field(default=0, ge=-100, le=100, description="Higher runs first.")
    webhook_url: WebhookUrl = Field(default=None, description="Called when the job ends.")
    variant: str | None = Field(default=None, min_length=1, max_length=32, pattern=NO_NUL,
                                description="`fp32`, `int8`, `fp16` or `graph`; default: the model version's default.")
    require_gpu: bool = Field(default=False, description="Run on a GPU worker (queue KILN_GPU_QUEUE).")
    completion_window: str = Field(default="24h", pattern=r"^[1-9][0-9]{0,5}[smhd]$",
                                   description="Finish within this (e.g. `90s`, `30m`, `24h`, `7d`), "
                                               "else the job ends `expired`, keeping finished rows.")

    # retention (issue 16)
    results_expire_after_seconds: RetentionSeconds | None = Field(
        default=None, description="Keep results this long after the job ends (0: keep); "
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


UploadFormat = Literal["csv", "jsonl", "parquet", "csv.gz", "jsonl.gz"]
UploadPurpose = Literal["input", "batch"]
FilePurpose = Literal["input", "batch", "output", "errors", "retry_input", "batch_rows"]


class FormModel(BaseModel):
    """A multipart form. flask-openapi3 JSON-decodes every form value (so `0` would arrive as a
    number and `"x"` lose its quotes); a text field gets the text that was sent. A field sent
    more than once is refused (422) rather than read as its first value."""

    @model_validator(mode="before")
    @classmethod
    def _sent_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and has_request_context():
            for name, field in cls.model_fields.items():
                sent = request.form.getlist(name) + request.files.getlist(name)
                if len(sent) > 1:  # a field sent twice is a list, which no field here accepts
                    data[name] = sent
                elif field.annotation is str and name in request.form:
                    data[name] = request.form[name]
        return data


class UploadForm(FormModel):
    file: FileStorage = Field(description="The file; without `format`, its name tells the format: "
                                          "`.csv`, `.jsonl` or `.parquet`, optionally `.gz` "
                                          "(not for Parquet), else 422.")
    purpose: UploadPurpose = Field(default="input", description="`input` for Kiln's file jobs, "
                                                                 "`batch` for the OpenAI dialect.")
    format: UploadFormat = Field(default=None, description="The file's format, whatever "
                                                                  "its name; default: from the "
                                                                  "file name.")
    # retention (issue 16)
    expires_after_seconds: WholeNumber = Field(default=None, ge=0, le=MAX_RETENTION_SECONDS, strict=True, description="Delete the file this long after upload (0: keep); default: the tenant's, else KILN_FILE_RETENTION_SECONDS.")


def resource_id(description: str):
    """A path's id: a UUID (the route's converter hands it over as one; handlers get text)."""
    return Field(description=description, json_schema_extra={"format": "uuid"})


ResourceId = Annotated[str, BeforeValidator(str)]

IdParam = Annotated[uuid.UUID, AfterValidator(str)]  # checked as a UUID, handed on as text


class FilePath(BaseModel):
    file_id: ResourceId = resource_id("The file's id.")


class ListQuery(BaseModel):
    """Every list pages the same way: `limit` items after the item whose id is `after`."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=200, description="Items per page.")
    after: IdParam | None = Field(default=None,
                                  description="The `last_id` of the previous page; an id that is not "
                                          "one of yours (or was deleted) is a 404.")


class LongListQuery(ListQuery):
    """Lists that were not paged before: a default page as long as most of them."""

    limit: int = Field(default=100, ge=1, le=200, description="Items per page.")


class FileQuery(ListQuery):
    purpose: FilePurpose | None = Field(default=None, description="Uploads are `input` or "
                                                                  "`batch`; Kiln writes "
                                                                  "`output`, `errors`, "
                                                                  "`retry_input` and (an OpenAI "
                                                                  "batch's lines as rows) "
                                                                  "`batch_rows`.")


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


class ListPage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    first_id: str | None = Field(description="The first item's id; null on an empty page.")
    last_id: str | None = Field(description="The last item's id: `after` for the next page.")
    has_more: bool = Field(description="Whether a next page exists.")


class FileList(ListPage):
    data: list[FileOut]
    next_cursor: str | None = Field(description="Deprecated: the same as `last_id` when "
                                                "`has_more`.", json_schema_extra=DEPRECATED)


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


class JobList(ListPage):
    data: list[JobOut]
    next_cursor: str | None = Field(description="Deprecated: the same as `last_id` when "
                                                "`has_more`; use `last_id` and `after`.",
                                    json_schema_extra=DEPRECATED)


class JobPath(BaseModel):
    job_id: ResourceId = resource_id("The job's id.")


MAX_WAIT_SECONDS = 30


class WaitQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS,
                        description="Seconds to hold the request until the job ends: the answer "
                                    "comes when it ends or when they pass, whichever is first "
                                    "(at once when the server already holds its "
                                    "`KILN_MAX_WAITING_REQUESTS`). Instead of polling.")


class JobDeleted(BaseModel):  # retention (issue 16)
    id: str
    deleted: Literal[True] = True


class JobQuery(ListQuery):
    status: JobStatus | None = None
    model: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    cursor: IdParam | None = Field(default=None,
                                   description="Deprecated: `next_cursor` of the previous page, "
                                               "the same as `after` (which wins when both are "
                                               "sent).", json_schema_extra=DEPRECATED)
    search: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL,
                               description="A job id, or text found in the job's metadata.")


class ModelOut(BaseModel):
    id: str
    name: str
    version: int
    variant: str
    default: bool = Field(description="Whether jobs that name no variant get this one.")
    format: str
    builtin: bool
    signature: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    aliases: list[str]
    created_at: datetime


class ModelList(ListPage):
    data: list[ModelOut]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = Field(default=None, description="The `X-Request-Id` of the request.")
