"""Job use cases: submit, read, list, cancel and stream results, always scoped to one tenant."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.domain.states import JobStatus, cancel_target, is_terminal
from app.domain.validation import check_records
from app.errors import (Conflict, DatabaseUnavailable, InvalidInput, NotFound,
                        PayloadTooLarge, ResultsExpired)
from app import tracing
from app.groupcommit import GroupCommit
from app.services.commands import (IN_SESSION, DeleteJob, Intake, RetryFailedRows, SubmitFileJob,
                                   SubmitJob)
from app.orm import Job, JobChunk, JobResult
from app.services.files import get_file
from app.services.auth import Caller, get_owned
from app.services import audit
from app.services.paging import Page, keyset_page
from app.store import jobs as job_store
from app.store.audit import AUDIT_SUBMITTED
from app.store import retention
from app.services.models import ModelRef, resolve_model_ref


class NewJob(SimpleNamespace):
    """A job being submitted: the attributes of `Job` (None unless given), without the ORM's
    instrumentation, which cost the submit path a tenth of a millisecond per request. It is
    written by `insert_jobs` and read like a stored job (`app.presenters.job_summary`)."""

    ATTRIBUTES = tuple(Job.__mapper__.column_attrs.keys())

    def __init__(self, **values: Any):
        super().__init__(**{**dict.fromkeys(self.ATTRIBUTES), **values})


def deadline(window_seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=window_seconds)


def route(model: ModelRef, queues: tuple[str | None, str], require_gpu: bool) -> str | None:
    """The queue a job's messages go to: (default queue, gpu queue)[needs a GPU]; None is the
    publisher's default queue."""
    return queues[1] if require_gpu or model.requires_gpu else queues[0]


def request_fingerprint(body: Any) -> str:
    """A stable hash of a request body, to tell an idempotent retry from a different request."""
    try:
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    except orjson.JSONEncodeError as exc:  # e.g. nested deeper than JSONB and orjson accept
        raise InvalidInput(f"the request cannot be stored: {exc}") from None


def submit(session: Session, caller: Caller, command: SubmitJob | SubmitFileJob,
           intake: Intake = IN_SESSION) -> tuple[Job | NewJob, bool]:
    """`submit_job` or `submit_file_job`, whichever the command asks for."""
    if isinstance(command, SubmitFileJob):
        return submit_file_job(session, caller, command, intake)
    return submit_job(session, caller, command, intake)


def submit_job(session: Session, caller: Caller, command: SubmitJob,
               intake: Intake = IN_SESSION) -> tuple[Job | NewJob, bool]:
    """Validate and record an inline job: through `intake.writer` (committed on return) when
    given, else in `session`'s transaction. Returns the job and whether it was created now."""
    key, fingerprint = command.idempotency_key, command.fingerprint
    if (replayed := _replayed(session, caller, key, fingerprint)) is not None:
        return replayed, False
    inputs = command.inputs
    found = checked_inline(session, caller, command, intake)
    job = NewJob(tenant_id=caller.tenant_id, model_id=found.id, model_name=found.name,
                 kind="inline", status=JobStatus.QUEUED.value, priority=command.priority,
                 total_count=len(inputs), inputs=inputs, job_metadata=command.metadata or {},
                 webhook_url=command.webhook_url, idempotency_key=key,
                 request_hash=fingerprint,
                 options={"model_version": found.version, "variant": found.variant,
                          "queue": route(found, intake.queues, command.require_gpu),
                          **({"max_batch_wait_ms": found.batch_wait_ms}
                             if found.batch_wait_ms is not None else {})},
                 expires_at=deadline(command.completion_window_seconds),
                 results_retention_seconds=results_retention(command, intake))
    return _insert(session, caller, job, key, fingerprint, intake.writer)


def checked_inline(session: Session, caller: Caller, command: SubmitJob,
                   intake: Intake) -> ModelRef:
    """The model of an inline job whose records it can score; else why not (4xx)."""
    inputs = command.inputs
    if not inputs:
        raise InvalidInput("inputs must hold at least one record")
    if len(inputs) > intake.max_inline_inputs:
        raise PayloadTooLarge(f"{len(inputs)} inline records is more than the limit of "
                              f"{intake.max_inline_inputs}; upload a file instead")
    found = resolve_model_ref(session, caller.tenant_id, command.model, intake.models,
                              command.variant)
    errors = check_records(inputs, found.signature)
    if errors:
        first = errors[0]
        raise InvalidInput(first.message, errors=[e.as_dict() for e in errors])
    return found


def results_retention(command: SubmitJob | SubmitFileJob, intake: Intake) -> float | None:
    """Seconds the job's results are kept once it ends: the command's, else the intake's
    default; None (0) keeps them."""
    seconds = command.results_expire_after_seconds
    return (intake.result_retention_seconds if seconds is None else seconds) or None


def submit_file_job(session: Session, caller: Caller, command: SubmitFileJob,
                    intake: Intake = IN_SESSION) -> tuple[Job | NewJob, bool]:
    """Record a job over an uploaded file; a worker validates and chunks it."""
    key, fingerprint = command.idempotency_key, command.fingerprint
    if (replayed := _replayed(session, caller, key, fingerprint)) is not None:
        return replayed, False
    source = get_file(session, caller, command.input_file)
    found = resolve_model_ref(session, caller.tenant_id, command.model, intake.models,
                              command.variant)
    options = {"model_version": found.version, "variant": found.variant,
               "queue": command.queue or route(found, intake.queues, command.require_gpu),
               "output_format": command.output_format or source.format,
               "keep_columns": command.keep_columns or [], "id_column": command.id_column,
               "max_failed_fraction": command.max_failed_fraction,
               "input_format": source.format, **(command.extra_options or {})}
    job = NewJob(tenant_id=caller.tenant_id, model_id=found.id, model_name=found.name,
                 kind="file", status=JobStatus.VALIDATING.value, priority=command.priority,
                 input_file_id=source.id, options=options, job_metadata=command.metadata or {},
                 webhook_url=command.webhook_url, idempotency_key=key,
                 request_hash=fingerprint, parent_id=command.parent_id,
                 expires_at=deadline(command.completion_window_seconds),
                 results_retention_seconds=results_retention(command, intake))
    return _insert(session, caller, job, key, fingerprint, intake.writer)


JOBS = Job.__table__
# The submit hot path's INSERT: every column Postgres does not fill itself, read from one JSON
# array of row objects, so that one statement (and one plan) writes any number of jobs and the
# API encodes each row with one orjson call (0.1 ms less than binding 29 arrays per batch). A
# row whose Idempotency-Key is taken is skipped, not an error.
INSERTED = [(column, Job.__mapper__.get_property_by_column(column).key, str(column.name))
            for column in JOBS.c if column.server_default is None]
_NAMES = ", ".join(f'"{name}"' for _, _, name in INSERTED)
# A row that also carries `app.store.audit.SUBMIT_KEYS` gets its audit event in the same
# statement (so in the same transaction), and only when it was inserted.
INSERT_JOBS = (f"WITH document AS (SELECT %s::jsonb AS rows), "
               f"inserted AS (INSERT INTO {JOBS.name} ({_NAMES}) SELECT {_NAMES} "
               f"FROM jsonb_populate_recordset(NULL::{JOBS.name}, (SELECT rows FROM document)) "
               "ON CONFLICT DO NOTHING "
               "RETURNING id, created_at, tenant_id, model_name, kind, total_count), "
               f"{AUDIT_SUBMITTED} SELECT id, created_at FROM inserted")
CREATED_AT = f"SELECT id, created_at FROM {JOBS.name} WHERE id = ANY(%s)"


def insert_jobs(execute: Callable[[str, Any], Sequence[tuple]],
                rows: Sequence[tuple[uuid.UUID, bytes]]) -> list[datetime | None]:
    """Insert (id, `job_row`) rows in one statement, run by `execute(sql, params) -> rows`.
    Each row's `created_at`, or None where its Idempotency-Key was taken.

    Safe to run twice for the same rows: a row an earlier run inserted is found by its id.
    """
    document = b"[" + b",".join(encoded for _, encoded in rows) + b"]"
    created = dict(execute(INSERT_JOBS, (document.decode(),)))
    if missing := [job_id for job_id, _ in rows if job_id not in created]:
        created.update(execute(CREATED_AT, (missing,)))
    return [created.get(job_id) for job_id, _ in rows]


def insert_jobs_on(conn: psycopg.Connection,
                   rows: Sequence[tuple[uuid.UUID, bytes]]) -> list[datetime | None]:
    """`insert_jobs` on a psycopg connection: the group-commit writer's statement."""
    return insert_jobs(lambda sql, params: conn.execute(sql, params).fetchall(), rows)


def job_row(job: NewJob, audit: dict[str, Any] | None = None) -> tuple[uuid.UUID, bytes]:
    """A new job's id and its columns as one JSON object, for `insert_jobs`, with the `audit`
    keys (`app.services.audit.submit_fields`) when given. Column defaults are applied to the
    job here, so the (transient) job reads as stored; a value JSON cannot hold is the caller's
    422."""
    job.id = job.id or uuid.uuid4()
    values = dict(audit or {})
    for column, attribute, name in INSERTED:
        value = getattr(job, attribute)
        if value is None and column.default is not None:
            value = column.default.arg if column.default.is_scalar else column.default.arg(None)
            setattr(job, attribute, value)
        values[name] = value
    try:
        return job.id, orjson.dumps(values)
    except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson and JSONB accept
        raise InvalidInput(f"a value cannot be stored as JSON: {exc}") from None


def _insert(session: Session, caller: Caller, job: NewJob, idempotency_key: str | None,
            fingerprint: str | None, writer: GroupCommit | None) -> tuple[Job | NewJob, bool]:
    """Write a new job: through `writer` (group commit, committed on return) or in `session`'s
    transaction (committed with it). Its audit event is written by the same statement, and
    its trace context (while tracing is on) is the submitting request's."""
    job.trace_context = tracing.stored_context()
    row = job_row(job, audit.submit_fields(
        caller, "job.retry" if job.parent_id is not None else "job.submit"))
    if writer is None:
        created_at = insert_jobs(lambda sql, params: session.connection().exec_driver_sql(
            sql, params).all(), [row])[0]
    else:
        try:  # psycopg's own errors reach the API's handlers (app.api.problems)
            created_at = writer.run(row)
        except TimeoutError:
            raise DatabaseUnavailable("the job was not recorded in time; retry it") from None
    if created_at is None:  # a concurrent request with the same key won the race
        existing = _by_idempotency_key(session, caller, idempotency_key)
        if existing is None:
            raise Conflict("this Idempotency-Key is being used by a concurrent request")
        return _replay(existing, fingerprint), False
    job.created_at = created_at
    return job, True


def retry_failed_rows(session: Session, caller: Caller, command: RetryFailedRows) -> NewJob:
    """A child job over the parent's failed rows (the worker extracts them from the input),
    recorded in `session`'s transaction."""
    parent = get_job(session, caller, command.job_id)
    if parent.kind != "file" or parent.status not in ("succeeded", "failed"):
        raise Conflict("only a finished file job's failed rows can be retried")
    if not parent.failed_count:
        raise Conflict(f"job {parent.id} has no failed rows")
    if parent.input_file_id is None:
        raise Conflict("the job's input file was deleted")
    options = dict(parent.options)
    job, _ = submit_file_job(session, caller, SubmitFileJob(
        model=f"{parent.model_name}@{options['model_version']}",
        variant=options.get("variant"), input_file=str(parent.input_file_id),
        output_format=options.get("output_format"), keep_columns=options.get("keep_columns"),
        id_column=options.get("id_column"),
        max_failed_fraction=float(options.get("max_failed_fraction", 1.0)),
        metadata=parent.job_metadata, priority=parent.priority, webhook_url=parent.webhook_url,
        parent_id=parent.id, queue=options.get("queue"),
        results_expire_after_seconds=parent.results_retention_seconds or 0))
    return job


def _replayed(session: Session, caller: Caller, key: str | None,
              fingerprint: str | None) -> Job | None:
    """The job an earlier request with this Idempotency-Key created, if the body matches."""
    existing = _by_idempotency_key(session, caller, key) if key else None
    return _replay(existing, fingerprint) if existing is not None else None


def _by_idempotency_key(session: Session, caller: Caller, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == caller.tenant_id,
                                            Job.idempotency_key == key))


def _replay(existing: Job, fingerprint: str | None) -> Job:
    if existing.request_hash != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return existing


def get_job(session: Session, caller: Caller, job_id: str, *, lock: bool = False) -> Job:
    """The caller's job (`lock`: its row held until the transaction ends); a deleted one (a
    tombstone) is not found."""
    job = get_owned(session, caller, Job, job_id, "job", lock=lock)
    if job.deleted_at is not None:
        raise NotFound(f"no job {job_id!r}")
    return job


def results_expired(job: Job) -> bool:
    """Whether the job's results are gone, or due to go at the sweeper's next pass."""
    return job.results_expired_at is not None or (
        job.results_expire_at is not None and job.results_expire_at <= datetime.now(UTC))


def job_with_results(session: Session, caller: Caller, job_id: str) -> Job:
    """`get_job` for reading its results or errors: 410 once they expired."""
    job = get_job(session, caller, job_id)
    if results_expired(job):
        raise ResultsExpired(f"the results of job {job.id} expired at "
                             f"{(job.results_expire_at or job.results_expired_at).isoformat()}",
                             results_expired=True)
    return job


def delete_job(session: Session, caller: Caller, command: DeleteJob) -> uuid.UUID:
    """Delete a terminal job's results, errors, part and output files (their bytes go once the
    request commits, see `app.store.retention`); its row stays as a tombstone for usage."""
    job = get_job(session, caller, command.job_id)
    if not is_terminal(job.status):
        raise Conflict(f"job {job.id} is {job.status}: cancel it, or wait for it to end")
    retention.delete_job(session, job.id)
    audit.record_for(session, caller, "job.delete", "job", job.id)
    return job.id


def list_jobs(session: Session, caller: Caller, *, status: str | None = None,
              model: str | None = None, limit: int = 20,
              after: str | None = None, search: str | None = None) -> Page[Job]:
    """Newest first, one page: the jobs after the job `after` (a deleted one still marks its
    place). `search` is a job id, or text found in the job's metadata."""
    query = select(Job).where(Job.tenant_id == caller.tenant_id, Job.deleted_at.is_(None))
    if search:
        query = query.where(_matching(search.strip()))
    if status:
        query = query.where(Job.status == status)
    if model:
        query = query.where(Job.model_name == model)
    return keyset_page(session, caller, Job, query, after=after, limit=limit, what="job",
                       newest_first=True)


def _matching(search: str):
    try:
        return Job.id == uuid.UUID(search)
    except ValueError:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return cast(Job.job_metadata, Text).ilike(f"%{escaped}%")


def cancel_job(session: Session, caller: Caller, job_id: str) -> Job:
    """Queued jobs end at once; running ones stop at their next batch boundary."""
    # Locked: a chunk's commit adds its counts to the job's row, so the count of running chunks
    # below still holds at the move (a chunk that ended in between would leave a `cancelling`
    # job with no chunk left to end it).
    job = get_job(session, caller, job_id, lock=True)
    target = cancel_target(job.status)
    if target is None:
        if job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
            return job
        raise Conflict(f"job {job.id} is {job.status} and cannot be cancelled")
    if target is JobStatus.CANCELLING and job.kind == "file" and not _running_chunks(session, job):
        target = JobStatus.CANCELLED  # nobody is scoring it: end it now
    previous = job.status
    if target is JobStatus.CANCELLED:
        moved = bool(job_store.cancel_now(session, job.id, job.status))
    else:
        moved = job_store.request_cancel(session, job.id)
    session.refresh(job)
    if not moved:  # the job moved on between the read and the update
        return cancel_job(session, caller, job_id)
    audit.record_for(session, caller, "job.cancel", "job", job.id, was=previous,
                     now=job.status)
    return job


def _running_chunks(session: Session, job: Job) -> int:
    return session.scalar(select(func.count()).select_from(JobChunk).where(
        JobChunk.job_id == job.id, JobChunk.status == "running"))


def iter_result_lines(factory: sessionmaker[Session], job_id: uuid.UUID,
                      page_rows: int = 2000) -> Iterator[bytes]:
    """JSONL, one line per stored result in input order, read in pages with a session per page.

    The caller checks the job belongs to its tenant before streaming starts.
    """
    after = -1
    while True:
        with factory() as session:
            rows = session.execute(
                select(JobResult.index, JobResult.output, JobResult.error)
                .where(JobResult.job_id == job_id, JobResult.index > after)
                .order_by(JobResult.index).limit(page_rows)).all()
        for index, output, error in rows:
            line = {"index": index, "error": error} if error is not None else {"index": index,
                                                                               "output": output}
            yield orjson.dumps(line) + b"\n"
        if len(rows) < page_rows:
            return
        after = rows[-1].index
