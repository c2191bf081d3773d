"""The dialect's JSON views: Kiln's file and job rows as the official client reads them, every
timestamp in integer Unix seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.domain.openai_batch import STATUS
from app.orm import File, Job


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def file_object(record: File) -> dict[str, Any]:
    return {"id": str(record.id), "object": "file", "bytes": record.bytes,
            "created_at": unix(record.created_at), "filename": record.filename,
            "purpose": record.purpose, "status": "processed", "status_details": None,
            "expires_at": unix(record.expires_at)}


def request_counts(job: Job, state: dict[str, Any]) -> dict[str, int]:
    """Exact once the files are written; before, Kiln's row counts read as lines (a line of
    several inputs counts as its share)."""
    total = state.get("lines", 0)
    if "completed" in state:
        return {"total": total, "completed": state["completed"], "failed": state["failed"]}
    rows, accepted = state.get("rows") or 0, total - state.get("rejected", 0)
    scale = accepted / rows if rows else 0.0
    completed = int((job.completed_count or 0) * scale)
    failed = state.get("rejected", 0) + int((job.failed_count or 0) * scale)
    return {"total": total, "completed": completed, "failed": failed}


def batch_object(job: Job) -> dict[str, Any]:
    state = (job.options or {}).get("openai") or {}
    status = STATUS[job.status]
    ended = unix(job.finished_at)
    errors = state.get("errors") or []
    if status == "failed" and not errors and job.error_code:
        errors = [{"code": job.error_code, "message": job.error_message, "param": None,
                   "line": None}]
    return {
        "id": str(job.id), "object": "batch", "endpoint": state.get("endpoint"),
        "model": job.model_name, "input_file_id": state.get("input_file_id"),
        "completion_window": state.get("completion_window"), "status": status,
        "output_file_id": state.get("output_file_id"), "error_file_id": state.get("error_file_id"),
        "created_at": unix(job.created_at), "in_progress_at": unix(job.started_at),
        "expires_at": unix(job.expires_at),
        "finalizing_at": ended if status in ("completed", "finalizing") else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": state.get("cancelling_at"),
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": request_counts(job, state),
        "errors": {"object": "list", "data": errors} if errors else None,
        "metadata": job.job_metadata or None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    }


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}
