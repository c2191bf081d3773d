"""Where a file job's message leads: plan it, finalize it, or check whether it is done."""

from __future__ import annotations

import uuid

from app.store import phases as phase_store
from workers.context import WorkerContext
from workers.files.finalizing import finalize, finalize_if_done
from workers.files.planning import validate_and_plan


def advance(context: WorkerContext, job_id: uuid.UUID, status: str) -> dict | None:
    """Move a file job on from wherever it stands: plan it, or finalize it."""
    if status == "validating":
        dispatched = validate_and_plan(context, job_id)
        if dispatched:
            context.publisher.publish_chunks(dispatched)
        return {"chunks": len(dispatched)}
    if status == "finalizing":
        with context.sessions.begin() as session:
            attempt = phase_store.claim_phase(session, job_id, "finalizing",
                                              context.settings.lease_seconds)
        return {"status": finalize(context, job_id, attempt)} if attempt else None
    return {"status": finalize_if_done(context, job_id)}
