"""The audit log's use cases: record a change (in its own transaction) and read the log.

The actor is the calling API key's prefix, else the process's origin (`cli:<os user>` for the
operator's commands, see `app.origin`), else `system`; the request id and the client's address
come from the origin the API sets per request.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from app import origin
from app.orm import AuditEvent
from app.store import audit as audit_store
from app.store.audit import Event

SYSTEM = "system"


class Caller(Protocol):
    """What the audit needs of `app.services.auth.Caller` (which records key changes here)."""

    tenant_id: uuid.UUID
    key_prefix: str | None


def actor_of(caller: Caller | None) -> str:
    if caller is not None and caller.key_prefix:
        return caller.key_prefix
    return origin.current().actor or SYSTEM


def record(session: Session, action: str, target_type: str, target_id: Any, *,
           tenant_id: uuid.UUID | None, caller: Caller | None = None,
           details: dict[str, Any] | None = None) -> None:
    """Append an event for a change made in `session`'s transaction. `details` is small and
    never holds a secret."""
    now = origin.current()
    audit_store.append(session, Event(
        action=action, target_type=target_type,
        target_id=None if target_id is None else str(target_id), tenant_id=tenant_id,
        actor=actor_of(caller), request_id=now.request_id, client_ip=now.client_ip,
        details=details))


def record_for(session: Session, caller: Caller, action: str, target_type: str, target_id: Any,
               **details: Any) -> None:
    """`record` for a change the caller made in its own tenant."""
    record(session, action, target_type, target_id, tenant_id=caller.tenant_id, caller=caller,
           details=details or None)


def submit_fields(caller: Caller, action: str) -> dict[str, str | None]:
    """The audit keys a new job's row carries into the submit statement (`app.store.audit`)."""
    now = origin.current()
    return {"audit_action": action, "audit_actor": actor_of(caller),
            "audit_request_id": now.request_id, "audit_client_ip": now.client_ip}


def list_events(session: Session, caller: Caller, *, limit: int, after: int | None = None,
                action: str | None = None, target_id: str | None = None,
                since: datetime | None = None) -> list[AuditEvent]:
    """The caller's tenant's events, newest first."""
    return audit_store.list_events(session, caller.tenant_id, limit=limit, after=after,
                                   action=action, target_id=target_id, since=since)
