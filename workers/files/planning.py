"""The validating phase: check the input file against the model, plan its chunks, start the job."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from app.errors import InvalidInput, LeaseLost, describe_error
from app.formats import ChunkPlan, LineReader, Reader, open_reader
from app.services.files import check_columns
from app.orm import File, Job, Model
from app.storage import Storage
from app.store import chunks as chunk_store
from app.store import phases as phase_store
from workers.context import WorkerContext
from workers.files.finalizing import finalize_if_done
from workers.files.phases import dispatch_limits, phase_lease, release_phase
from workers.files.retrying import extract_failed_rows
from workers.leases import PhaseLease

log = logging.getLogger(__name__)


def validate_and_plan(context: WorkerContext, job_id: uuid.UUID) -> list[tuple]:
    """Check the input file against the model and split it into chunks; returns those to publish."""
    with context.sessions.begin() as session:
        attempt = phase_store.claim_phase(session, job_id, "validating",
                                          context.settings.lease_seconds)
    if attempt is None:
        return []
    try:
        with phase_lease(context, job_id, attempt, "validating") as lease:
            return plan_chunks(context, job_id, attempt, lease)
    except LeaseLost:
        log.info("validating %s: lost the lease; another attempt owns it", job_id)
        return []
    except Exception as exc:
        release_phase(context, job_id, attempt, "validating", exc)
        raise


def plan_chunks(context: WorkerContext, job_id: uuid.UUID, attempt: int,
                lease: PhaseLease) -> list[tuple]:
    """The validating phase under its lease: check columns, plan chunks, start the job."""
    settings = context.settings
    with context.sessions() as session:
        job = session.get(Job, job_id)
        source = session.get(File, job.input_file_id) if job.input_file_id else None
        signature = dict(session.get(Model, job.model_id).signature)
        options = dict(job.options)
    try:
        source = usable_input(context, job, source, options, lease)
        reader = open_reader(source.format, source.uri, source.compression)
        options["id_column"] = check_columns(reader.columns(), signature, options)
        plans = plan_reader(context, job_id, reader, options, lease,
                            spread=signature.get("kind") == "text")
    except (InvalidInput, OSError, ValueError) as exc:
        if options.get("decoded_uri"):
            Storage.remove(options["decoded_uri"])
        lease.check()
        lease.stop()
        with context.sessions.begin() as session:
            phase_store.fail_validation(session, job_id, attempt, "invalid_file",
                                        getattr(exc, "detail", None) or describe_error(exc, 2000))
        return []
    lease.check()
    lease.stop()  # starting the job ends the validating lease (fenced by attempt)
    options["chunk_offsets"] = [[p.start_offset, p.end_offset] for p in plans]
    with context.sessions.begin() as session:
        if not phase_store.start_running(session, job, attempt,
                                         total=plans[-1].end_row if plans else 0,
                                         options=options, input_file_id=source.id,
                                         chunks=[(p.start_row, p.end_row) for p in plans]):
            return []
    if not plans:
        finalize_if_done(context, job_id)
        return []
    with context.sessions.begin() as session:
        return chunk_store.dispatch_chunks(session, job.tenant_id, **dispatch_limits(settings))


def plan_reader(context: WorkerContext, job_id: uuid.UUID, reader: Reader,
                options: dict[str, Any], lease: PhaseLease, spread: bool = False) -> list[ChunkPlan]:
    """Plan the chunks. A compressed file is decoded once, into a staging copy its chunks read
    at their offsets (`decoded_uri`): each would otherwise decompress from the file's start.

    With `spread` (text models), a file of fewer than two chunks per worker process is planned
    again in smaller chunks (`spread_rows`), so that a few thousand sentences, minutes of work,
    are scored by every process rather than one. A tabular file that small is a fraction of a
    second of work, less than what more chunks would cost (a message, a claim, a part each)."""
    tuning = context.settings.tuning
    chunk_rows = tuning.chunk_rows
    if not reader.compression or not isinstance(reader, LineReader):
        plans = reader.plan(chunk_rows, checkpoint=lease.check)
    else:
        base = context.settings.resolved_storage_url.rstrip("/")
        options["decoded_uri"] = f"{base}/jobs/{job_id}/input.decoded"
        with Storage.open_for_write(options["decoded_uri"]) as stage:
            plans = reader.plan(chunk_rows, checkpoint=lease.check, stage=stage)
    if not spread:
        return plans
    total = plans[-1].end_row if plans else 0
    smaller = spread_rows(total, chunk_rows, context.settings.effective_concurrency,
                          tuning.min_chunk_rows)
    if smaller < chunk_rows:  # offsets are the decoded bytes' either way: no second stage
        plans = reader.plan(smaller, checkpoint=lease.check)
    return plans


def spread_rows(total: int, chunk_rows: int, processes: int, floor: int) -> int:
    """Rows per chunk for a file of `total` rows: `chunk_rows`, or fewer when that makes fewer
    than two chunks per process, but never fewer than `floor` (each chunk costs a claim,
    a part and a commit)."""
    wanted = 2 * max(processes, 1)
    if total <= 0 or -(-total // chunk_rows) >= wanted:
        return chunk_rows
    return min(chunk_rows, max(floor, -(-total // wanted)))


def usable_input(context: WorkerContext, job: Job, source: File | None, options: dict[str, Any],
                 lease: PhaseLease) -> File:
    """The file to plan: the job's input, or for a retry job the parent's failed rows."""
    if source is None:
        raise InvalidInput("the input file was deleted")
    if job.parent_id is not None and not options.get("retry_input_ready"):
        source = extract_failed_rows(context, job.id, job.parent_id, source, lease.check)
        options["retry_input_ready"] = True
    return source
