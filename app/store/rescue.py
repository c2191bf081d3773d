"""The reconciler's statements: find stuck work and rescue it, or give it up with a reason.

Queued jobs whose message may be lost are re-published; jobs and chunks whose lease expired
go back to the queue; work that keeps failing or killing its worker, and jobs past their
completion window, end through `lifecycle.finish`.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.domain.states import JobStatus
from app.store.lifecycle import Ended, Outcome, finish
from app.store.transitions import moves

OVERDUE = text("""
SELECT id, status FROM jobs
WHERE expires_at < now()
  AND status IN ('validating', 'queued', 'running', 'cancelling', 'finalizing')
ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
""")

# A leased job past its last attempt: its worker died holding it (or its phase kept raising).
CRASHED = text("""
SELECT id, status, attempt, last_error FROM jobs
WHERE lease_expires_at < now() AND (
      (kind = 'inline' AND status IN ('running', 'cancelling')
       AND (attempt >= :max_attempts OR status = 'cancelling'))
   OR (kind = 'file' AND status IN ('validating', 'finalizing') AND attempt >= :max_attempts))
LIMIT :limit FOR UPDATE SKIP LOCKED
""")

POISONED_CHUNKS = text("""
UPDATE job_chunks SET status = 'failed', lease_expires_at = NULL, finished_at = now()
WHERE status = 'running' AND lease_expires_at < now() AND attempt >= :max_attempts
RETURNING job_id, index, attempt, last_error
""")

REQUEUE_CHUNKS = text("""
UPDATE job_chunks c
SET status = 'queued', lease_expires_at = now() + make_interval(secs => :grace_seconds)
FROM jobs j
WHERE j.id = c.job_id AND j.status = 'running' AND c.lease_expires_at < now()
  AND ((c.status = 'running' AND c.attempt < :max_attempts) OR c.status = 'queued')
RETURNING c.job_id, c.index, j.options->>'queue' AS queue
""")

TENANTS_WITH_HELD_CHUNKS = text("""
SELECT DISTINCT c.tenant_id FROM job_chunks c JOIN jobs j ON j.id = c.job_id
WHERE c.status = 'queued' AND c.lease_expires_at IS NULL AND j.status = 'running'
ORDER BY c.tenant_id LIMIT :limit
""")

NUDGE_FILE_JOBS = text("""
UPDATE jobs SET published_at = now()
WHERE id IN (
    SELECT j.id FROM jobs j
    WHERE j.kind = 'file' AND coalesce(j.published_at, j.created_at)
          < now() - make_interval(secs => :grace_seconds)
      AND ((j.status IN ('validating', 'finalizing')
            AND (j.lease_expires_at IS NULL OR j.lease_expires_at < now()))
        OR (j.status = 'running' AND NOT EXISTS (
            SELECT 1 FROM job_chunks c WHERE c.job_id = j.id
            AND c.status IN ('queued', 'running')))
        -- no chunk of a cancelling job starts: once none runs (or its worker died holding
        -- it), the job is only waiting to end
        OR (j.status = 'cancelling' AND NOT EXISTS (
            SELECT 1 FROM job_chunks c WHERE c.job_id = j.id AND c.status = 'running'
            AND c.lease_expires_at >= now())))
    LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING id, options->>'queue' AS queue
""")

REQUEUE_EXPIRED = text("""
UPDATE jobs SET status = 'queued', lease_expires_at = NULL, published_at = now()
WHERE kind = 'inline' AND status = 'running' AND lease_expires_at < now()
  AND attempt < :max_attempts
RETURNING id, options->>'queue' AS queue
""")

REPUBLISH_QUEUED = text("""
UPDATE jobs SET published_at = now()
WHERE id IN (SELECT id FROM jobs WHERE status = 'queued'
             AND coalesce(published_at, created_at) < now() - make_interval(secs => :grace_seconds)
             ORDER BY priority DESC, created_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING id, options->>'queue' AS queue
""")

Routed = tuple[uuid.UUID, str | None]


@moves("validating->expired", "queued->expired", "running->expired", "cancelling->expired",
       "finalizing->expired")
def expire_overdue(session: Session, limit: int) -> list[Ended]:
    """Jobs past their completion window end `expired`, whatever they were doing."""
    return finish(session, [
        Outcome(r.id, JobStatus.EXPIRED, (JobStatus(r.status),), error_code="expired",
                error_message="the job did not finish within its completion_window")
        for r in session.execute(OVERDUE, {"limit": limit})])


@moves("running->failed", "validating->failed", "finalizing->failed", "cancelling->cancelled")
def give_up_crashed(session: Session, max_attempts: int, limit: int) -> list[Ended]:
    """Leased jobs out of attempts fail, saying why: the error their last attempt recorded
    (`phase_failed`), or else that their worker died holding them (`worker_crashed`). A
    cancelling job whose worker died ends `cancelled`."""
    outcomes = []
    for r in session.execute(CRASHED, {"max_attempts": max_attempts, "limit": limit}):
        code, message = "worker_crashed", \
            f"the job stopped its worker {r.attempt} times (KILN_MAX_ATTEMPTS)"
        if r.last_error is not None:
            code = "phase_failed"
            message = f"{r.status} failed on attempt {r.attempt} of KILN_MAX_ATTEMPTS: " \
                      f"{r.last_error}"
        outcomes.append(Outcome(r.id, JobStatus.FAILED, (JobStatus(r.status),),
                                error_code=code, error_message=message))
    return finish(session, outcomes)


@moves("running->failed", "cancelling->cancelled")
def give_up_chunks(session: Session, max_attempts: int) -> list[Ended]:
    """A chunk out of attempts fails, and its job with it, saying which chunk and why."""
    outcomes = {}
    for r in session.execute(POISONED_CHUNKS, {"max_attempts": max_attempts}):
        message = f"chunk {r.index} stopped its worker {r.attempt} times (KILN_MAX_ATTEMPTS)"
        if r.last_error is not None:
            message = f"chunk {r.index} failed on attempt {r.attempt} of KILN_MAX_ATTEMPTS: " \
                      f"{r.last_error}"
        outcomes.setdefault(r.job_id, Outcome(
            r.job_id, JobStatus.FAILED, (JobStatus.RUNNING, JobStatus.CANCELLING),
            error_code="worker_crashed" if r.last_error is None else "phase_failed",
            error_message=message))
    return finish(session, outcomes.values())


@moves("running->queued")
def requeue_expired(session: Session, max_attempts: int) -> list[Routed]:
    """Inline jobs whose lease expired go back to the queue, to be published again."""
    return [(r.id, r.queue) for r in session.execute(REQUEUE_EXPIRED,
                                                     {"max_attempts": max_attempts})]


def republish_queued(session: Session, grace_seconds: float, limit: int) -> list[Routed]:
    """Queued jobs not started within the grace period, whose message may be lost."""
    return [(r.id, r.queue) for r in session.execute(
        REPUBLISH_QUEUED, {"grace_seconds": grace_seconds, "limit": limit})]


def nudge_file_jobs(session: Session, grace_seconds: float, limit: int) -> list[Routed]:
    """File jobs with a phase nobody holds (validating, finalizing, or no chunk left to run)."""
    return [(r.id, r.queue) for r in session.execute(
        NUDGE_FILE_JOBS, {"grace_seconds": grace_seconds, "limit": limit})]


def requeue_chunks(session: Session, max_attempts: int,
                   grace_seconds: float) -> list[tuple[uuid.UUID, int, str | None]]:
    """Chunks whose lease expired (running, or published but never started) go back out."""
    return [(r.job_id, r.index, r.queue) for r in session.execute(
        REQUEUE_CHUNKS, {"max_attempts": max_attempts, "grace_seconds": grace_seconds})]


def tenants_with_held_chunks(session: Session, limit: int) -> list[uuid.UUID]:
    """Tenants with chunks held back for a free slot, in a fixed order (no deadlocks)."""
    return list(session.scalars(TENANTS_WITH_HELD_CHUNKS, {"limit": limit}))
