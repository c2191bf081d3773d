"""Webhook deliveries in the store: find due rows, claim an attempt, record its outcome.

Each attempt is claimed with a short lease (`sending_until`) and recorded fenced by its attempt
number, so a dispatcher that stalls cannot overwrite a newer attempt's outcome.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

PENDING = "delivered_at IS NULL AND failed_at IS NULL"

CANDIDATES = text(f"""
WITH due AS (
    SELECT id, next_attempt_at,
           row_number() OVER (PARTITION BY lower(substring(url FROM '^[^:]+://([^/?#]+)'))
                              ORDER BY next_attempt_at, id) AS host_place,
           row_number() OVER (PARTITION BY tenant_id ORDER BY next_attempt_at, id) AS tenant_place
    FROM webhook_deliveries
    WHERE {PENDING} AND next_attempt_at <= now()
      AND (sending_until IS NULL OR sending_until <= now()))
SELECT d.id, d.tenant_id, d.endpoint_id, d.event_id, d.url, d.payload
FROM webhook_deliveries d JOIN due ON due.id = d.id
WHERE due.host_place <= :per_host AND due.tenant_place <= :per_tenant
  AND d.delivered_at IS NULL AND d.failed_at IS NULL AND d.next_attempt_at <= now()
  AND (d.sending_until IS NULL OR d.sending_until <= now())
ORDER BY due.next_attempt_at, d.id
LIMIT :scan
FOR UPDATE OF d SKIP LOCKED
""")

CLAIM = text("""
UPDATE webhook_deliveries
SET attempts = attempts + 1, sending_until = now() + make_interval(secs => :lease_seconds)
WHERE id = ANY(CAST(:ids AS uuid[]))
RETURNING id, attempts
""")

RECORD = text(f"""
UPDATE webhook_deliveries
SET sending_until = NULL, last_status_code = :status_code, last_error = :error,
    response_ms = :response_ms,
    delivered_at = CASE WHEN :state = 'delivered' THEN now() END,
    failed_at = CASE WHEN :state = 'failed' THEN now() END,
    next_attempt_at = now() + make_interval(secs => :delay_seconds),
    history = history || jsonb_build_array(jsonb_build_object(
        'attempt', attempts, 'at', now(), 'status_code', CAST(:status_code AS int),
        'error', CAST(:error AS text), 'response_ms', CAST(:response_ms AS int)))
WHERE id = :id AND attempts = :attempt AND {PENDING}
""")

DISABLE_ENDPOINT = text(f"""
WITH disabled AS (
    UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = CAST(:reason AS text)
    WHERE id = :endpoint_id AND disabled_at IS NULL RETURNING id)
UPDATE webhook_deliveries SET failed_at = now(), sending_until = NULL,
    last_error = 'endpoint disabled: ' || CAST(:reason AS text)
WHERE endpoint_id = :endpoint_id AND {PENDING}
""")

TRACE_CONTEXTS = text("""
SELECT d.id, j.trace_context FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
WHERE d.id = ANY(CAST(:ids AS uuid[])) AND j.trace_context IS NOT NULL
""")

NEXT_DUE = text(f"""
SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM webhook_deliveries
WHERE {PENDING} AND sending_until IS NULL
""")


def due_deliveries(session: Session, *, per_host: int, per_tenant: int, scan: int) -> list[Any]:
    """Lock due rows, oldest first, a few per receiver host and per tenant."""
    return session.execute(CANDIDATES, {"per_host": per_host, "per_tenant": per_tenant,
                                        "scan": scan}).all()


def trace_contexts(session: Session, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """{delivery id: its job's stored trace context}, for the deliveries that have one."""
    return dict(session.execute(TRACE_CONTEXTS, {"ids": ids}).all())


def start_attempts(session: Session, ids: list[uuid.UUID], lease_seconds: float) -> dict:
    """Start one attempt on each delivery: {id: attempt number}."""
    return dict(session.execute(CLAIM, {"ids": ids, "lease_seconds": lease_seconds}).all())


def record_attempt(session: Session, delivery_id: uuid.UUID, attempt: int, *, state: str,
                   status_code: int | None, error: str | None, response_ms: int | None,
                   delay_seconds: float) -> None:
    """An attempt's outcome (`delivered`, `failed` or `retry`), fenced by its attempt number."""
    session.execute(RECORD, {"id": delivery_id, "attempt": attempt, "status_code": status_code,
                             "error": error, "response_ms": response_ms,
                             "delay_seconds": delay_seconds, "state": state})


def disable_endpoint(session: Session, endpoint_id: uuid.UUID, reason: str) -> None:
    """Turn an endpoint off and fail its pending deliveries."""
    session.execute(DISABLE_ENDPOINT, {"endpoint_id": endpoint_id, "reason": reason})


def next_due_seconds(session: Session) -> float | None:
    """Seconds until the next pending delivery falls due (negative: overdue), or None."""
    due = session.scalar(NEXT_DUE)
    return None if due is None else float(due)
