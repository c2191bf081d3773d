"""The finalizing phase: join the chunks' parts in input order into the job's files, then end it.

Finalize holds its lease with a heartbeat for as long as the join takes, records each joined
file as soon as it is written (so an attempt after a lost lease joins only what is missing),
and ends the job through the store, fenced by its attempt.
"""

from __future__ import annotations

import logging
import uuid

from app.errors import LeaseLost
from app.orm import Job
from app.services.outputs import finished_parts, write_joined
from app.storage import Storage
from app.store import phases as phase_store
from workers.context import WorkerContext
from workers.files.phases import phase_lease, release_phase
from workers.leases import PhaseLease

log = logging.getLogger(__name__)

Joined = dict[str, tuple[str, int, str]]  # kind: (uri, bytes, sha256)


def finalize_if_done(context: WorkerContext, job_id: uuid.UUID) -> str | None:
    """When no chunk is left to run: cancel, or join the parts into the job's files and end it."""
    with context.sessions.begin() as session:
        state = phase_store.chunk_state(session, job_id)
        if state is None:
            return None
        if state.status == "cancelling" and state.running_chunks == 0:
            phase_store.end_cancelled(session, job_id)
            return "cancelled"
        if state.status != "running" or state.open_chunks:
            return None
        attempt = phase_store.claim_finalize(session, job_id, context.settings.lease_seconds)
    if attempt is None:
        return None
    return finalize(context, job_id, attempt)


def finalize(context: WorkerContext, job_id: uuid.UUID, attempt: int) -> str | None:
    """Join the parts under the finalizing lease, then end the job; a lost lease writes nothing
    more, and an error lets the lease go at once for the reconciler to retry."""
    try:
        with phase_lease(context, job_id, attempt, "finalizing") as lease:
            written = join_parts(context, job_id, attempt, lease)
            lease.check()
            lease.stop()  # ending the job ends the lease (fenced by attempt)
            with context.sessions.begin() as session:
                return phase_store.end_finalized(session, job_id, attempt, written)
    except LeaseLost:
        log.info("finalizing %s: lost the lease; another attempt owns it", job_id)
        return None
    except Exception as exc:
        release_phase(context, job_id, attempt, "finalizing", exc)
        raise


def join_parts(context: WorkerContext, job_id: uuid.UUID, attempt: int,
               lease: PhaseLease) -> Joined:
    """Join the parts in input order into output and error files, as (uri, bytes, sha256) per
    kind. A file an earlier attempt joined and recorded is kept, not joined again: the parts
    of a finalizing job no longer change."""
    base = context.settings.resolved_storage_url
    with context.sessions() as session:
        job = session.get(Job, job_id)
        fmt = job.options.get("output_format", "jsonl")
        joined = dict(job.options.get("joined") or {})
        parts = {kind: finished_parts(session, job, kind, input_order=True)
                 for kind in ("results", "errors")}
        decoded = job.options.get("decoded_uri")
    if decoded:  # the chunks are all done: nothing reads the staging copy of the input again
        Storage.remove(decoded)
    written = {}
    for kind, uris in parts.items():
        earlier = joined.get(kind)
        if earlier and earlier.get("format") == fmt and earlier.get("parts") == len(uris):
            written[kind] = (earlier["uri"], earlier["bytes"], earlier["sha256"])
            continue
        uri, size, sha256 = write_joined(f"{base.rstrip('/')}/jobs/{job_id}/{kind}.a{attempt}.{fmt}",
                                         fmt, uris, checkpoint=lease.check)
        written[kind] = (uri, size, sha256)
        record = {"uri": uri, "bytes": size, "sha256": sha256, "format": fmt, "parts": len(uris)}
        with context.sessions.begin() as session:
            if not phase_store.record_joined(session, job_id, attempt, kind, record):
                raise LeaseLost(f"finalizing {job_id}: the lease is another attempt's now")
        log.info("finalizing %s: joined %s (%d bytes, %d parts)", job_id, kind, size, len(uris))
    return written
