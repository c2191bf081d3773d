"""File jobs' job-wide phases in the store: validating, starting, finalizing, ending.

Each phase claims the job with a conditional UPDATE that bumps `attempt` and sets a lease, renews
it while it works, and fences every later write with that attempt. A phase that raised lets its
lease go at once and says why (`last_error`), so that a job given up says what went wrong.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.domain.states import JobStatus
from app.orm import File, Job
from app.store import chunks as chunk_store
from app.store.lifecycle import Ended, Outcome, finish
from app.store.transitions import moves

CLAIM_PHASE = text("""
UPDATE jobs SET attempt = attempt + 1, last_error = NULL,
    lease_expires_at = now() + make_interval(secs => :lease_seconds),
    started_at = coalesce(started_at, now())
WHERE id = :job_id AND kind = 'file' AND status = :status
  AND (lease_expires_at IS NULL OR lease_expires_at < now())
RETURNING attempt
""")

RENEW_PHASE = text("""
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
WHERE id = :job_id AND attempt = :attempt AND status = :status
RETURNING status
""")

# A phase that raised lets its lease go at once (the reconciler retries it without waiting a
# lease) and says why, so that a job given up after KILN_MAX_ATTEMPTS names the error.
RELEASE_PHASE = text("""
UPDATE jobs SET lease_expires_at = now(), last_error = :error
WHERE id = :job_id AND attempt = :attempt AND status = :status
""")

START_RUNNING = text("""
UPDATE jobs SET status = 'running', total_count = :total, lease_expires_at = NULL,
    options = CAST(:options AS jsonb), input_file_id = :input_file_id
WHERE id = :job_id AND attempt = :attempt AND status = 'validating'
RETURNING id
""")

INSERT_CHUNKS = text("""
INSERT INTO job_chunks (job_id, index, tenant_id, start_row, end_row, status,
    attempt, completed_count, failed_count, lease_expires_at)
SELECT :job_id, i, :tenant_id, s, e, 'queued', 0, 0, 0, NULL
FROM unnest(CAST(:indexes AS int[]), CAST(:starts AS bigint[]),
            CAST(:ends AS bigint[])) AS v(i, s, e)
ON CONFLICT (job_id, index) DO NOTHING
""")

CHUNK_STATE = text("""
SELECT j.status,
       count(*) FILTER (WHERE c.status IN ('queued', 'running')) AS open_chunks,
       count(*) FILTER (WHERE c.status = 'running' AND c.lease_expires_at >= now())
           AS running_chunks  -- held: a chunk whose worker died runs no more
FROM jobs j LEFT JOIN job_chunks c ON c.job_id = j.id
WHERE j.id = :job_id GROUP BY j.status
""")

CLAIM_FINALIZE = text("""
UPDATE jobs SET status = 'finalizing', attempt = attempt + 1, last_error = NULL,
    lease_expires_at = now() + make_interval(secs => :lease_seconds)
WHERE id = :job_id AND status = 'running' RETURNING attempt
""")

# Finalize records each joined file as it is written, so that an attempt that follows a lost
# lease joins only what is missing.
RECORD_JOINED = text("""
UPDATE jobs SET options = jsonb_set(options, '{joined}',
    coalesce(options->'joined', '{}'::jsonb) || jsonb_build_object(CAST(:kind AS text), CAST(:joined AS jsonb)))
WHERE id = :job_id AND attempt = :attempt AND status = 'finalizing'
RETURNING id
""")


def claim_phase(session: Session, job_id: uuid.UUID, status: str,
                lease_seconds: float) -> int | None:
    """Take the `validating` or `finalizing` phase of a file job when nobody holds it; returns
    the new attempt."""
    row = session.execute(CLAIM_PHASE, {"job_id": job_id, "status": status,
                                        "lease_seconds": lease_seconds}).first()
    return None if row is None else row.attempt


def renew_phase(session: Session, job_id: uuid.UUID, attempt: int, status: str,
                lease_seconds: float) -> str | None:
    """Extend a phase's lease; None when it is no longer this attempt's."""
    row = session.execute(RENEW_PHASE, {"job_id": job_id, "attempt": attempt, "status": status,
                                        "lease_seconds": lease_seconds}).first()
    return None if row is None else row.status


def release_phase(session: Session, job_id: uuid.UUID, attempt: int, status: str,
                  error: str) -> None:
    """Let a phase that raised go at once, saying why."""
    session.execute(RELEASE_PHASE, {"job_id": job_id, "attempt": attempt, "status": status,
                                    "error": error})


@moves("validating->running")
def start_running(session: Session, job: Job, attempt: int, *, total: int,
                  options: dict[str, Any], input_file_id: uuid.UUID,
                  chunks: list[tuple[int, int]]) -> bool:
    """End validation: the job runs with its plan, and its chunks (start row, end row) wait to
    be dispatched. Fenced: only the attempt that owns the phase plans the chunks."""
    moved = session.execute(START_RUNNING, {
        "job_id": job.id, "attempt": attempt, "total": total,
        "options": orjson.dumps(options).decode(), "input_file_id": input_file_id}).first()
    if moved is None:
        return False
    if chunks:
        session.execute(INSERT_CHUNKS, {"job_id": job.id, "tenant_id": job.tenant_id,
                                        "indexes": list(range(len(chunks))),
                                        "starts": [start for start, _ in chunks],
                                        "ends": [end for _, end in chunks]})
    return True


@moves("validating->failed")
def fail_validation(session: Session, job_id: uuid.UUID, attempt: int, code: str,
                    message: str) -> list[Ended]:
    """A file that cannot be scored (unreadable, a missing column) fails the job."""
    return finish(session, [Outcome(job_id, JobStatus.FAILED, (JobStatus.VALIDATING,),
                                    attempt=attempt, error_code=code, error_message=message)])


def chunk_state(session: Session, job_id: uuid.UUID):
    """(status, open_chunks, running_chunks) of a file job, or None."""
    return session.execute(CHUNK_STATE, {"job_id": job_id}).first()


@moves("cancelling->cancelled")
def end_cancelled(session: Session, job_id: uuid.UUID) -> list[Ended]:
    """A cancelling file job whose running chunks have stopped ends, with its queued chunks."""
    chunk_store.cancel_queued(session, job_id)
    return finish(session, [Outcome(job_id, JobStatus.CANCELLED, (JobStatus.CANCELLING,))])


@moves("running->finalizing")
def claim_finalize(session: Session, job_id: uuid.UUID, lease_seconds: float) -> int | None:
    """A running job with no chunk left starts finalizing under a lease; returns the attempt."""
    row = session.execute(CLAIM_FINALIZE, {"job_id": job_id,
                                           "lease_seconds": lease_seconds}).first()
    return None if row is None else row.attempt


def record_joined(session: Session, job_id: uuid.UUID, attempt: int, kind: str,
                  joined: dict[str, Any]) -> bool:
    """Remember a joined output file for later attempts; False when the lease is lost."""
    return session.execute(RECORD_JOINED, {"job_id": job_id, "attempt": attempt, "kind": kind,
                                           "joined": orjson.dumps(joined).decode()}
                           ).first() is not None


@moves("finalizing->succeeded", "finalizing->failed")
def end_finalized(session: Session, job_id: uuid.UUID, attempt: int,
                  written: dict[str, tuple[str, int, str]]) -> str | None:
    """Register the joined files and end the job by its failed fraction, fenced by attempt."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.attempt != attempt or job.status != JobStatus.FINALIZING:
        return None
    fmt = job.options.get("output_format", "jsonl")
    counts = {"results": job.completed_count, "errors": job.failed_count}
    files = {}
    for kind, (uri, size, sha256) in written.items():
        files[kind] = File(tenant_id=job.tenant_id, filename=f"{job_id}-{kind}.{fmt}",
                           format=fmt, purpose="output" if kind == "results" else "errors",
                           bytes=size, sha256=sha256, uri=uri, row_count=counts[kind])
        session.add(files[kind])
    session.flush()
    limit = float(job.options.get("max_failed_fraction", 1.0))
    fraction = job.failed_count / job.total_count if job.total_count else 0.0
    outcome = Outcome(job_id, JobStatus.SUCCEEDED, (JobStatus.FINALIZING,), attempt=attempt,
                      output_file_id=files["results"].id, error_file_id=files["errors"].id)
    if fraction > limit:
        outcome = Outcome(job_id, JobStatus.FAILED, (JobStatus.FINALIZING,), attempt=attempt,
                          output_file_id=files["results"].id, error_file_id=files["errors"].id,
                          error_code="too_many_failed_rows",
                          error_message=f"{job.failed_count} of {job.total_count} rows failed, "
                                        f"more than max_failed_fraction={limit}")
    ended = finish(session, [outcome])
    return ended[0].status if ended else None
