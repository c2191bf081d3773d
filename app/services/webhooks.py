"""Webhook use cases: endpoints and their secrets, and delivery records.

Outbox rows are written by the store (`app.store.outbox`) in the transaction that ended the job,
so an event exists exactly when the status change does; `workers.webhooks` sends them.
"""

from __future__ import annotations

import socket
import uuid
from urllib.parse import urlsplit
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.domain.events import OPENAI_FORMAT
from app.domain.signing import generate_secret
from app.domain.ssrf import (Resolver, UnsafeUrl, Unresolved, UrlPolicy, check_url,
                             parse_ip_literal)
from app.errors import Conflict, InvalidInput
from app.orm import Job, TenantWebhookSecret, WebhookDelivery, WebhookEndpoint
from app.secretbox import SecretBox
from app.services import audit
from app.services.auth import Caller, get_owned
from app.services.paging import Page, keyset_page
from app.store.outbox import notify_dispatchers
from app.settings import Settings



# ---------------------------------------------------------------- URL safety

def url_policy(settings: Settings) -> UrlPolicy:
    return UrlPolicy.build(allow_private=settings.webhook_allow_private,
                           allowed=settings.webhook_allowed_hosts)


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver gives for a host name."""
    return [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


def check_webhook_url(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver,
                      field: str = "webhook_url") -> None:
    """Reject, as a 422, a URL Kiln must not call (see `app.domain.ssrf`). A host that does not
    resolve (yet) is accepted: nothing can be sent to it, and every send checks the URL again,
    since DNS may change either way, so the check that guards is the one at send time."""
    try:
        target = check_url(url, policy, resolve)
        if (not policy.allow_private and not policy.allowed_networks
                and parse_ip_literal(target.host) is not None):
            raise UnsafeUrl("webhook URLs name a host, not an IP address, unless the operator "
                            "allows private targets or lists networks")
    except Unresolved:
        return
    except UnsafeUrl as exc:
        raise InvalidInput(f"{field}: {exc}", errors=[
            {"field": field, "message": str(exc), "code": "unsafe_url"}]) from None


# ---------------------------------------------------------------- endpoints

def create_endpoint(session: Session, caller: Caller, box: SecretBox, policy: UrlPolicy, *,
                    url: str, events: Sequence[str] | None = None, description: str | None = None,
                    resolve: Resolver = system_resolver,
                    event_format: str = "kiln") -> tuple[WebhookEndpoint, str]:
    """Register a URL for the tenant's job events; the plain secret is returned once."""
    check_webhook_url(url, policy, resolve, field="url")
    secret = generate_secret()
    endpoint = WebhookEndpoint(tenant_id=caller.tenant_id, url=url,
                               events=sorted(set(events or []))
                               + ([OPENAI_FORMAT] if event_format == "openai" else []),
                               description=description,
                               secret_ciphertext=box.encrypt(secret))
    session.add(endpoint)
    session.flush()
    audit.record_for(session, caller, "webhook.create", "webhook_endpoint", endpoint.id,
                     host=urlsplit(url).hostname, events=endpoint.events)
    return endpoint, secret


def list_endpoints(session: Session, caller: Caller, *, limit: int = 100,
                   after: str | None = None) -> Page[WebhookEndpoint]:
    """Oldest first: the endpoints after the endpoint `after`."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == caller.tenant_id)
    return keyset_page(session, caller, WebhookEndpoint, query, after=after, limit=limit,
                       what="webhook endpoint", newest_first=False)


def get_endpoint(session: Session, caller: Caller, endpoint_id: str) -> WebhookEndpoint:
    return get_owned(session, caller, WebhookEndpoint, endpoint_id, "webhook endpoint")


def delete_endpoint(session: Session, caller: Caller, endpoint_id: str) -> None:
    """Deleting an endpoint deletes its deliveries too, so nothing more is sent to it."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    session.delete(endpoint)
    session.flush()
    audit.record_for(session, caller, "webhook.delete", "webhook_endpoint", endpoint.id)


def rotate_endpoint_secret(session: Session, caller: Caller, box: SecretBox,
                           endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    """A new secret, returned once; deliveries sent from now on are signed with it."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    secret = generate_secret()
    endpoint.secret_ciphertext = box.encrypt(secret)
    endpoint.secret_rotated_at = datetime.now(UTC)
    session.flush()
    audit.record_for(session, caller, "webhook.rotate_secret", "webhook_endpoint", endpoint.id)
    return endpoint, secret


def enable_endpoint(session: Session, caller: Caller, endpoint_id: str) -> WebhookEndpoint:
    """Undo a disable (after the receiver answered 410 Gone); later events are sent again."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    session.flush()
    audit.record_for(session, caller, "webhook.enable", "webhook_endpoint", endpoint.id)
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
    audit.record_for(session, caller, "webhook.rotate_job_secret", "tenant", caller.tenant_id)
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


# ---------------------------------------------------------------- delivery records

def list_job_deliveries(session: Session, caller: Caller, job_id: str, *, limit: int = 100,
                        after: str | None = None) -> Page[WebhookDelivery]:
    """A job's deliveries, oldest first: those after the delivery `after`."""
    job = get_owned(session, caller, Job, job_id, "job")
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job.id,
                                          WebhookDelivery.tenant_id == caller.tenant_id)
    return keyset_page(session, caller, WebhookDelivery, query, after=after, limit=limit,
                       what="webhook delivery", newest_first=False)


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
    audit.record_for(session, caller, "delivery.redeliver", "webhook_delivery", copy.id,
                     original=str(original.id), job_id=str(original.job_id or "") or None)
    return copy
