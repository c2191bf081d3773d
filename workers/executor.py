"""Run inline jobs: claim a batch of jobs in one statement, score their rows together, write fenced.

Small jobs for the same model are coalesced: the worker that receives any one of them locks
every queued job of that model it can (up to a row budget) with `FOR UPDATE SKIP LOCKED`, so
per-job overhead (claim, write, status) is paid once per batch rather than once per job.

A small claim of first-try jobs (one model call, `KILN_TUNING__SINGLE_TRANSACTION_ROWS`) is scored and
finished inside the transaction that locked it: one row version and one commit for the whole
run. Any other claim leases its jobs (running, a new attempt, a lease the `LeaseKeeper` renews)
and commits that first, then writes each batch fenced by attempt.

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

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.domain.batching import batches, run_isolated
from app.errors import describe_error
from app.services.webhooks import NOTIFY_SQL, record_ended_jobs

log = logging.getLogger(__name__)

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
    WHERE j.id = :job_id),
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
       b.position, j.attempt = 0 AND j.published_at IS NULL AS fresh
FROM jobs j JOIN budgeted b ON j.id = b.id
""")

# A claim too large (or too suspect) to score inside its own transaction: each job is leased
# and committed as running with its new attempt, then scored batch by batch (`execute_jobs`).
START_LEASES = text("""
UPDATE jobs j
SET status = 'running', attempt = j.attempt + 1,
    lease_expires_at = now() + make_interval(secs => :lease_seconds),
    started_at = coalesce(j.started_at, now()), completed_count = 0, failed_count = 0
WHERE j.id = ANY(CAST(:ids AS uuid[]))
""")

# One statement per batch records every job's progress and ends the jobs that this batch
# completed (or whose cancel was requested), fenced by attempt: one row version per job per batch.
# The batch's numbers come as one JSON document (one orjson call, not an escaped text array per
# column), and the ended jobs come back with what `record_ended_jobs` needs.
RECORD_PROGRESS = text(f"""
UPDATE jobs j
SET completed_count = j.completed_count + v.completed,
    failed_count = j.failed_count + v.failed,
    status = CASE WHEN j.status = 'cancelling' THEN 'cancelled'
                  WHEN j.completed_count + j.failed_count + v.completed + v.failed
                       >= j.total_count THEN 'succeeded'
                  ELSE j.status END,
    finished_at = CASE WHEN j.status = 'cancelling'
                            OR j.completed_count + j.failed_count + v.completed + v.failed
                               >= j.total_count THEN now() END,
    lease_expires_at = CASE WHEN j.status = 'cancelling'
                                 OR j.completed_count + j.failed_count + v.completed + v.failed
                                    >= j.total_count THEN NULL
                            ELSE now() + make_interval(secs => :lease_seconds) END
FROM jsonb_to_recordset(CAST(:counts AS jsonb))
     AS v(id uuid, attempt int, completed int, failed int)
WHERE j.id = v.id AND j.attempt = v.attempt AND j.status IN ('running', 'cancelling')
RETURNING j.id, j.status, j.status IN ('succeeded', 'cancelled') AS ended,
          {NOTIFY_SQL} AS notify
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

# The whole run of jobs scored inside the transaction that locked them (`finish_in_transaction`):
# every row is scored, so each job ends here; a re-run replaces what an earlier attempt counted.
FINISH = text(f"""
UPDATE jobs j
SET status = 'succeeded', attempt = v.attempt, completed_count = v.completed,
    failed_count = v.failed, started_at = coalesce(j.started_at, now()),
    finished_at = statement_timestamp(), lease_expires_at = NULL
FROM jsonb_to_recordset(CAST(:counts AS jsonb))
     AS v(id uuid, attempt int, completed int, failed int)
WHERE j.id = v.id AND j.status IN ('queued', 'running')
RETURNING j.id, j.status, {NOTIFY_SQL} AS notify
""")

RENEW = text("""
UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[])) AS v(id, attempt)
WHERE j.id = v.id AND j.attempt = v.attempt AND j.status IN ('running', 'cancelling')
""")


@dataclass
class ClaimedJob:
    id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    model_id: uuid.UUID
    inputs: list[Any]
    total: int
    fresh: bool = False  # first try: never leased, never re-published


@dataclass(frozen=True)
class Row:
    job: ClaimedJob
    index: int
    record: Any


def lock_jobs(session: Session, job_id: uuid.UUID, *, max_jobs: int, row_budget: int,
              max_attempts: int, urgent_seconds: float) -> list[ClaimedJob]:
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
                       r.fresh)
            for r in sorted(rows, key=lambda r: r.position)]


def start_leases(session: Session, jobs: Sequence[ClaimedJob], lease_seconds: float) -> None:
    """Mark locked jobs running under a lease, with their new attempt (commit to publish it)."""
    if jobs:
        session.execute(START_LEASES, {"ids": [j.id for j in jobs], "lease_seconds": lease_seconds})


def claim_jobs(session: Session, job_id: uuid.UUID, *, max_jobs: int, row_budget: int,
               lease_seconds: float, max_attempts: int,
               urgent_seconds: float) -> list[ClaimedJob]:
    """`lock_jobs`, then lease every job it locked: the claim of a job scored over several
    transactions."""
    jobs = lock_jobs(session, job_id, max_jobs=max_jobs, row_budget=row_budget,
                     max_attempts=max_attempts, urgent_seconds=urgent_seconds)
    start_leases(session, jobs, lease_seconds)
    return jobs


def fits_one_transaction(jobs: Sequence[ClaimedJob], max_rows: int, redelivered: bool) -> bool:
    """Whether locked jobs can be scored and finished inside the transaction that locked them.

    Only a small claim (one model call, so the row locks are held for milliseconds) of jobs on
    their first try: a job that was leased before, or re-published by the reconciler, or whose
    message came back because a worker died holding it, may be what kills workers. Those get
    leases, whose attempts are counted durably, so such a job fails after KILN_MAX_ATTEMPTS
    instead of looping.
    """
    return (bool(jobs) and not redelivered and all(j.fresh for j in jobs)
            and sum(j.total for j in jobs) <= max_rows)


def finish_in_transaction(session: Session, jobs: list[ClaimedJob], model,
                          batch_size: int) -> dict[str, int]:
    """Score locked jobs and end them in the transaction that locked them.

    One row version per job for the whole run (queued -> succeeded) and one commit per claim,
    where a lease costs two of each. A worker killed meanwhile leaves the jobs queued, as
    though it never began: its transaction is rolled back and the locks go with it.
    """
    rows = job_rows(jobs)
    outputs, batch_count = [], 0
    for batch in batches(rows, batch_size):
        outputs += score(model, batch)
        batch_count += 1
    counts = job_counts(rows, outputs)
    ended = session.execute(FINISH, {"counts": counts_document(counts, rows)}).all()
    session.execute(WRITE_RESULTS, {"results": results_document(rows, outputs,
                                                                {r.id for r in ended})})
    record_ended_jobs(session, ended)
    return {"rows": len(rows), "batches": batch_count, "jobs_finished": len(ended)}


class LeaseKeeper:
    """Renews the leases of the jobs a worker holds until it is stopped."""

    def __init__(self, sessions: sessionmaker[Session], lease_seconds: float, every_seconds: float):
        self.sessions, self.lease_seconds, self.every = sessions, lease_seconds, every_seconds
        self.held: dict[uuid.UUID, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kiln-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, jobs: Sequence[ClaimedJob]) -> None:
        with self._lock:
            self.held.update({j.id: j.attempt for j in jobs})

    def release(self, job_ids) -> None:
        with self._lock:
            for job_id in job_ids:
                self.held.pop(job_id, None)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                ids, attempts = list(self.held), list(self.held.values())
            if not ids:
                continue
            try:
                with self.sessions() as session, session.begin():
                    session.execute(RENEW, {"ids": ids, "attempts": attempts,
                                            "lease_seconds": self.lease_seconds})
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried next tick
                log.warning("lease renewal failed: %s", exc)


def job_rows(jobs: Sequence[ClaimedJob]) -> list[Row]:
    """Every input row of the jobs, in claim order."""
    return [Row(job, index, record) for job in jobs for index, record in enumerate(job.inputs)]


def score(model, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One model call for the rows; a row that makes the model raise gets an error alone."""
    return run_isolated(rows, lambda items: model.run([r.record for r in items]),
                        lambda _row, exc: error_output(exc))


def error_output(exc: Exception) -> dict[str, Any]:
    message = describe_error(exc)
    return {"error": {"code": "inference_error", "message": message}}


def job_counts(rows: Sequence[Row], outputs: Sequence[dict[str, Any]]
               ) -> dict[uuid.UUID, list[int]]:
    """[completed, failed] rows per job."""
    counts: dict[uuid.UUID, list[int]] = {}
    for row, output in zip(rows, outputs):
        counts.setdefault(row.job.id, [0, 0])[1 if "error" in output else 0] += 1
    return counts


def counts_document(counts: dict[uuid.UUID, list[int]], rows: Sequence[Row]) -> str:
    """Each job's counts with the attempt that fences them, as one JSON document."""
    attempts = {row.job.id: row.job.attempt for row in rows}
    return orjson.dumps([{"id": job_id, "attempt": attempts[job_id], "completed": done,
                          "failed": failed} for job_id, (done, failed) in counts.items()]).decode()


def results_document(rows: Sequence[Row], outputs: Sequence[dict[str, Any]], owned) -> str:
    """The rows of the jobs in `owned`, as `WRITE_RESULTS` reads them."""
    return orjson.dumps([{"job_id": row.job.id, "index": row.index, "tenant_id": row.job.tenant_id,
                          "attempt": row.job.attempt,
                          "output": None if "error" in output else output,
                          "error": output.get("error")}
                         for row, output in zip(rows, outputs) if row.job.id in owned]).decode()


def write_batch(session: Session, rows: Sequence[Row], outputs: Sequence[dict[str, Any]],
                lease_seconds: float) -> tuple[set[uuid.UUID], list[uuid.UUID]]:
    """Record one batch's results and progress, fenced by each job's attempt, and end the jobs
    it completed (or whose cancel was requested).

    Returns the ids of jobs whose fence failed (lost or cancelled elsewhere) and of the jobs
    that ended with this batch; their events are in the outbox.
    """
    counts = job_counts(rows, outputs)
    owned = session.execute(RECORD_PROGRESS, {
        "counts": counts_document(counts, rows),
        "lease_seconds": lease_seconds}).all()
    owned_ids = {r.id for r in owned}
    if owned_ids:
        session.execute(WRITE_RESULTS, {"results": results_document(rows, outputs, owned_ids)})
    ended = [r for r in owned if r.ended]
    record_ended_jobs(session, ended)
    return set(counts) - owned_ids, [r.id for r in ended]


def execute_jobs(sessions: sessionmaker[Session], claimed: list[ClaimedJob], model, *,
                 batch_size: int, lease_seconds: float, heartbeat_seconds: float,
                 on_batch=None) -> dict[str, int]:
    """Score every row of the claimed jobs in shared batches; each job keeps its own results."""
    rows = job_rows(claimed)
    dropped: set[uuid.UUID] = set()
    stats = {"rows": 0, "batches": 0, "jobs_finished": 0}
    with LeaseKeeper(sessions, lease_seconds, heartbeat_seconds) as keeper:
        keeper.hold(claimed)
        for batch in batches(rows, batch_size):
            live = [row for row in batch if row.job.id not in dropped]
            if not live:
                continue
            outputs = score(model, live)
            with sessions() as session, session.begin():
                lost, ended = write_batch(session, live, outputs, lease_seconds)
            dropped |= lost | set(ended)
            keeper.release(dropped)
            stats["rows"] += len(live)
            stats["batches"] += 1
            stats["jobs_finished"] += len(ended)
            if on_batch is not None:
                on_batch(len(live), len({r.job.id for r in live}))
            if lost:
                log.info("lost the lease on %d job(s); another attempt owns them", len(lost))
    return stats
