"""The publisher: tells workers, through Celery, which jobs and chunks to look at."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from celery import Celery
from opentelemetry.trace import SpanKind

from app import origin, tracing
from app.queueing.celery_config import RUN_CHUNK, RUN_JOB, celery_config
from app.settings import Settings

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "kiln_request_id"


def message_headers() -> dict[str, str] | None:
    """The publishing request's id, carried to the worker's log lines, and the trace context
    (`traceparent`), which the worker's span continues or links (`workers.tasks`); outside a
    trace (the reconciler) there is none, and the worker continues the job's stored context."""
    request_id = origin.current().request_id
    headers = tracing.inject({REQUEST_ID_HEADER: request_id} if request_id else {})
    return headers or None


class Publisher:
    """Tells workers to look at jobs. A lost message is harmless: the reconciler re-publishes."""

    def __init__(self, settings: Settings):
        self.celery = Celery("kiln-publisher", set_as_current=False)
        self.celery.conf.update(celery_config(settings))
        self.queue = settings.queue

    def publish_routed(self, jobs: Iterable[tuple[uuid.UUID | str, str | None]]) -> bool:
        """Publish (job id, queue) pairs, each to its own queue."""
        by_queue: dict[str | None, list] = {}
        for job_id, queue in jobs:
            by_queue.setdefault(queue, []).append(job_id)
        # a list, not a generator: every queue is published to even after one fails
        return all([self.publish_jobs(ids, queue) for queue, ids in by_queue.items()])  # noqa: C419

    def publish_jobs(self, job_ids: Iterable[uuid.UUID | str], queue: str | None = None,
                     helper: bool = False) -> bool:
        """One message per job; `helper` marks a draining worker's call for help (see
        `workers.tasks.run_job`)."""
        try:
            for job_id in job_ids:
                with tracing.span_in_trace("kiln.publish run_job", SpanKind.PRODUCER,
                                           job_id=str(job_id)):
                    self.celery.send_task(RUN_JOB, kwargs={"job_id": str(job_id),
                                                           **({"helper": True} if helper
                                                              else {})},
                                          queue=queue or self.queue, headers=message_headers())
        except Exception as exc:  # noqa: BLE001 - any broker failure; the job is safe in Postgres
            log.warning("publish failed, the reconciler will re-publish: %s", exc)
            return False
        return True

    def publish_chunks(self, chunks: Iterable[tuple], queue: str | None = None) -> bool:
        """Chunks as (job id, index) to `queue`, or (job id, index, queue) each to its own."""
        try:
            for job_id, index, *routed in chunks:
                target = (routed[0] if routed else None) or queue or self.queue
                with tracing.span_in_trace("kiln.publish run_chunk", SpanKind.PRODUCER,
                                           job_id=str(job_id), chunk=index):
                    self.celery.send_task(RUN_CHUNK,
                                          kwargs={"job_id": str(job_id), "index": index},
                                          queue=target, headers=message_headers())
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("publish failed, the reconciler will re-publish: %s", exc)
            return False
        return True
