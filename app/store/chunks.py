"""Chunks of file jobs in the store: claim, renew, release, commit, cancel, and dispatch.

A chunk is claimed with a conditional UPDATE that bumps its `attempt` and sets a lease; its
rows go to part files named by attempt, committed with its counts in one fenced statement, so
a re-run never duplicates rows. Dispatch hands out the publishing slots within fair-share limits.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.store.lifecycle import NO_USAGE, Usage

CLAIM_CHUNK = text("""
UPDATE job_chunks c SET status = 'running', attempt = c.attempt + 1, last_error = NULL,
    lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM jobs j
WHERE c.job_id = :job_id AND c.index = :index AND j.id = c.job_id AND j.status = 'running'
  AND (c.status = 'queued' OR (c.status = 'running' AND c.lease_expires_at < now()))
RETURNING c.attempt, c.start_row, c.end_row
""")

RENEW_CHUNK = text("""
UPDATE job_chunks c SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM jobs j
WHERE c.job_id = :job_id AND c.index = :index AND c.attempt = :attempt AND c.status = 'running'
  AND j.id = c.job_id
RETURNING j.status
""")

RELEASE_CHUNK = text("""
UPDATE job_chunks SET lease_expires_at = now(), last_error = :error
WHERE job_id = :job_id AND index = :index AND attempt = :attempt AND status = 'running'
""")

COMMIT_CHUNK = text("""
WITH done AS (
    UPDATE job_chunks SET status = 'succeeded', lease_expires_at = NULL, finished_at = now(),
        completed_count = :completed, failed_count = :failed,
        output_uri = :output_uri, error_uri = :error_uri
    WHERE job_id = :job_id AND index = :index AND attempt = :attempt AND status = 'running'
    RETURNING job_id)
UPDATE jobs SET completed_count = completed_count + :completed,
    failed_count = failed_count + :failed, model_seconds = model_seconds + :model_seconds,
    bytes_in = bytes_in + :bytes_in, bytes_out = bytes_out + :bytes_out
FROM done WHERE jobs.id = done.job_id
RETURNING jobs.id
""")

CANCEL_CHUNK = text("""
UPDATE job_chunks SET status = 'cancelled', lease_expires_at = NULL
WHERE job_id = :job_id AND index = :index AND attempt = :attempt AND status = 'running'
""")

LOCK_TENANT = text("SELECT 1 FROM tenants WHERE id = :tenant_id FOR NO KEY UPDATE")

DISPATCH = text("""
WITH open AS (
    SELECT c.job_id, c.index, c.status = 'queued' AND c.lease_expires_at IS NULL AS held,
           j.status AS job_status, j.created_at, j.options->>'queue' AS queue
    FROM job_chunks c JOIN jobs j ON j.id = c.job_id
    WHERE c.tenant_id = :tenant_id AND c.status IN ('queued', 'running')
      AND j.status IN ('running', 'cancelling')),
in_flight AS (SELECT job_id, count(*) FILTER (WHERE NOT held) AS n FROM open GROUP BY job_id),
picked AS (
    SELECT job_id, index, queue FROM (
        SELECT o.job_id, o.index, o.queue, o.created_at,
               f.n + row_number() OVER (PARTITION BY o.job_id ORDER BY o.index) AS slot
        FROM open o JOIN in_flight f ON f.job_id = o.job_id
        WHERE o.held AND o.job_status = 'running') numbered
    WHERE slot <= :job_window
    ORDER BY slot, created_at, job_id, index
    LIMIT CASE WHEN :tenant_limit > 0
               THEN greatest(:tenant_limit - (SELECT coalesce(sum(n), 0) FROM in_flight), 0) END)
UPDATE job_chunks c SET lease_expires_at = now() + make_interval(secs => :grace_seconds)
FROM picked
WHERE c.job_id = picked.job_id AND c.index = picked.index
  AND c.status = 'queued' AND c.lease_expires_at IS NULL
RETURNING c.job_id, c.index, picked.queue
""")

CANCEL_QUEUED = text("""
UPDATE job_chunks SET status = 'cancelled', lease_expires_at = NULL
WHERE job_id = :job_id AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now()))
""")


def claim_chunk(session: Session, job_id: uuid.UUID, index: int, lease_seconds: float):
    """Take a queued chunk (or one whose lease expired) of a running job: (attempt, start_row,
    end_row), or None."""
    return session.execute(CLAIM_CHUNK, {"job_id": job_id, "index": index,
                                         "lease_seconds": lease_seconds}).first()


def renew_chunk(session: Session, job_id: uuid.UUID, index: int, attempt: int,
                lease_seconds: float) -> str | None:
    """Extend a chunk's lease; returns its job's status, or None when the chunk is no longer
    this attempt's."""
    row = session.execute(RENEW_CHUNK, {"job_id": job_id, "index": index, "attempt": attempt,
                                        "lease_seconds": lease_seconds}).first()
    return None if row is None else row.status


def release_chunk(session: Session, job_id: uuid.UUID, index: int, attempt: int,
                  error: str) -> None:
    """Let a chunk that raised go at once, saying why."""
    session.execute(RELEASE_CHUNK, {"job_id": job_id, "index": index, "attempt": attempt,
                                    "error": error})


def commit_chunk(session: Session, job_id: uuid.UUID, index: int, attempt: int, *,
                 completed: int, failed: int, output_uri: str | None,
                 error_uri: str | None, usage: Usage = NO_USAGE) -> bool:
    """A scored chunk's parts, counts and usage, added to its job's, fenced by attempt: only
    the attempt that commits the chunk counts its rows and their usage."""
    return session.execute(COMMIT_CHUNK, {
        "job_id": job_id, "index": index, "attempt": attempt, "completed": completed,
        "failed": failed, "output_uri": output_uri, "error_uri": error_uri,
        **asdict(usage)}).first() is not None


def cancel_chunk(session: Session, job_id: uuid.UUID, index: int, attempt: int) -> None:
    """A running chunk of a cancelling job stops where it is."""
    session.execute(CANCEL_CHUNK, {"job_id": job_id, "index": index, "attempt": attempt})


def cancel_queued(session: Session, job_id: uuid.UUID) -> None:
    """A job that ends by a cancel takes with it its chunks still waiting, and any whose worker
    died holding it (a late commit of that attempt is fenced off by the chunk's status)."""
    session.execute(CANCEL_QUEUED, {"job_id": job_id})


def dispatch_chunks(session: Session, tenant_id: uuid.UUID, *, job_window: int, tenant_limit: int,
                    grace_seconds: float) -> list[tuple[uuid.UUID, int, str | None]]:
    """Mark the tenant's next chunks to publish, as (job id, index, queue), within both limits.

    At most `job_window` chunks of one file job, and `tenant_limit` (0: no limit) of all the
    tenant's file jobs, are in flight (published or running); the rest are held back, queued
    with no lease, for whoever frees a slot: a finishing chunk, or the reconciler. Publishing a
    few at a time keeps one tenant's huge file from filling the queue ahead of everybody else's
    work. The slots go round the tenant's jobs, fewest in flight first. The tenant's row lock,
    taken in its own statement so that the count below sees the previous holder's commit, makes
    the limits exact. The caller publishes the returned chunks after commit.
    """
    session.execute(LOCK_TENANT, {"tenant_id": tenant_id})
    rows = session.execute(DISPATCH, {"tenant_id": tenant_id, "job_window": job_window,
                                      "tenant_limit": tenant_limit, "grace_seconds": grace_seconds})
    return sorted((r.job_id, r.index, r.queue) for r in rows)
