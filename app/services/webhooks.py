"""Webhook use cases: endpoints and their secrets, outbox rows for job events, delivery records.

Outbox rows are written by `record_job_events` in the transaction that ended the job, so an event
exists exactly when the status change does; `workers.webhooks` sends them.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer

from app import metrics
from app.domain.events import EVENT_BY_STATUS, PROGRESS
from app.domain.signing import generate_secret, new_message_id
from app.domain.ssrf import Resolver, Target, UnsafeUrl, UrlPolicy, check_url
from app.domain.states import JobStatus
from app.errors import Conflict, InvalidInput
from app.orm import Job, TenantWebhookSecret, WebhookDelivery, WebhookEndpoint
from app.presenters import job_summary
from app.secretbox import SecretBox
from app.services.auth import Caller, get_owned
from app.settings import Settings

NOTIFY_CHANNEL = "kiln_webhooks"


# ---------------------------------------------------------------- URL safety

def url_policy(settings: Settings) -> UrlPolicy:
    return UrlPolicy.build(allow_private=settings.webhook_allow_private,
                           allowed=settings.webhook_allowed_hosts)


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver gives for a host name."""
    return [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


def check_webhook_url(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver,
                      field: str = "webhook_url") -> Target:
    """Reject, as a 422, a URL Kiln must not call (see `app.domain.ssrf`)."""
    try:
        return check_url(url, policy, resolve)
    except UnsafeUrl as exc:
        raise InvalidInput(f"{field}: {exc}", errors=[
            {"field": field, "message": str(exc), "code": "unsafe_url"}]) from None


# ---------------------------------------------------------------- endpoints

def create_endpoint(session: Session, caller: Caller, box: SecretBox, policy: UrlPolicy, *,
                    url: str, events: Sequence[str] | None = None, description: str | None = None,
                    resolve: Resolver = system_resolver) -> tuple[WebhookEndpoint, str]:
    """Register a URL for the tenant's job events; the plain secret is returned once."""
    check_webhook_url(url, policy, resolve, field="url")
    secret = generate_secret()
    endpoint = WebhookEndpoint(tenant_id=caller.tenant_id, url=url,
                               events=sorted(set(events or [])), description=description,
                               secret_ciphertext=box.encrypt(secret))
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def list_endpoints(session: Session, caller: Caller) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint)
                                .where(WebhookEndpoint.tenant_id == caller.tenant_id)
                                .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def get_endpoint(session: Session, caller: Caller, endpoint_id: str) -> WebhookEndpoint:
    return get_owned(session, caller, WebhookEndpoint, endpoint_id, "webhook endpoint")


def delete_endpoint(session: Session, caller: Caller, endpoint_id: str) -> None:
    """Deleting an endpoint deletes its deliveries too, so nothing more is sent to it."""
    session.delete(get_endpoint(session, caller, endpoint_id))
    session.flush()


def rotate_endpoint_secret(session: Session, caller: Caller, box: SecretBox,
                           endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    """A new secret, returned once; deliveries sent from now on are signed with it."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    secret = generate_secret()
    endpoint.secret_ciphertext = box.encrypt(secret)
    endpoint.secret_rotated_at = datetime.now(UTC)
    session.flush()
    return endpoint, secret


def enable_endpoint(session: Session, caller: Caller, endpoint_id: str) -> WebhookEndpoint:
    """Undo a disable (after the receiver answered 410 Gone); later events are sent again."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    session.flush()
    return endpoint


# ---------------------------------------------------------------- the tenant's job secret

def job_secret_info(session: Session, caller: Caller) -> dict[str, Any]:
    """Whether the secret for per-job `webhook_url`s exists and when it was set; never its value."""
    row = session.get(TenantWebhookSecret, caller.tenant_id)
    return {"object": "webhook_job_secret", "exists": row is not None,
            "created_at": row.created_at if row else None,
            "rotated_at": row.rotated_at if row else None}


def rotate_job_secret(session: Session, caller: Caller, box: SecretBox) -> dict[str, Any]:
    """Create or replace the job secret; the plain value is in the answer, once."""
    secret = generate_secret()
    now = datetime.now(UTC)
    statement = insert(TenantWebhookSecret).values(tenant_id=caller.tenant_id,
                                                   secret_ciphertext=box.encrypt(secret))
    session.execute(statement.on_conflict_do_update(
        index_elements=[TenantWebhookSecret.tenant_id],
        set_={"secret_ciphertext": statement.excluded.secret_ciphertext, "rotated_at": now}))
    session.expire_all()
    return {**job_secret_info(session, caller), "secret": secret}


def signing_secret(session: Session, box: SecretBox, tenant_id: uuid.UUID,
                   endpoint_id: uuid.UUID | None) -> str | None:
    """The secret a delivery is signed with now; None when its endpoint is disabled or gone.

    A tenant that never rotated its job secret gets one here, on the first job-URL delivery.
    """
    if endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or endpoint.disabled_at is not None:
            return None
        return box.decrypt(endpoint.secret_ciphertext)
    session.execute(insert(TenantWebhookSecret).values(
        tenant_id=tenant_id, secret_ciphertext=box.encrypt(generate_secret()))
        .on_conflict_do_nothing(index_elements=[TenantWebhookSecret.tenant_id]))
    ciphertext = session.scalar(select(TenantWebhookSecret.secret_ciphertext)
                                .where(TenantWebhookSecret.tenant_id == tenant_id))
    return box.decrypt(ciphertext)


# ---------------------------------------------------------------- the outbox

def record_job_events(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """Write one outbox row per (event, target URL) for jobs that have reached a final status,
    and count them in `kiln_jobs_finished_total`.

    Call it in the transaction that changed the status (every path that ends a job does). Safe to
    call twice for the outbox: an event already recorded for a job is not recorded again. Returns
    the number of rows written.
    """
    if not job_ids:
        return 0
    ended = session.execute(ENDED_JOBS, {"ids": list(dict.fromkeys(job_ids)),
                                         "final": [s.value for s in EVENT_BY_STATUS]}).all()
    return record_ended_jobs(session, ended)


# Whether an ended job `j` has anyone to tell. A statement that ends jobs can return
# `j.id, j.status, <NOTIFY_SQL> AS notify` and hand its rows to `record_ended_jobs` directly.
NOTIFY_SQL = ("(j.webhook_url IS NOT NULL OR EXISTS (SELECT 1 FROM webhook_endpoints e "
              "WHERE e.tenant_id = j.tenant_id AND e.disabled_at IS NULL))")
ENDED_JOBS = text(f"SELECT j.id, j.status, {NOTIFY_SQL} AS notify FROM jobs j "
                  "WHERE j.id = ANY(:ids) AND j.status = ANY(:final)")


def record_ended_jobs(session: Session, ended: Sequence[Any]) -> int:
    """`record_job_events` for jobs already known to be final: rows of (id, status, notify),
    where notify says whether the job has a webhook URL or its tenant an enabled endpoint."""
    metrics.count_finished_jobs(row.status for row in ended)
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
        targets = {e.url: e.id for e in endpoints.get(job.tenant_id, ())
                   if not e.events or event in e.events}
        if job.webhook_url and job.webhook_url not in targets:
            targets[job.webhook_url] = None
        payload, message_id = event_payload(job, event), new_message_id()
        rows += [{"id": uuid.uuid4(), "tenant_id": job.tenant_id, "job_id": job.id,
                  "endpoint_id": endpoint_id, "event_id": message_id, "url": url, "event": event,
                  "payload": payload} for url, endpoint_id in targets.items()]
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


# ---------------------------------------------------------------- delivery records

def list_job_deliveries(session: Session, caller: Caller, job_id: str) -> list[WebhookDelivery]:
    job = get_owned(session, caller, Job, job_id, "job")
    return list(session.scalars(select(WebhookDelivery)
                                .where(WebhookDelivery.job_id == job.id,
                                       WebhookDelivery.tenant_id == caller.tenant_id)
                                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)))


def get_delivery(session: Session, caller: Caller, delivery_id: str) -> WebhookDelivery:
    return get_owned(session, caller, WebhookDelivery, delivery_id, "webhook delivery")


def redeliver(session: Session, caller: Caller, delivery_id: str) -> WebhookDelivery:
    """Send an event again, as a new delivery with the same `webhook-id` and body."""
    original = get_delivery(session, caller, delivery_id)
    if original.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, original.endpoint_id)
        if endpoint is not None and endpoint.disabled_at is not None:
            raise Conflict(f"webhook endpoint {endpoint.id} is disabled; enable it first")
    copy = WebhookDelivery(tenant_id=original.tenant_id, job_id=original.job_id,
                           endpoint_id=original.endpoint_id, event_id=original.event_id,
                           url=original.url, event=original.event, payload=original.payload)
    session.add(copy)
    session.flush()
    notify_dispatchers(session)
    session.refresh(copy)
    return copy
