"""Score inline jobs: a claim of several jobs' rows in shared model calls, each job's writes fenced.

Small jobs for the same model are coalesced: the worker that receives any one of them locks
every queued job of that model it can (up to a row budget), so per-job overhead (claim, write,
status) is paid once per batch rather than once per job.

A small claim of first-try jobs (one model call, `KILN_TUNING__SINGLE_TRANSACTION_ROWS`) is
scored and finished inside the transaction that locked it: one row version and one commit for
the whole run. Any other claim leases its jobs (running, a new attempt, a lease the
`LeaseKeeper` renews) and commits that first, then writes each batch fenced by attempt.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.orm import Session, sessionmaker

from app import tracing
from app.domain.batching import batches, run_isolated
from app.errors import describe_error
from app.store import jobs as job_store
from app.store.jobs import ClaimedJob, Tally
from app.store.lifecycle import Usage
from workers.leases import LeaseKeeper
from workers.runtime.clocked import ClockedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    job: ClaimedJob
    index: int
    record: Any


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
    rows, clock = job_rows(jobs), ClockedModel(model)
    outputs, batch_count = [], 0
    for batch in batches(rows, batch_size):
        outputs += score(clock, batch)
        batch_count += 1
    ended = job_store.finish_claimed(session, job_tallies(rows, outputs, clock.lap()))
    job_store.write_results(session, result_rows(rows, outputs, {job.id for job in ended}))
    return {"rows": len(rows), "batches": batch_count, "jobs_finished": len(ended)}


def job_rows(jobs: Sequence[ClaimedJob]) -> list[Row]:
    """Every input row of the jobs, in claim order."""
    return [Row(job, index, record) for job in jobs for index, record in enumerate(job.inputs)]


def score(model, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One model call for the rows; a row that makes the model raise gets an error alone.
    While tracing is on, each call's span links to the trace of every job it scores."""
    with tracing.linking(row.job.trace_context for row in rows):
        return run_isolated(rows, lambda items: model.run([r.record for r in items]),
                            lambda _row, exc: error_output(exc))


def error_output(exc: Exception) -> dict[str, Any]:
    return {"error": {"code": "inference_error", "message": describe_error(exc)}}


def job_tallies(rows: Sequence[Row], outputs: Sequence[dict[str, Any]],
                model_seconds: float) -> dict[uuid.UUID, Tally]:
    """Per job: its attempt, completed and failed rows, and their usage: the batch's model
    seconds shared by rows, and the bytes of each row's record and output as JSON."""
    counts: dict[uuid.UUID, list] = {}
    for row, output in zip(rows, outputs):
        tally = counts.setdefault(row.job.id, [row.job.attempt, 0, 0, 0, 0])
        tally[2 if "error" in output else 1] += 1
        tally[3] += len(orjson.dumps(row.record))
        tally[4] += len(orjson.dumps(output))
    share = model_seconds / max(len(rows), 1)
    return {job_id: Tally(attempt, done, failed, Usage(share * (done + failed), read, written))
            for job_id, (attempt, done, failed, read, written) in counts.items()}


def result_rows(rows: Sequence[Row], outputs: Sequence[dict[str, Any]], owned) -> list[dict]:
    """The rows of the jobs in `owned`, as `job_store.write_results` stores them."""
    return [{"job_id": row.job.id, "index": row.index, "tenant_id": row.job.tenant_id,
             "attempt": row.job.attempt, "output": None if "error" in output else output,
             "error": output.get("error")}
            for row, output in zip(rows, outputs) if row.job.id in owned]


class LeasedRun:
    """Scores leased jobs batch by batch; each batch's progress and results in one transaction,
    the jobs it completes ended there too. Tracks each job's counts for this attempt."""

    def __init__(self, sessions: sessionmaker[Session], claimed: list[ClaimedJob], model, *,
                 lease_seconds: float):
        self.sessions, self.model, self.lease_seconds = sessions, model, lease_seconds
        self.clock = ClockedModel(model)
        self.jobs = {job.id: job for job in claimed}
        self.done = {job.id: Tally(job.attempt, 0, 0) for job in claimed}  # this attempt's
        self.dropped: set[uuid.UUID] = set()

    def write_batch(self, rows: Sequence[Row], outputs: Sequence[dict[str, Any]]
                    ) -> tuple[set[uuid.UUID], list[uuid.UUID]]:
        """Record one batch, fenced; returns the jobs lost to another attempt and those ended."""
        progress, completing = {}, {}
        for job_id, batch in job_tallies(rows, outputs, self.clock.lap()).items():
            so_far = self.done[job_id] = self.done[job_id] + batch
            if so_far.rows >= self.jobs[job_id].total:
                completing[job_id] = so_far
            else:
                progress[job_id] = batch
        with self.sessions() as session, session.begin():
            owned, ended = job_store.record_batch(session, progress, completing,
                                                  self.lease_seconds)
            job_store.write_results(session, result_rows(rows, outputs, owned))
        lost = (set(progress) | set(completing)) - owned
        return lost, [job.id for job in ended]

    def run(self, batch_size: int, keeper: LeaseKeeper, on_batch=None) -> dict[str, int]:
        stats = {"rows": 0, "batches": 0, "jobs_finished": 0}
        for batch in batches(job_rows(list(self.jobs.values())), batch_size):
            live = [row for row in batch if row.job.id not in self.dropped]
            if not live:
                continue
            lost, ended = self.write_batch(live, score(self.clock, live))
            self.dropped |= lost | set(ended)
            keeper.release(self.dropped)
            stats["rows"] += len(live)
            stats["batches"] += 1
            stats["jobs_finished"] += len(ended)
            if on_batch is not None:
                on_batch(len(live), len({r.job.id for r in live}))
            if lost:
                log.info("lost the lease on %d job(s); another attempt owns them", len(lost))
        return stats


def execute_jobs(sessions: sessionmaker[Session], claimed: list[ClaimedJob], model, *,
                 batch_size: int, lease_seconds: float, heartbeat_seconds: float,
                 on_batch=None) -> dict[str, int]:
    """Score every row of the claimed (leased) jobs in shared batches; each job keeps its own
    results."""
    with LeaseKeeper(sessions, lease_seconds, heartbeat_seconds) as keeper:
        keeper.hold(claimed)
        return LeasedRun(sessions, claimed, model, lease_seconds=lease_seconds).run(
            batch_size, keeper, on_batch)
