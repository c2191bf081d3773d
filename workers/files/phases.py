"""What file-job phases share: their heartbeat, letting a failed phase go, and moving a job on."""

from __future__ import annotations

import logging
import uuid

from app.errors import describe_error
from app.settings import Settings
from app.store import chunks as chunk_store
from app.store import phases as phase_store
from workers.context import WorkerContext
from workers.leases import PhaseLease

log = logging.getLogger(__name__)


def phase_lease(context: WorkerContext, job_id: uuid.UUID, attempt: int,
                status: str) -> PhaseLease:
    """The heartbeat of a job-wide phase (`validating` or `finalizing`) held by `attempt`."""
    lease_seconds = context.settings.lease_seconds
    return PhaseLease(context.sessions,
                      lambda session: phase_store.renew_phase(session, job_id, attempt, status,
                                                              lease_seconds),
                      context.settings.lease_heartbeat_seconds, name=f"{status} {job_id}",
                      stall_seconds=context.settings.stall_seconds,
                      release=lambda session, why: phase_store.release_phase(
                          session, job_id, attempt, status, why))


def release_phase(context: WorkerContext, job_id: uuid.UUID, attempt: int, status: str,
                  exc: BaseException) -> None:
    """Let a phase that raised go at once, saying why, for the reconciler to retry or give up."""
    log.exception("%s of job %s failed on attempt %d", status, job_id, attempt)
    with context.sessions.begin() as session:
        phase_store.release_phase(session, job_id, attempt, status, describe_error(exc))


def dispatch_limits(settings: Settings) -> dict[str, float]:
    """The keyword arguments of `dispatch_chunks` that come from settings."""
    return {"job_window": settings.max_running_chunks_per_job,
            "tenant_limit": settings.max_running_chunks_per_tenant,
            "grace_seconds": settings.queued_grace_seconds}


def dispatch_next(context: WorkerContext, tenant_id: uuid.UUID) -> None:
    """Hand the tenant's free chunk slots out, and publish those chunks after commit."""
    with context.sessions.begin() as session:
        following = chunk_store.dispatch_chunks(session, tenant_id,
                                                **dispatch_limits(context.settings))
    if following:
        context.publisher.publish_chunks(following)
