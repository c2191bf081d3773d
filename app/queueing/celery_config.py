"""Celery configuration shared by the API's publisher and the workers, and the task names."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

RUN_JOB = "kiln.run_job"
RUN_CHUNK = "kiln.run_chunk"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Reliability settings from DESIGN.md: late acks, requeue on worker loss, prefetch 1."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_seconds},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2.0,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_seconds,
        "worker_enable_soft_shutdown_on_idle": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        "worker_hijack_root_logger": False,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.1,
                                      "interval_step": 0.2, "interval_max": 0.5},
    }
