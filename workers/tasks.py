"""Celery tasks: thin entry points that take ids and hand off to the drainer and file phases."""

from __future__ import annotations

import logging
import uuid

from celery import shared_task

from app import metrics
from app.queueing.celery_config import RUN_CHUNK, RUN_JOB
from app.store import jobs as job_store
from workers import files
from workers.context import worker_context
from workers.drain import Drainer

log = logging.getLogger(__name__)


@shared_task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str, helper: bool = False) -> dict | None:
    """Drain the job's model (inline jobs), or move a file job on from where it stands."""
    context = worker_context(self.app.kiln_settings,
                             require_gpu=getattr(self.app, "kiln_require_gpu", False))
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        log.error("ignoring a message with a malformed job id %r", job_id)
        return None
    with context.sessions() as session:
        target = job_store.message_target(session, wanted)
    if target is None:  # deleted, or a stale message from another database
        return None
    kind, status, processing, model_id, queue = target
    if kind == "file":
        return files.advance(context, wanted, status)
    delivery = self.request.delivery_info or {}
    return Drainer(context, wanted, model_id, queue, processing or {},
                   routing_key=delivery.get("routing_key"),
                   redelivered=bool(delivery.get("redelivered"))).run(helper)


@shared_task(name=RUN_CHUNK, bind=True)
def run_chunk(self, job_id: str, index: int) -> dict | None:
    """Score one chunk of a file job."""
    context = worker_context(self.app.kiln_settings,
                             require_gpu=getattr(self.app, "kiln_require_gpu", False))
    try:
        outcome = files.run_chunk(context, uuid.UUID(job_id), int(index))
    except Exception:
        metrics.count_chunk("error")
        raise
    metrics.count_chunk("done" if outcome is not None else "skipped")
    return outcome
