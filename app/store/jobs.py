"""Inline jobs in the store: claim, lease, record each batch, renew, requeue, cancel.

The claim reads only the head of each tenant's queue (a skip scan over the tenants with queued
jobs, then each one's share of `max_jobs` from `ix_jobs_queued_by_tenant`), the `max_jobs` jobs
nearest their deadline (urgent ones, and enough to fill the claim when some tenants have few
jobs) and the job its message named, so its cost follows the claim's size, not the backlog's.
Jobs whose lease expired are not searched for here: the reconciler requeues them, and a
redelivered message claims its own job. A search over leases would read every old row version
of the finished jobs in `ix_jobs_active_lease` until vacuum removes them (thousands a second
under load), and a bitmap scan never marks those entries dead.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from app.domain.states import JobStatus
from app.orm import Job, Model
from app.store import chunks as chunk_store
from app.store.lifecycle import NO_USAGE, Ended, Outcome, Usage, finish
from app.store.transitions import moves

CLAIM = text("""
WITH RECURSIVE target AS (SELECT model_id, coalesce(options->>'queue', '') AS queue
                          FROM jobs WHERE id = :job_id),
waiting(tenant_id) AS (  -- tenants with queued jobs of the model: a skip scan of the index
    (SELECT j.tenant_id FROM jobs j
     WHERE j.model_id = (SELECT model_id FROM target) AND j.status = 'queued'
     ORDER BY j.tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id FROM jobs j
            WHERE j.model_id = (SELECT model_id FROM target) AND j.status = 'queued'
              AND j.tenant_id > w.tenant_id
            ORDER BY j.tenant_id LIMIT 1)
    FROM waiting w WHERE w.tenant_id IS NOT NULL),
share AS (SELECT (:max_jobs + count(tenant_id) - 1) / greatest(count(tenant_id), 1) AS jobs
          FROM waiting),
pool AS (  -- each tenant's next jobs, the jobs nearest their deadline, the wanted job
    SELECT head.* FROM waiting w, LATERAL (
        SELECT j.id, j.tenant_id, j.total_count, j.priority, j.created_at, j.expires_at
        FROM jobs j
        WHERE j.model_id = (SELECT model_id FROM target) AND j.tenant_id = w.tenant_id
          AND j.status = 'queued'
        ORDER BY j.priority DESC, j.created_at LIMIT (SELECT jobs FROM share)) head
    UNION
    (SELECT j.id, j.tenant_id, j.total_count, j.priority, j.created_at, j.expires_at FROM jobs j
     WHERE j.model_id = (SELECT model_id FROM target) AND j.status = 'queued'
     ORDER BY j.expires_at LIMIT :max_jobs)
    UNION
    SELECT j.id, j.tenant_id, j.total_count, j.priority, j.created_at, j.expires_at FROM jobs j
    WHERE j.id = :job_id  -- only while claimable: a started one would rank first and fill claims
      AND (j.status = 'queued' OR (j.status = 'running' AND j.lease_expires_at < now()
                                   AND j.attempt < :max_attempts))),
ranked AS (  -- wanted, urgent, then priority; within a priority, by the rows of its tenant so far
    SELECT id, total_count, row_number() OVER (
               ORDER BY id = :job_id DESC,
                        coalesce(expires_at < now() + make_interval(secs => :urgent_seconds),
                                 false) DESC,
                        priority DESC, tenant_rows, created_at, id) AS position
    FROM (SELECT *, sum(total_count) OVER (PARTITION BY tenant_id, priority
                                           ORDER BY created_at, id) AS tenant_rows
          FROM pool) p
    ORDER BY position LIMIT :max_jobs),
candidates AS (
    SELECT j.id, r.total_count, r.position FROM ranked r JOIN jobs j ON j.id = r.id
    WHERE j.id = ANY(ARRAY(SELECT id FROM ranked))  -- by primary key, whatever the statistics
      AND j.model_id = (SELECT model_id FROM target) AND j.kind = 'inline'
      AND coalesce(j.options->>'queue', '') = (SELECT queue FROM target)
      AND j.status IN ('queued', 'running')  -- (so no index on leases can serve this)
      AND (j.status = 'queued' OR (j.lease_expires_at < now() AND j.attempt < :max_attempts))
    ORDER BY r.position
    FOR UPDATE OF j SKIP LOCKED),
budgeted AS (
    SELECT id, position FROM (
        SELECT id, position, sum(total_count) OVER (ORDER BY position) - total_count AS rows_before
        FROM candidates) c
    WHERE rows_before < :row_budget
)
SELECT j.id, j.tenant_id, j.attempt + 1 AS attempt, j.model_id, j.inputs, j.total_count,
       b.position, j.attempt = 0 AND j.published_at IS NULL AS fresh, j.trace_context
FROM jobs j JOIN budgeted b ON j.id = b.id
""")

# A claim too large (or too suspect) to score inside its own transaction: each job is leased
# and committed as running with its new attempt, then scored batch by batch.
START_LEASES = text("""
UPDATE jobs j
SET status = 'running', attempt = j.attempt + 1,
    lease_expires_at = now() + make_interval(secs => :lease_seconds),
    started_at = coalesce(j.started_at, now()), completed_count = 0, failed_count = 0,
    model_seconds = 0, bytes_in = 0, bytes_out = 0
WHERE j.id = ANY(CAST(:ids AS uuid[]))
""")

# One statement per batch records the progress of the jobs the batch does not complete, and its
# usage, fenced by attempt (one row version per job per batch); the jobs it completes end
# through `finish`.
RECORD_PROGRESS = text("""
UPDATE jobs j
SET completed_count = j.completed_count + v.completed,
    failed_count = j.failed_count + v.failed,
    model_seconds = j.model_seconds + v.model_seconds,
    bytes_in = j.bytes_in + v.bytes_in, bytes_out = j.bytes_out + v.bytes_out,
    lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM jsonb_to_recordset(CAST(:counts AS jsonb))
     AS v(id uuid, attempt int, completed int, failed int, model_seconds float8, bytes_in bigint,
          bytes_out bigint)
WHERE j.id = v.id AND j.attempt = v.attempt AND j.status IN ('running', 'cancelling')
RETURNING j.id, j.status, j.attempt
""")

# Results as one JSON document in one statement: a re-run's rows replace the earlier attempt's.
WRITE_RESULTS = text("""
INSERT INTO job_results (job_id, index, tenant_id, attempt, output, error)
SELECT job_id, index, tenant_id, attempt, output, error
FROM jsonb_to_recordset(CAST(:results AS jsonb))
     AS r(job_id uuid, index int, tenant_id uuid, attempt int, output jsonb, error jsonb)
ON CONFLICT (job_id, index) DO UPDATE
SET output = excluded.output, error = excluded.error, attempt = excluded.attempt
""")

RENEW = text("""
UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
WHERE j.id = v.id AND j.attempt = v.attempt AND j.status IN ('running', 'cancelling')
""")

# Any small inline job waiting on a queue: the partial indexes hold only queued jobs, and the
# first match ends the scan (the claim that follows ranks the model's jobs properly).
WAITING_SMALL = text("""
SELECT id, model_id FROM jobs
WHERE status = 'queued' AND kind = 'inline' AND total_count <= :max_rows
  AND coalesce(options->>'queue', '') = :queue
  AND (CAST(:model_id AS uuid) IS NULL OR model_id = CAST(:model_id AS uuid))
LIMIT 1
""")

REQUEST_CANCEL = text("""
UPDATE jobs SET status = 'cancelling' WHERE id = :job_id AND status = 'running' RETURNING id
""")


@dataclass(frozen=True)
class Tally:
    """Rows of one job scored by `attempt`, and what scoring them cost."""

    attempt: int
    completed: int
    failed: int
    usage: Usage = NO_USAGE

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.attempt, self.completed + other.completed, self.failed + other.failed,
                     self.usage + other.usage)

    @property
    def rows(self) -> int:
        return self.completed + self.failed


@dataclass
class ClaimedJob:
    id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    model_id: uuid.UUID
    inputs: list[Any]
    total: int
    fresh: bool = False  # first try: never leased, never re-published
    trace_context: str | None = None  # the submit's, linked from the model calls it shares


def lock_inline(session: Session, job_id: uuid.UUID, *, max_jobs: int, row_budget: int,
                max_attempts: int, urgent_seconds: float = 600) -> list[ClaimedJob]:
    """Lock `job_id` (if still claimable) and other waiting inline jobs of the same model, for
    the rest of the session's transaction; nothing is written yet.

    Tenants take turns: within a priority, the jobs come in order of how many rows their tenant
    has queued ahead of them, so one tenant's flood of jobs cannot fill every claim. The jobs are
    returned in that order, and scored in it. Each carries the attempt its writes will carry.
    """
    rows = session.execute(CLAIM, {"job_id": job_id, "max_jobs": max_jobs, "row_budget": row_budget,
                                   "max_attempts": max_attempts,
                                   "urgent_seconds": urgent_seconds}).all()
    return [ClaimedJob(r.id, r.tenant_id, r.attempt, r.model_id, r.inputs or [], r.total_count,
                       r.fresh, r.trace_context)
            for r in sorted(rows, key=lambda r: r.position)]


@moves("queued->running")
def start_leases(session: Session, jobs: Sequence[ClaimedJob], lease_seconds: float) -> None:
    """Mark locked jobs running under a lease, with their new attempt (commit to publish it)."""
    if jobs:
        session.execute(START_LEASES, {"ids": [j.id for j in jobs], "lease_seconds": lease_seconds})


@moves("queued->running")
def claim_inline(session: Session, job_id: uuid.UUID, *, max_jobs: int, row_budget: int,
                 lease_seconds: float, max_attempts: int,
                 urgent_seconds: float = 600) -> list[ClaimedJob]:
    """`lock_inline`, then lease every job it locked: the claim of jobs scored over several
    transactions."""
    jobs = lock_inline(session, job_id, max_jobs=max_jobs, row_budget=row_budget,
                       max_attempts=max_attempts, urgent_seconds=urgent_seconds)
    start_leases(session, jobs, lease_seconds)
    return jobs


def renew_leases(session: Session, held: dict[uuid.UUID, int], lease_seconds: float) -> None:
    """Extend the leases of the jobs a worker holds, each fenced by its attempt."""
    session.execute(RENEW, {"ids": list(held), "attempts": list(held.values()),
                            "lease_seconds": lease_seconds})


def write_results(session: Session, rows: list[dict[str, Any]]) -> None:
    """Store result rows `{job_id, index, tenant_id, attempt, output, error}`, replacing any an
    earlier attempt wrote for the same (job, index)."""
    if rows:
        session.execute(WRITE_RESULTS, {"results": orjson.dumps(rows).decode()})


@moves("queued->succeeded", "running->succeeded")
def finish_claimed(session: Session, counts: dict[uuid.UUID, Tally]) -> list[Ended]:
    """End jobs scored inside the transaction that locked them, each with its rows and usage;
    every row was scored, so each one succeeds, with the attempt that ran it."""
    return finish(session, [Outcome(job_id, JobStatus.SUCCEEDED,
                                    (JobStatus.QUEUED, JobStatus.RUNNING),
                                    claim_attempt=tally.attempt, completed=tally.completed,
                                    failed=tally.failed, usage=tally.usage)
                            for job_id, tally in counts.items()])


@moves("running->succeeded", "cancelling->cancelled")
def record_batch(session: Session, progress: dict[uuid.UUID, Tally],
                 completing: dict[uuid.UUID, Tally],
                 lease_seconds: float) -> tuple[set[uuid.UUID], list[Ended]]:
    """One batch of leased jobs: add `progress` (this batch's rows and usage) to the jobs it does
    not complete, end the jobs in `completing` (the attempt's totals), and end the jobs whose
    cancel was requested. Returns the ids still owned, and the jobs that ended."""
    owned: set[uuid.UUID] = set()
    cancelled: list[Outcome] = []
    if progress:
        document = [{"id": job_id, "attempt": t.attempt, "completed": t.completed,
                     "failed": t.failed, **asdict(t.usage)} for job_id, t in progress.items()]
        for row in session.execute(RECORD_PROGRESS, {"counts": orjson.dumps(document).decode(),
                                                     "lease_seconds": lease_seconds}):
            owned.add(row.id)
            if row.status == JobStatus.CANCELLING:
                cancelled.append(Outcome(row.id, JobStatus.CANCELLED, (JobStatus.CANCELLING,),
                                         attempt=row.attempt))
    ended = finish(session, cancelled + [
        Outcome(job_id, JobStatus.SUCCEEDED, (JobStatus.RUNNING, JobStatus.CANCELLING),
                attempt=t.attempt, completed=t.completed, failed=t.failed, usage=t.usage)
        for job_id, t in completing.items()])
    return owned | {job.id for job in ended}, ended


@moves("queued->cancelled", "validating->cancelled", "running->cancelled")
def cancel_now(session: Session, job_id: uuid.UUID, current: str) -> list[Ended]:
    """End a job nobody is scoring (queued, validating, or a file job with no running chunk),
    and its chunks still waiting."""
    chunk_store.cancel_queued(session, job_id)
    return finish(session, [Outcome(job_id, JobStatus.CANCELLED, (JobStatus(current),))])


@moves("running->cancelling")
def request_cancel(session: Session, job_id: uuid.UUID) -> bool:
    """Ask whoever scores a running job to stop at its next batch."""
    return session.execute(REQUEST_CANCEL, {"job_id": job_id}).first() is not None


def waiting_small_job(session: Session, queue: str | None, max_rows: int,
                      model_id: uuid.UUID | None = None):
    """(id, model id) of one queued inline job of at most `max_rows` rows on `queue` (of
    `model_id`, if given), or None."""
    return session.execute(WAITING_SMALL, {"queue": queue or "", "max_rows": max_rows,
                                           "model_id": model_id}).first()


def message_target(session: Session, job_id: uuid.UUID):
    """What a task needs to route a message: (kind, status, model processing, model id, queue),
    or None for a job that no longer exists."""
    return session.execute(
        select(Job.kind, Job.status, Model.processing, Job.model_id, Job.options["queue"].astext)
        .join(Model, Model.id == Job.model_id).where(Job.id == job_id)).first()


def trace_context(session: Session, job_id: uuid.UUID) -> str | None:
    """The trace context the job was submitted in (`app.tracing.stored_context`), if any."""
    return session.scalar(select(Job.trace_context).where(Job.id == job_id))


def forget_file(session: Session, file_id: uuid.UUID) -> None:
    """A deleted file is no longer any job's input, output or error file."""
    for column in (Job.input_file_id, Job.output_file_id, Job.error_file_id):
        session.execute(update(Job).where(column == file_id).values({column: None}))
