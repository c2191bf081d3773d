"""The API's JSON views of stored rows: an ORM row in, a dict out (no session, no HTTP).

Webhook payloads embed the job's view, so `app.services.webhooks` uses these too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.domain.events import EVENT_TYPES, event_format, listed_events
from app.orm import File, Job, WebhookDelivery, WebhookEndpoint


def progress(job: Job) -> dict[str, float | None]:
    """Rows per second since the job started, and the time left at that rate."""
    done = job.completed_count + job.failed_count
    if not job.started_at or not done:
        return {"rows_per_second": None, "eta_seconds": None}
    end = job.finished_at or datetime.now(UTC)
    rate = done / max((end - job.started_at).total_seconds(), 1e-3)
    left = job.total_count - done
    return {"rows_per_second": round(rate, 1),
            "eta_seconds": round(left / rate, 1) if left > 0 and not job.finished_at else 0.0}


def job_usage(job: Job) -> dict[str, Any]:
    """What the job's kept results cost (a job not yet scored has used nothing)."""
    return {"rows": (job.completed_count or 0) + (job.failed_count or 0),
            "model_seconds": round(job.model_seconds or 0.0, 6),
            "bytes_in": job.bytes_in or 0, "bytes_out": job.bytes_out or 0}


def job_summary(job: Job) -> dict[str, Any]:
    """The public view of a job."""
    return {
        "id": str(job.id),
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "model": job.model_name,
        "model_version": (job.options or {}).get("model_version"),
        "variant": (job.options or {}).get("variant", "fp32"),
        "priority": job.priority,
        "queue": (job.options or {}).get("queue"),
        "request_counts": {"total": job.total_count, "completed": job.completed_count,
                           "failed": job.failed_count},
        "metadata": job.job_metadata or {},
        "webhook_url": job.webhook_url,
        "attempt": job.attempt,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "error": ({"code": job.error_code, "message": job.error_message}
                  if job.error_code else None),
        **progress(job),
        "usage": job_usage(job),
        "results_expire_at": job.results_expire_at,
        "results_expired": job.results_expired_at is not None or (
            job.results_expire_at is not None and job.results_expire_at <= datetime.now(UTC)),
        **({"input_file": str(job.input_file_id) if job.input_file_id else None,
            "output_file": str(job.output_file_id) if job.output_file_id else None,
            "error_file": str(job.error_file_id) if job.error_file_id else None,
            "output_format": job.options.get("output_format"),
            "parent_id": str(job.parent_id) if job.parent_id else None}
           if job.kind == "file" else {}),
    }


def file_summary(record: File) -> dict:
    return {"id": str(record.id), "object": "file", "purpose": record.purpose,
            "filename": record.filename, "format": record.format,
            "compression": record.compression, "bytes": record.bytes,
            "row_count": record.row_count, "sha256": record.sha256,
            "created_at": record.created_at, "expires_at": record.expires_at}


def endpoint_summary(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    body = {"id": str(endpoint.id), "object": "webhook_endpoint", "url": endpoint.url,
            "events": listed_events(endpoint.events) or list(EVENT_TYPES),
            "event_format": event_format(endpoint.events), "description": endpoint.description,
            "enabled": endpoint.disabled_at is None, "disabled_at": endpoint.disabled_at,
            "disabled_reason": endpoint.disabled_reason, "created_at": endpoint.created_at,
            "secret_rotated_at": endpoint.secret_rotated_at}
    if secret is not None:
        body["secret"] = secret
    return body


def delivery_state(delivery: WebhookDelivery) -> str:
    if delivery.delivered_at:
        return "delivered"
    if delivery.failed_at:
        return "failed"
    return "pending"


def delivery_summary(delivery: WebhookDelivery) -> dict[str, Any]:
    return {"id": str(delivery.id), "object": "webhook_delivery", "event": delivery.event,
            "webhook_id": delivery.event_id,
            "job_id": str(delivery.job_id) if delivery.job_id else None,
            "endpoint_id": str(delivery.endpoint_id) if delivery.endpoint_id else None,
            "url": delivery.url, "state": delivery_state(delivery), "attempts": delivery.attempts,
            "next_attempt_at": None if delivery.delivered_at or delivery.failed_at
            else delivery.next_attempt_at,
            "last_status_code": delivery.last_status_code, "last_error": delivery.last_error,
            "response_ms": delivery.response_ms, "created_at": delivery.created_at,
            "delivered_at": delivery.delivered_at, "failed_at": delivery.failed_at,
            "history": delivery.history or []}


def list_page(data: list[dict[str, Any]], has_more: bool, **extra: Any) -> dict[str, Any]:
    """Every list's envelope: the page, its first and last ids (pass `last_id` as `after` for
    the next page) and whether there is one."""
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more, **extra}
