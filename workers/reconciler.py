"""The safety net: Postgres is the record, Redis only carries hints.

Re-publishes queued jobs whose message may have been lost, returns jobs whose lease expired to
the queue, and fails jobs that keep killing their worker instead of looping forever.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.queueing.publisher import Publisher
from workers.chunks import dispatch_chunks, record_events

log = logging.getLogger(__name__)

# A job given up says why: the error its last attempt recorded before it let the lease go
# (`phase_failed`), or, when none did, that its worker died holding it (`worker_crashed`).
GIVE_UP = text("""
UPDATE jobs
SET status = CASE WHEN status = 'cancelling' THEN 'cancelled' ELSE 'failed' END,
    finished_at = now(), lease_expires_at = NULL,
    error_code = CASE WHEN status = 'cancelling' THEN error_code
        WHEN last_error IS NOT NULL THEN 'phase_failed' ELSE 'worker_crashed' END,
    error_message = CASE WHEN status = 'cancelling' THEN error_message
        WHEN last_error IS NOT NULL THEN status || ' failed on attempt ' || attempt
            || ' of KILN_MAX_ATTEMPTS: ' || last_error
        ELSE 'the job stopped its worker ' || attempt || ' times (KILN_MAX_ATTEMPTS)' END
WHERE lease_expires_at < now() AND (
      (kind = 'inline' AND status IN ('running', 'cancelling')
       AND (attempt >= :max_attempts OR status = 'cancelling'))
   OR (kind = 'file' AND status IN ('validating', 'finalizing') AND attempt >= :max_attempts))
RETURNING id
""")

GIVE_UP_CHUNKS = text("""
WITH poisoned AS (
    UPDATE job_chunks SET status = 'failed', lease_expires_at = NULL, finished_at = now()
    WHERE status = 'running' AND lease_expires_at < now() AND attempt >= :max_attempts
    RETURNING job_id, index, attempt, last_error)
UPDATE jobs SET status = 'failed', finished_at = now(), lease_expires_at = NULL,
    error_code = CASE WHEN poisoned.last_error IS NULL THEN 'worker_crashed'
                      ELSE 'phase_failed' END,
    error_message = CASE WHEN poisoned.last_error IS NULL
        THEN 'chunk ' || poisoned.index || ' stopped its worker ' || poisoned.attempt
             || ' times (KILN_MAX_ATTEMPTS)'
        ELSE 'chunk ' || poisoned.index || ' failed on attempt ' || poisoned.attempt
             || ' of KILN_MAX_ATTEMPTS: ' || poisoned.last_error END
FROM poisoned
WHERE jobs.id = poisoned.job_id AND jobs.status IN ('running', 'cancelling')
RETURNING jobs.id
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
        OR (j.status IN ('running', 'cancelling') AND NOT EXISTS (
            SELECT 1 FROM job_chunks c WHERE c.job_id = j.id
            AND c.status IN ('queued', 'running'))))
    LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING id, options->>'queue' AS queue
""")

EXPIRE = text("""
UPDATE jobs SET status = 'expired', finished_at = now(), lease_expires_at = NULL,
    error_code = 'expired', error_message = 'the job did not finish within its completion_window'
WHERE expires_at < now()
  AND status IN ('validating', 'queued', 'running', 'cancelling', 'finalizing')
RETURNING id
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


@dataclass
class Report:
    given_up: list = field(default_factory=list)
    requeued: list = field(default_factory=list)
    republished: list = field(default_factory=list)
    chunks: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.given_up or self.requeued or self.republished or self.chunks)


def reconcile_once(session: Session, *, max_attempts: int, grace_seconds: float,
                   limit: int = 5000, chunk_window: int = 4, tenant_chunk_limit: int = 0) -> Report:
    """One pass; the caller commits, then publishes `requeued + republished` and `chunks`.

    Held-back chunks (queued, never published) are not lost: each pass hands the free slots of
    every tenant that has some to them, in tenant order so that passes never deadlock.
    """
    params = {"max_attempts": max_attempts, "grace_seconds": grace_seconds, "limit": limit}
    given_up = [r.id for r in session.execute(EXPIRE, params)]
    given_up += [r.id for r in session.execute(GIVE_UP, params)]
    given_up += [r.id for r in session.execute(GIVE_UP_CHUNKS, params)]
    if given_up:
        record_events(session, given_up)
    return Report(given_up=given_up,
                  requeued=[(r.id, r.queue) for r in session.execute(REQUEUE_EXPIRED, params)],
                  republished=[(r.id, r.queue) for r in session.execute(REPUBLISH_QUEUED, params)]
                  + [(r.id, r.queue) for r in session.execute(NUDGE_FILE_JOBS, params)],
                  chunks=[(r.job_id, r.index, r.queue)
                          for r in session.execute(REQUEUE_CHUNKS, params)]
                  + [chunk for tenant_id in session.scalars(TENANTS_WITH_HELD_CHUNKS, params).all()
                     for chunk in dispatch_chunks(session, tenant_id, job_window=chunk_window,
                                                  tenant_limit=tenant_chunk_limit,
                                                  grace_seconds=grace_seconds)])


def reconcile_and_publish(sessions: sessionmaker[Session], publisher: Publisher, *,
                          max_attempts: int, grace_seconds: float, chunk_window: int = 4,
                          tenant_chunk_limit: int = 0) -> Report:
    with sessions() as session, session.begin():
        report = reconcile_once(session, max_attempts=max_attempts, grace_seconds=grace_seconds,
                                chunk_window=chunk_window, tenant_chunk_limit=tenant_chunk_limit)
    if report.requeued or report.republished:
        publisher.publish_routed(report.requeued + report.republished)
    if report.chunks:
        publisher.publish_chunks(report.chunks)
    if report:
        log.info("reconciler: %d given up, %d requeued, %d republished, %d chunks",
                 len(report.given_up), len(report.requeued), len(report.republished),
                 len(report.chunks))
    return report


class ReconcilerThread(threading.Thread):
    """Runs the reconciler every `interval_seconds` inside a long-lived process."""

    def __init__(self, sessions: sessionmaker[Session], publisher: Publisher, *,
                 interval_seconds: float, max_attempts: int, grace_seconds: float,
                 chunk_window: int = 4, tenant_chunk_limit: int = 0):
        super().__init__(name="kiln-reconciler", daemon=True)
        self.sessions, self.publisher = sessions, publisher
        self.interval, self.max_attempts, self.grace = interval_seconds, max_attempts, grace_seconds
        self.chunk_window, self.tenant_chunk_limit = chunk_window, tenant_chunk_limit
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                reconcile_and_publish(self.sessions, self.publisher,
                                      max_attempts=self.max_attempts, grace_seconds=self.grace,
                                      chunk_window=self.chunk_window,
                                      tenant_chunk_limit=self.tenant_chunk_limit)
            except Exception as exc:  # noqa: BLE001 - Postgres may be down; try next period
                log.warning("reconciler pass failed: %s", exc)
