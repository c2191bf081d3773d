"""Celery tasks: thin entry points that take ids and hand off to the executors."""

from __future__ import annotations

import logging
import time
import uuid

from celery import shared_task

from sqlalchemy import select

from app.orm import Job
from app.queueing import RUN_CHUNK, RUN_JOB
from workers import chunks
from workers.context import WorkerContext, worker_context
from workers.executor import claim_jobs, execute_jobs

log = logging.getLogger(__name__)
DRAIN_SECONDS = 5.0


@shared_task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str) -> dict | None:
    """Claim the job (and other waiting jobs of its model), score them, write fenced results."""
    settings = self.app.kiln_settings
    context = worker_context(settings, require_gpu=getattr(self.app, "kiln_require_gpu", False))
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        log.error("ignoring a message with a malformed job id %r", job_id)
        return None
    with context.sessions() as session:
        kind, status = session.execute(select(Job.kind, Job.status).where(Job.id == wanted)).first() \
            or (None, None)
    if kind == "file":
        return advance_file_job(context, wanted, status)
    deadline = time.monotonic() + DRAIN_SECONDS
    totals = {"rows": 0, "batches": 0, "jobs_finished": 0}
    while True:  # drain: keep claiming this model's queued jobs while there are any
        with context.sessions() as session, session.begin():
            claimed = claim_jobs(session, wanted, max_jobs=settings.max_jobs_per_claim,
                                 row_budget=settings.batch_size * 4,
                                 lease_seconds=settings.lease_seconds,
                                 max_attempts=settings.max_attempts)
        if not claimed:
            return totals
        with context.sessions() as session:
            model = context.model(session, claimed[0].model_id)
        stats = execute_jobs(context.sessions, claimed, model, batch_size=settings.batch_size,
                             lease_seconds=settings.lease_seconds,
                             heartbeat_seconds=settings.lease_heartbeat_seconds)
        log.info("scored %d rows of %d job(s) in %d batch(es)", stats["rows"], len(claimed),
                 stats["batches"])
        totals = {k: totals[k] + stats[k] for k in totals}
        if time.monotonic() > deadline:  # let other models' messages have this process
            context.publisher.publish_jobs([wanted], self.request.delivery_info.get("routing_key"))
            return totals


def advance_file_job(context: WorkerContext, job_id: uuid.UUID, status: str) -> dict | None:
    """Move a file job on from wherever it stands: plan it, or finalize it."""
    if status == "validating":
        indexes = chunks.validate_and_plan(context, job_id)
        if indexes:
            with context.sessions() as session:
                queue = session.get(Job, job_id).options.get("queue")
            context.publisher.publish_chunks(((job_id, i) for i in indexes), queue)
        return {"chunks": len(indexes)}
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
    return chunks.run_chunk(context, uuid.UUID(job_id), int(index))
