"""Celery tasks: thin entry points that take ids and hand off to the executors."""

from __future__ import annotations

import logging
import time
import uuid

from celery import shared_task

from sqlalchemy import select

from app import metrics
from app.orm import Job, Model
from app.queueing.celery_config import RUN_CHUNK, RUN_JOB
from workers import chunks
from workers.context import WorkerContext, worker_context
from workers.executor import (ClaimedJob, execute_jobs, finish_in_transaction,
                              fits_one_transaction, lock_jobs, start_leases)

log = logging.getLogger(__name__)
DRAIN_SECONDS = 5.0


@shared_task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str, helper: bool = False) -> dict | None:
    """Claim the job (and other waiting jobs of its model), score them, write fenced results.

    One process drains a model at a time: a message that arrives while another process drains
    it (its drain flag is set) is done at once, because the drainer claims until nothing is
    left, and claims once more after clearing its flag. Two drainers would split each window's
    jobs between them, twice the claims and statements for the same rows. A drainer whose
    claims come back full is falling behind, and sends one `helper` message, which is not
    turned away: so a slow model or a flood still gets every worker process it needs.
    """
    settings = self.app.kiln_settings
    context = worker_context(settings, require_gpu=getattr(self.app, "kiln_require_gpu", False))
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        log.error("ignoring a message with a malformed job id %r", job_id)
        return None
    with context.sessions() as session:
        kind, status, processing, model_id, queue = session.execute(
            select(Job.kind, Job.status, Model.processing, Job.model_id,
                   Job.options["queue"].astext).join(Model, Model.id == Job.model_id)
            .where(Job.id == wanted)).first() or (None, None, {}, None, None)
    if kind == "file":
        return advance_file_job(context, wanted, status)
    if kind is None:  # deleted, or a stale message from another database
        return None
    batch_size = context.batch_size(processing)
    wait_ms = processing.get("max_batch_wait_ms")
    linger = (settings.max_batch_wait_ms if wait_ms is None else wait_ms) / 1000
    deadline = time.monotonic() + DRAIN_SECONDS
    totals = {"rows": 0, "batches": 0, "jobs_finished": 0}

    delivery = self.request.delivery_info or {}
    routing_key, redelivered = delivery.get("routing_key"), bool(delivery.get("redelivered"))
    in_transaction_rows = min(settings.single_transaction_rows, batch_size)

    def claim() -> tuple[list[ClaimedJob], dict[str, int] | None]:
        """Lock waiting jobs; a small first-try claim is scored and finished right there
        (returned with its stats), any other is leased, to be scored by `execute_jobs`."""
        with context.sessions() as session, session.begin():
            jobs = lock_jobs(session, wanted, max_jobs=settings.max_jobs_per_claim,
                             row_budget=batch_size * 4, max_attempts=settings.max_attempts)
            if fits_one_transaction(jobs, in_transaction_rows, redelivered):
                model = context.model(session, jobs[0].model_id)
                return jobs, finish_in_transaction(session, jobs, model, batch_size)
            start_leases(session, jobs, settings.lease_seconds)
            return jobs, None

    if not helper and context.drains.active(model_id, queue):
        return totals  # another process is draining this model: it takes this job
    if helper:
        log.info("helping to drain model %s", model_id)
    asked_for_help = False
    try:
        while True:  # drain: keep claiming this model's queued jobs while there are any
            context.drains.mark(model_id, queue)  # the API sends no messages meanwhile
            claimed, stats = claim()
            if not claimed:
                context.drains.clear(model_id, queue)
                claimed, stats = claim()  # a job committed by a submitter that saw the flag
                if not claimed:
                    return totals
            if not asked_for_help and (len(claimed) >= settings.max_jobs_per_claim
                                       or sum(j.total for j in claimed) >= batch_size * 4):
                asked_for_help = True  # a full claim: more is waiting than this process takes
                log.info("claims are full: asking another process to help drain")
                context.publisher.publish_jobs([wanted], routing_key, helper=True)
            if stats is None:
                with context.sessions() as session:
                    model = context.model(session, claimed[0].model_id)
                stats = execute_jobs(context.sessions, claimed, model, batch_size=batch_size,
                                     lease_seconds=settings.lease_seconds,
                                     heartbeat_seconds=settings.lease_heartbeat_seconds)
            log.info("scored %d rows of %d job(s) in %d batch(es)", stats["rows"],
                     len(claimed), stats["batches"])
            totals = {k: totals[k] + stats[k] for k in totals}
            if len(claimed) > 1 and stats["rows"] < batch_size and linger > 0:
                # jobs are arriving together but did not fill a batch: let the next claim find
                # more company. A claim of one job (an idle system, or jobs one at a time) does
                # not wait.
                time.sleep(linger)
            if time.monotonic() > deadline:  # let other models' messages have this process
                context.drains.clear(model_id, queue)
                context.publisher.publish_jobs([wanted], routing_key)
                return totals
    except BaseException:
        context.drains.clear(model_id, queue)  # a failed drain must not turn messages away
        raise


def advance_file_job(context: WorkerContext, job_id: uuid.UUID, status: str) -> dict | None:
    """Move a file job on from wherever it stands: plan it, or finalize it."""
    if status == "validating":
        dispatched = chunks.validate_and_plan(context, job_id)
        if dispatched:
            context.publisher.publish_chunks(dispatched)
        return {"chunks": len(dispatched)}
    if status == "finalizing":
        with context.sessions.begin() as session:
            claimed = session.execute(chunks.CLAIM_PHASE, {
                "job_id": job_id, "status": "finalizing",
                "lease_seconds": context.settings.lease_seconds}).first()
        return {"status": chunks.finalize(context, job_id, claimed.attempt)} if claimed else None
    return {"status": chunks.finalize_if_done(context, job_id)}


@shared_task(name=RUN_CHUNK, bind=True)
def run_chunk(self, job_id: str, index: int) -> dict | None:
    """Score one chunk of a file job."""
    context = worker_context(self.app.kiln_settings,
                             require_gpu=getattr(self.app, "kiln_require_gpu", False))
    try:
        outcome = chunks.run_chunk(context, uuid.UUID(job_id), int(index))
    except Exception:
        metrics.count_chunk("error")
        raise
    metrics.count_chunk("done" if outcome is not None else "skipped")
    return outcome
