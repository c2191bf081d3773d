"""The webhook outbox: rows written in the transaction that ends a job (or reports progress).

An event exists exactly when its status change does; `workers.webhooks` sends the rows. Only
`lifecycle.finish` writes end-of-job events; `record_progress_event` writes opt-in progress.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer

from app.domain.events import (EVENT_BY_STATUS, OPENAI_EVENT_BY_STATUS, PROGRESS, event_format,
                               listed_events)
from app.domain.signing import new_message_id
from app.domain.states import JobStatus
from app.orm import Job, WebhookDelivery, WebhookEndpoint
from app.presenters import job_summary

NOTIFY_CHANNEL = "kiln_webhooks"

# Whether an ended job `j` has anyone to tell: `lifecycle.finish` returns it with each job.
NOTIFY_SQL = ("(j.webhook_url IS NOT NULL OR EXISTS (SELECT 1 FROM webhook_endpoints e "
              "WHERE e.tenant_id = j.tenant_id AND e.disabled_at IS NULL))")


def record_ended_jobs(session: Session, ended: Sequence[Any]) -> int:
    """Write one outbox row per (event, target URL) for jobs that just ended: rows of (id,
    status, notify), where notify says whether the job has a webhook URL or its tenant an
    enabled endpoint. Safe to call twice: an event already recorded is not recorded again.
    Only `lifecycle.finish` calls it, in the transaction that ended the jobs."""
    notify = [row.id for row in ended if row.notify]
    if not notify:
        return 0
    ended = list(session.scalars(
        select(Job).options(defer(Job.inputs)).where(Job.id.in_(notify))
        .execution_options(populate_existing=True)))
    recorded = {(r.job_id, r.event) for r in session.execute(
        select(WebhookDelivery.job_id, WebhookDelivery.event)
        .where(WebhookDelivery.job_id.in_([j.id for j in ended])))}
    endpoints = _endpoints_by_tenant(session, {j.tenant_id for j in ended})
    rows = []
    for job in ended:
        event = EVENT_BY_STATUS[JobStatus(job.status)]
        if (job.id, event) in recorded:
            continue
        batch = "openai" in (job.options or {})
        targets = {e.url: (e.id, event_format(e.events)) for e in endpoints.get(job.tenant_id, ())
                   if (not listed_events(e.events) or event in e.events)
                   and (batch or event_format(e.events) == "kiln")}
        if job.webhook_url and job.webhook_url not in targets:
            targets[job.webhook_url] = (None, "kiln")
        message_id = new_message_id()
        payloads = {"kiln": event_payload(job, event), "openai": openai_event(job, message_id)}
        rows += [{"id": uuid.uuid4(), "tenant_id": job.tenant_id, "job_id": job.id,
                  "endpoint_id": endpoint_id, "event_id": message_id, "url": url, "event": event,
                  "payload": payloads[fmt]} for url, (endpoint_id, fmt) in targets.items()]
    if rows:
        session.execute(insert(WebhookDelivery), rows)
        notify_dispatchers(session)
    return len(rows)


def record_progress_event(session: Session, job_id: uuid.UUID, min_interval_seconds: float) -> int:
    """An opt-in `job.progress` event for a running job, at most one per interval.

    Call it in a transaction that already updated the job's row (a chunk's commit): that row
    lock serialises concurrent callers, so the interval check cannot race.
    """
    job = session.scalar(select(Job).options(defer(Job.inputs)).where(Job.id == job_id)
                         .execution_options(populate_existing=True))
    if job is None or job.status != JobStatus.RUNNING:
        return 0
    targets = [e for e in _endpoints_by_tenant(session, {job.tenant_id}).get(job.tenant_id, ())
               if e.events and PROGRESS in e.events]
    if not targets:
        return 0
    recent = session.scalar(select(WebhookDelivery.id).where(
        WebhookDelivery.job_id == job.id, WebhookDelivery.event == PROGRESS,
        WebhookDelivery.created_at > text("now() - make_interval(secs => :interval)"))
        .params(interval=min_interval_seconds).limit(1))
    if recent is not None:
        return 0
    payload = {"type": PROGRESS, "timestamp": datetime.now(UTC).isoformat(),
               "data": {**job_summary(job), "links": job_links(job)}}
    message_id = new_message_id()
    session.execute(insert(WebhookDelivery), [
        {"id": uuid.uuid4(), "tenant_id": job.tenant_id, "job_id": job.id, "endpoint_id": e.id,
         "event_id": message_id, "url": e.url, "event": PROGRESS, "payload": payload}
        for e in targets])
    notify_dispatchers(session)
    return len(targets)


def _endpoints_by_tenant(session: Session, tenant_ids: set[uuid.UUID]) -> dict:
    found: dict[uuid.UUID, list[WebhookEndpoint]] = {}
    for endpoint in session.scalars(select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id.in_(tenant_ids), WebhookEndpoint.disabled_at.is_(None))):
        found.setdefault(endpoint.tenant_id, []).append(endpoint)
    return found


def event_payload(job: Job, event: str) -> dict[str, Any]:
    """The body receivers get: `{type, timestamp, data}`, data being the job as the API shows it."""
    when = job.finished_at or datetime.now(UTC)
    return {"type": event, "timestamp": when.isoformat(),
            "data": {**job_summary(job), "links": job_links(job)}}


def openai_event(job: Job, message_id: str) -> dict[str, Any]:
    """The OpenAI dialect's event for a batch's end, as `client.webhooks.unwrap` reads it."""
    when = job.finished_at or datetime.now(UTC)
    return {"id": message_id, "object": "event",
            "type": OPENAI_EVENT_BY_STATUS[JobStatus(job.status)],
            "created_at": int(when.timestamp()), "data": {"id": str(job.id)}}


def job_links(job: Job) -> dict[str, str | None]:
    """API paths (relative to the API's base URL) where the receiver fetches what it needs."""
    base = f"/v1/jobs/{job.id}"
    def file_link(file_id: uuid.UUID | None) -> str | None:
        return f"/v1/files/{file_id}/content" if file_id else None

    return {"job": base, "results": base + "/results", "output_file": file_link(job.output_file_id),
            "errors": file_link(job.error_file_id), "webhooks": base + "/webhooks"}


def notify_dispatchers(session: Session) -> None:
    """Wake the dispatchers when (and only if) this transaction commits."""
    session.execute(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))

