"""Commands: what a caller asks the job use cases to do, as one value each.

The API builds them from its validated request models (`app.api.jobs.submit_command`); the
CLI, bench/ and tests construct them directly. `Intake` is the other half of a submission:
what the submitting process brings (limits, queues, caches, the group-commit writer), built
once per process, not per request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from app.caching import LoadingCache
from app.groupcommit import GroupCommit

DEFAULT_WINDOW_SECONDS = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class SubmitJob:
    """Score `inputs` (records) with `model`. `fingerprint` is the request body's hash, given
    with `idempotency_key` so that a replay with a different body is refused."""

    model: str
    inputs: list[Any]
    metadata: dict[str, Any] | None = None
    priority: int = 0
    webhook_url: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    variant: str | None = None
    completion_window_seconds: float = DEFAULT_WINDOW_SECONDS
    require_gpu: bool = False
    results_expire_after_seconds: float | None = None  # None: the intake's default


@dataclass(frozen=True, slots=True)
class SubmitFileJob:
    """Score the rows of an uploaded file. `queue`, when given, is used as it is instead of
    routing (a retry runs where its parent ran); `parent_id` names the job a retry comes from."""

    model: str
    input_file: str
    output_format: str | None = None
    keep_columns: list[str] | None = None
    id_column: str | None = None
    max_failed_fraction: float = 1.0
    metadata: dict[str, Any] | None = None
    priority: int = 0
    webhook_url: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    variant: str | None = None
    completion_window_seconds: float = DEFAULT_WINDOW_SECONDS
    require_gpu: bool = False
    parent_id: uuid.UUID | None = None
    queue: str | None = None
    results_expire_after_seconds: float | None = None  # None: the intake's default
    extra_options: dict[str, Any] | None = None  # kept in the job's options (e.g. a dialect's)


@dataclass(frozen=True, slots=True)
class DeleteJob:
    """Delete a terminal job's results and files, keeping its row (a tombstone) for usage."""

    job_id: str


@dataclass(frozen=True, slots=True)
class RetryFailedRows:
    """A child job over the rows a finished file job failed."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Intake:
    """What the submitting process brings to every submission, built once per process:
    `queues` is (default queue, gpu queue), None being the publisher's default; `models`
    caches model lookups; `writer`, when given, group-commits new jobs on its own connection
    (committed on return) instead of in the caller's transaction."""

    max_inline_inputs: int = 10_000
    queues: tuple[str | None, str] = (None, "gpu")
    models: LoadingCache | None = None
    writer: GroupCommit | None = None
    result_retention_seconds: float = 0.0  # KILN_RESULT_RETENTION_SECONDS; 0 = kept


IN_SESSION = Intake()  # defaults: jobs written in the caller's transaction, nothing cached


@dataclass(frozen=True, slots=True)
class ReportUsage:
    """A tenant's usage of the jobs it submitted in [start, end) (either open), in total and,
    with `group_by` (`model` or `day`), per group."""

    start: Any = None  # datetime, timezone-aware or UTC
    end: Any = None
    group_by: str | None = None
