"""Celery tasks: thin entry points that take ids and hand off to the drainer and file phases."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from celery import shared_task
from opentelemetry.trace import SpanKind

from app import logs, metrics, origin, tracing
from app.queueing.publisher import REQUEST_ID_HEADER
from app.queueing.celery_config import RUN_CHUNK, RUN_JOB
from app.store import jobs as job_store
from workers import files
from workers.context import worker_context
from workers.drain import Drainer

log = logging.getLogger(__name__)


def request_id(request) -> str | None:
    """The id of the API request that published this message, if one did."""
    value = getattr(request, REQUEST_ID_HEADER, None) or (request.headers or {}).get(
        REQUEST_ID_HEADER)
    return value if isinstance(value, str) else None


@contextmanager
def job_context(request, job_id: str, chunk: int | None = None) -> Iterator[None]:
    """The message's job (and chunk) on every log line inside, and its request id on those
    lines and on the messages published inside (the chunks a validated file job fans out)."""
    known = request_id(request)
    token = origin.set_origin(request_id=known)
    carrier = {name: value for name in ("traceparent", "tracestate")
               if isinstance(value := getattr(request, name, None), str)}
    try:
        with logs.bound(job_id=job_id, chunk=chunk, request_id=known, worker=request.hostname), \
                tracing.continued(carrier, "kiln.run_chunk" if chunk is not None
                                  else "kiln.run_job", SpanKind.CONSUMER, job_id=job_id,
                                  chunk=chunk):
            yield
    finally:
        origin.reset(token)


@shared_task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str, helper: bool = False) -> dict | None:
    """Drain the job's model (inline jobs), or move a file job on from where it stands."""
    try:
        wanted = uuid.UUID(job_id)
    except ValueError:
        log.error("ignoring a message with a malformed job id %r", job_id)
        return None
    with job_context(self.request, job_id):
        return _run_job(self, wanted, helper)


def _run_job(task, wanted: uuid.UUID, helper: bool) -> dict | None:
    context = worker_context(task.app.kiln_settings,
                             require_gpu=getattr(task.app, "kiln_require_gpu", False))
    with context.sessions() as session:
        target = job_store.message_target(session, wanted)
    if target is None:  # deleted, or a stale message from another database
        return None
    kind, status, processing, model_id, queue = target
    if kind == "file":
        return files.advance(context, wanted, status)
    delivery = task.request.delivery_info or {}
    return Drainer(context, wanted, model_id, queue, processing or {},
                   routing_key=delivery.get("routing_key"),
                   redelivered=bool(delivery.get("redelivered"))).run(helper)


@shared_task(name=RUN_CHUNK, bind=True)
def run_chunk(self, job_id: str, index: int) -> dict | None:
    """Score one chunk of a file job."""
    context = worker_context(self.app.kiln_settings,
                             require_gpu=getattr(self.app, "kiln_require_gpu", False))
    try:
        with job_context(self.request, job_id, index):
            outcome = files.run_chunk(context, uuid.UUID(job_id), int(index))
    except Exception:
        metrics.count_chunk("error")
        raise
    metrics.count_chunk("done" if outcome is not None else "skipped")
    return outcome
