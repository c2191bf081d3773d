"""The audit log in the store: append an event, list a tenant's, and the retention sweep.

`audit_events` is append-only in Postgres itself (migration 0010): a trigger refuses UPDATE,
DELETE and TRUNCATE unless the transaction has set `kiln.audit_retention` to `on`, which only
`prune` does. Events are written in the transaction of the change they record, so a change that
rolls back leaves no event, and an event never describes a change that did not happen.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from app.orm import AuditEvent

EVENTS = AuditEvent.__table__

# Set in the sweep's transaction only: the trigger then lets its DELETE through.
ALLOW_PRUNE = text("SET LOCAL kiln.audit_retention = 'on'")
PRUNE = text("""
DELETE FROM audit_events WHERE id IN (
    SELECT id FROM audit_events WHERE at < :before ORDER BY id LIMIT :limit)
""")

# The rows of the submit statement (`app.services.jobs.INSERT_JOBS`) that carry these keys,
# besides the job's columns, are audited by the same statement.
SUBMIT_KEYS = ("audit_action", "audit_actor", "audit_request_id", "audit_client_ip")
AUDIT_SUBMITTED = """
audited AS (
    INSERT INTO audit_events (at, tenant_id, actor, action, target_type, target_id, request_id,
                              client_ip, details)
    SELECT i.created_at, i.tenant_id, a.audit_actor, a.audit_action, 'job', i.id::text,
           a.audit_request_id, a.audit_client_ip,
           jsonb_build_object('model', i.model_name, 'kind', i.kind, 'rows', i.total_count)
    FROM inserted i
    JOIN jsonb_to_recordset((SELECT rows FROM document))
         AS a(id uuid, audit_action text, audit_actor text, audit_request_id text,
              audit_client_ip text) ON a.id = i.id
    WHERE a.audit_action IS NOT NULL)
"""


@dataclass(frozen=True)
class Event:
    """One change to record: what was done to which thing, by whom, from where."""

    action: str
    target_type: str
    target_id: str | None
    tenant_id: uuid.UUID | None
    actor: str
    request_id: str | None = None
    client_ip: str | None = None
    details: dict[str, Any] | None = None


def append(session: Session, event: Event) -> None:
    """Write `event` in the session's transaction (committed, or rolled back, with the change)."""
    session.execute(insert(EVENTS).values(
        tenant_id=event.tenant_id, actor=event.actor[:200], action=event.action,
        target_type=event.target_type, target_id=event.target_id,
        request_id=event.request_id, client_ip=event.client_ip, details=event.details or {}))


def list_events(session: Session, tenant_id: uuid.UUID | None, *, limit: int,
                after: int | None = None, action: str | None = None,
                target_id: str | None = None, since: datetime | None = None,
                all_tenants: bool = False) -> list[AuditEvent]:
    """Newest first, `limit` of them older than the event `after`; one tenant's unless
    `all_tenants` (the operator's CLI)."""
    query = select(AuditEvent)
    if not all_tenants:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    if after is not None:
        query = query.where(AuditEvent.id < after)
    if action:
        query = query.where(AuditEvent.action == action)
    if target_id:
        query = query.where(AuditEvent.target_id == target_id)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    return list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit)))


def prune(session: Session, before: datetime, limit: int = 10_000) -> int:
    """The retention sweep: delete up to `limit` events older than `before`; the only path the
    append-only trigger lets through."""
    session.execute(ALLOW_PRUNE)
    return session.execute(PRUNE, {"before": before, "limit": limit}).rowcount
