"""Turn ORM rows into the API's response shapes: pure functions, row in, dict out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.orm import Job


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
        **({"input_file": str(job.input_file_id) if job.input_file_id else None,
            "output_file": str(job.output_file_id) if job.output_file_id else None,
            "error_file": str(job.error_file_id) if job.error_file_id else None,
            "output_format": job.options.get("output_format"),
            "parent_id": str(job.parent_id) if job.parent_id else None}
           if job.kind == "file" else {}),
    }
