"""File jobs: validate and plan into chunks, score chunks in parallel, finalize.

Each phase claims its unit with a conditional UPDATE that bumps `attempt` and sets a lease, and
fences every later write with that attempt, exactly like inline jobs. A chunk's rows become
JSONL part files named by attempt, so a re-run writes new parts and only the committed attempt's
parts are ever read: one output row per input row however often a chunk runs.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import fsspec
import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import InvalidInput, LeaseLost, describe_error
from app.formats import ChunkPlan, open_reader
from app.orm import File, Job, Model
from app.services.files import record_output_file
from app.services.outputs import finished_parts, part_uri, write_joined
from app.services.webhooks import record_job_events, record_progress_event
from app.settings import Settings
from workers.context import WorkerContext
from workers.leases import PhaseLease
from workers.scoring import RowContext, score_batch

log = logging.getLogger(__name__)

CLAIM_PHASE = text("""
UPDATE jobs SET attempt = attempt + 1, last_error = NULL,
    lease_expires_at = now() + make_interval(secs => :lease_seconds),
    started_at = coalesce(started_at, now())
WHERE id = :job_id AND kind = 'file' AND status = :status
  AND (lease_expires_at IS NULL OR lease_expires_at < now())
RETURNING attempt
""")

CLAIM_CHUNK = text("""
UPDATE job_chunks c SET status = 'running', attempt = c.attempt + 1, last_error = NULL,
    lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM jobs j
WHERE c.job_id = :job_id AND c.index = :index AND j.id = c.job_id AND j.status = 'running'
  AND (c.status = 'queued' OR (c.status = 'running' AND c.lease_expires_at < now()))
RETURNING c.attempt, c.start_row, c.end_row
""")

RENEW_CHUNK = text("""
UPDATE job_chunks c SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
FROM jobs j
WHERE c.job_id = :job_id AND c.index = :index AND c.attempt = :attempt AND c.status = 'running'
  AND j.id = c.job_id
RETURNING j.status
""")

RENEW_PHASE = text("""
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
WHERE id = :job_id AND attempt = :attempt AND status = :status
RETURNING status
""")

# A phase that raised lets its lease go at once (the reconciler retries it without waiting a
# lease) and says why, so that a job given up after KILN_MAX_ATTEMPTS names the error.
RELEASE_PHASE = text("""
UPDATE jobs SET lease_expires_at = now(), last_error = :error
WHERE id = :job_id AND attempt = :attempt AND status = :status
""")

RELEASE_CHUNK = text("""
UPDATE job_chunks SET lease_expires_at = now(), last_error = :error
WHERE job_id = :job_id AND index = :index AND attempt = :attempt AND status = 'running'
""")

# Finalize records each joined file as it is written, so that an attempt that follows a lost
# lease joins only what is missing.
RECORD_JOINED = text("""
UPDATE jobs SET options = jsonb_set(options, '{joined}',
    coalesce(options->'joined', '{}'::jsonb) || jsonb_build_object(:kind, CAST(:joined AS jsonb)))
WHERE id = :job_id AND attempt = :attempt AND status = 'finalizing'
RETURNING id
""")

FINISH_CHUNK = text("""
WITH done AS (
    UPDATE job_chunks SET status = 'succeeded', lease_expires_at = NULL, finished_at = now(),
        completed_count = :completed, failed_count = :failed,
        output_uri = :output_uri, error_uri = :error_uri
    WHERE job_id = :job_id AND index = :index AND attempt = :attempt AND status = 'running'
    RETURNING job_id)
UPDATE jobs SET completed_count = completed_count + :completed,
    failed_count = failed_count + :failed
FROM done WHERE jobs.id = done.job_id
RETURNING jobs.id
""")


def job_row(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def required_columns(signature: dict[str, Any]) -> list[str]:
    if signature.get("kind") == "text":
        return [signature.get("text_field", "text")]
    return list(signature.get("columns", []))


def fail_job(session: Session, job_id: uuid.UUID, attempt: int, code: str, message: str) -> None:
    session.execute(text("""
        UPDATE jobs SET status = 'failed', error_code = :code, error_message = :message,
            finished_at = now(), lease_expires_at = NULL
        WHERE id = :job_id AND attempt = :attempt AND status IN ('validating', 'running', 'finalizing')
    """), {"job_id": job_id, "attempt": attempt, "code": code, "message": message[:2000]})
    record_events(session, [job_id])


def record_events(session: Session, job_ids) -> None:
    """Write webhook outbox rows in the transaction that ended the jobs."""
    record_job_events(session, list(job_ids))


def dispatch_limits(settings: Settings) -> dict[str, float]:
    """The keyword arguments of `dispatch_chunks` that come from settings."""
    return {"job_window": settings.max_running_chunks_per_job,
            "tenant_limit": settings.max_running_chunks_per_tenant,
            "grace_seconds": settings.queued_grace_seconds}


def phase_lease(context: WorkerContext, job_id: uuid.UUID, attempt: int,
                status: str) -> PhaseLease:
    """The heartbeat of a job-wide phase (`validating` or `finalizing`) held by `attempt`."""
    params = {"job_id": job_id, "attempt": attempt, "status": status,
              "lease_seconds": context.settings.lease_seconds}
    return PhaseLease(context.sessions, lambda session: session.execute(RENEW_PHASE, params).first(),
                      context.settings.lease_heartbeat_seconds, name=f"{status} {job_id}")


def chunk_lease(context: WorkerContext, job_id: uuid.UUID, index: int, attempt: int) -> PhaseLease:
    """The heartbeat of one chunk held by `attempt`, between (and during) its model batches."""
    params = {"job_id": job_id, "index": index, "attempt": attempt,
              "lease_seconds": context.settings.lease_seconds}
    return PhaseLease(context.sessions, lambda session: session.execute(RENEW_CHUNK, params).first(),
                      context.settings.lease_heartbeat_seconds, name=f"chunk {job_id}/{index}")


def release_phase(context: WorkerContext, job_id: uuid.UUID, attempt: int, status: str,
                  exc: BaseException) -> None:
    """Let a phase that raised go at once, saying why, for the reconciler to retry or give up."""
    log.exception("%s of job %s failed on attempt %d", status, job_id, attempt)
    with context.sessions.begin() as session:
        session.execute(RELEASE_PHASE, {"job_id": job_id, "attempt": attempt, "status": status,
                                        "error": describe_error(exc)})


def validate_and_plan(context: WorkerContext, job_id: uuid.UUID) -> list[tuple]:
    """Check the input file against the model and split it into chunks; returns those to publish."""
    settings = context.settings
    with context.sessions.begin() as session:
        claimed = session.execute(CLAIM_PHASE, {"job_id": job_id, "status": "validating",
                                                "lease_seconds": settings.lease_seconds}).first()
    if claimed is None:
        return []
    try:
        with phase_lease(context, job_id, claimed.attempt, "validating") as lease:
            return plan_chunks(context, job_id, claimed.attempt, lease)
    except LeaseLost:
        log.info("validating %s: lost the lease; another attempt owns it", job_id)
        return []
    except Exception as exc:
        release_phase(context, job_id, claimed.attempt, "validating", exc)
        raise


def plan_chunks(context: WorkerContext, job_id: uuid.UUID, attempt: int,
                lease: PhaseLease) -> list[tuple]:
    """The validating phase under its lease: check columns, plan chunks, start the job."""
    settings = context.settings
    with context.sessions() as session:
        job = job_row(session, job_id)
        source = session.get(File, job.input_file_id) if job.input_file_id else None
        model = session.get(Model, job.model_id)
        options, signature = dict(job.options), dict(model.signature)
    try:
        if source is None:
            raise InvalidInput("the input file was deleted")
        if job.parent_id is not None and not options.get("retry_input_ready"):
            source = extract_failed_rows(context, job.id, job.parent_id, source, lease.check)
            options["retry_input_ready"] = True
        reader = open_reader(source.format, source.uri, source.compression)
        columns = reader.columns()
        id_column = options.get("id_column") or ("custom_id" if "custom_id" in columns else None)
        wanted = required_columns(signature) + ([id_column] if id_column else []) + \
            list(options.get("keep_columns") or [])
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise InvalidInput(f"the input file lacks column(s) {missing}; it has {columns[:20]}")
        plans = reader.plan(settings.tuning.chunk_rows, checkpoint=lease.check)
    except (InvalidInput, OSError, ValueError) as exc:
        detail = getattr(exc, "detail", None) or describe_error(exc, 2000)
        lease.check()
        with context.sessions.begin() as session:
            fail_job(session, job_id, attempt, "invalid_file", detail)
        return []
    total = plans[-1].end_row if plans else 0
    lease.check()
    options.update(id_column=id_column, chunk_offsets=[[p.start_offset, p.end_offset]
                                                       for p in plans])
    with context.sessions.begin() as session:
        moved = session.execute(text("""
            UPDATE jobs SET status = 'running', total_count = :total, lease_expires_at = NULL,
                options = CAST(:options AS jsonb), input_file_id = :input_file_id
            WHERE id = :job_id AND attempt = :attempt AND status = 'validating'
            RETURNING id
        """), {"job_id": job_id, "attempt": attempt, "total": total,
               "options": orjson.dumps(options).decode(), "input_file_id": source.id}).first()
        if moved is None:  # fenced: only the attempt that owns the phase plans the chunks
            return []
        if plans:
            session.execute(text("""
                INSERT INTO job_chunks (job_id, index, tenant_id, start_row, end_row, status,
                    attempt, completed_count, failed_count, lease_expires_at)
                SELECT :job_id, i, :tenant_id, s, e, 'queued', 0, 0, 0, NULL
                FROM unnest(CAST(:indexes AS int[]), CAST(:starts AS bigint[]),
                            CAST(:ends AS bigint[])) AS v(i, s, e)
                ON CONFLICT (job_id, index) DO NOTHING
            """), {"job_id": job_id, "tenant_id": job.tenant_id,
                   "indexes": list(range(len(plans))), "starts": [p.start_row for p in plans],
                   "ends": [p.end_row for p in plans]})
    if not plans:
        finalize_if_done(context, job_id)
        return []
    with context.sessions.begin() as session:
        return dispatch_chunks(session, job.tenant_id, **dispatch_limits(settings))


LOCK_TENANT = text("SELECT 1 FROM tenants WHERE id = :tenant_id FOR NO KEY UPDATE")

DISPATCH = text("""
WITH open AS (
    SELECT c.job_id, c.index, c.status = 'queued' AND c.lease_expires_at IS NULL AS held,
           j.status AS job_status, j.created_at, j.options->>'queue' AS queue
    FROM job_chunks c JOIN jobs j ON j.id = c.job_id
    WHERE c.tenant_id = :tenant_id AND c.status IN ('queued', 'running')
      AND j.status IN ('running', 'cancelling')),
in_flight AS (SELECT job_id, count(*) FILTER (WHERE NOT held) AS n FROM open GROUP BY job_id),
picked AS (
    SELECT job_id, index, queue FROM (
        SELECT o.job_id, o.index, o.queue, o.created_at,
               f.n + row_number() OVER (PARTITION BY o.job_id ORDER BY o.index) AS slot
        FROM open o JOIN in_flight f ON f.job_id = o.job_id
        WHERE o.held AND o.job_status = 'running') numbered
    WHERE slot <= :job_window
    ORDER BY slot, created_at, job_id, index
    LIMIT CASE WHEN :tenant_limit > 0
               THEN greatest(:tenant_limit - (SELECT coalesce(sum(n), 0) FROM in_flight), 0) END)
UPDATE job_chunks c SET lease_expires_at = now() + make_interval(secs => :grace_seconds)
FROM picked
WHERE c.job_id = picked.job_id AND c.index = picked.index
  AND c.status = 'queued' AND c.lease_expires_at IS NULL
RETURNING c.job_id, c.index, picked.queue
""")


def dispatch_chunks(session: Session, tenant_id: uuid.UUID, *, job_window: int, tenant_limit: int,
                    grace_seconds: float) -> list[tuple[uuid.UUID, int, str | None]]:
    """Mark the tenant's next chunks to publish, as (job id, index, queue), within both limits.

    At most `job_window` chunks of one file job, and `tenant_limit` (0: no limit) of all the
    tenant's file jobs, are in flight (published or running); the rest are held back, queued
    with no lease, for whoever frees a slot: a finishing chunk, or the reconciler. Publishing a
    few at a time keeps one tenant's huge file from filling the queue ahead of everybody else's
    work. The slots go round the tenant's jobs, fewest in flight first. The tenant's row lock,
    taken in its own statement so that the count below sees the previous holder's commit, makes
    the limits exact. The caller publishes the returned chunks after commit.
    """
    session.execute(LOCK_TENANT, {"tenant_id": tenant_id})
    rows = session.execute(DISPATCH, {"tenant_id": tenant_id, "job_window": job_window,
                                      "tenant_limit": tenant_limit, "grace_seconds": grace_seconds})
    return sorted((r.job_id, r.index, r.queue) for r in rows)


def extract_failed_rows(context: WorkerContext, job_id: uuid.UUID, parent_id: uuid.UUID,
                        source: File, checkpoint) -> File:
    """Copy the rows the parent job failed into a new input file of the same format."""
    from app.formats import CsvReader, LineReader
    from app.services.outputs import part_rows

    with context.sessions() as session:
        parent = session.get(Job, parent_id)
        error_parts = finished_parts(session, parent, "errors", input_order=True)
    wanted = {row["row_index"] for piece in part_rows(error_parts) for row in piece}
    reader = open_reader(source.format, source.uri, source.compression)
    uri = f"{context.settings.resolved_storage_url.rstrip('/')}/files/{source.tenant_id}/retry-{job_id}"
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(fs._parent(path), exist_ok=True)
    rows = 0
    with fs.open(path, "wb") as out:
        if isinstance(reader, LineReader):
            if isinstance(reader, CsvReader):
                out.write(reader.header())
            for plan in reader.plan(context.settings.tuning.chunk_rows, checkpoint=checkpoint):
                checkpoint()
                for first, lines in reader.lines(plan, 4096):
                    picked = [line for i, line in enumerate(lines) if first + i in wanted]
                    out.write(b"".join(picked))
                    rows += len(picked)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            for plan in reader.plan(context.settings.tuning.chunk_rows, checkpoint=checkpoint):
                checkpoint()
                for batch in reader.read(plan, 4096):
                    keep = [i for i, row in enumerate(batch.rows) if row in wanted]
                    if not keep:
                        continue
                    table = batch.table.take(pa.array(keep))
                    writer = writer or pq.ParquetWriter(out, table.schema)
                    writer.write_table(table)
                    rows += len(keep)
            if writer is not None:
                writer.close()
    digest = hashlib.sha256()
    with fs.open(path, "rb") as written:
        while piece := written.read(1 << 20):
            digest.update(piece)
    with context.sessions.begin() as session:
        record = File(tenant_id=source.tenant_id, purpose="retry_input",
                      filename=f"retry-of-{parent_id}.{source.format}", format=source.format,
                      compression=None, bytes=fs.size(path), sha256=digest.hexdigest(), uri=uri,
                      row_count=rows)
        session.add(record)
        session.flush()
        session.expunge(record)
    return record


def run_chunk(context: WorkerContext, job_id: uuid.UUID, index: int) -> dict[str, int] | None:
    """Score one chunk in batches into attempt-named parts; commit counts and parts at the end."""
    settings = context.settings
    with context.sessions.begin() as session:
        claimed = session.execute(CLAIM_CHUNK, {"job_id": job_id, "index": index,
                                                "lease_seconds": settings.lease_seconds}).first()
    if claimed is None:
        return None
    try:
        with chunk_lease(context, job_id, index, claimed.attempt) as lease:
            return score_chunk(context, job_id, index, claimed, lease)
    except LeaseLost:
        log.info("chunk %s/%d lost its lease; another attempt owns it", job_id, index)
        return None
    except Exception as exc:
        log.exception("chunk %s/%d failed on attempt %d", job_id, index, claimed.attempt)
        with context.sessions.begin() as session:
            session.execute(RELEASE_CHUNK, {"job_id": job_id, "index": index,
                                            "attempt": claimed.attempt,
                                            "error": describe_error(exc)})
        raise


def score_chunk(context: WorkerContext, job_id: uuid.UUID, index: int, claimed,
                lease: PhaseLease) -> dict[str, int] | None:
    """A claimed chunk under its lease: score it batch by batch, then commit it fenced."""
    settings = context.settings
    attempt = claimed.attempt
    with context.sessions() as session:
        job = job_row(session, job_id)
        source = session.get(File, job.input_file_id)
        model_row = session.get(Model, job.model_id)
        signature, processing = dict(model_row.signature), dict(model_row.processing)
        options, tenant_id = dict(job.options), job.tenant_id
        model = context.model(session, job.model_id)
    offsets = options.get("chunk_offsets") or []
    start_offset, end_offset = offsets[index] if index < len(offsets) else (0, 0)
    plan = ChunkPlan(claimed.start_row, claimed.end_row, start_offset, end_offset)
    row_context = RowContext(options.get("id_column"), tuple(options.get("keep_columns") or ()))
    base = settings.resolved_storage_url
    uris = {kind: part_uri(base, job_id, index, attempt, kind) for kind in ("results", "errors")}
    reader = open_reader(source.format, source.uri, source.compression)
    batch_rows = context.batch_size(processing)
    strings = (row_context.id_column,) if row_context.id_column else ()
    completed = failed = 0
    handles = {}
    for kind, uri in uris.items():
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(fs._parent(path), exist_ok=True)
        handles[kind] = fs.open(path, "wb")
    try:
        for batch in reader.read(plan, batch_rows, string_columns=strings):
            lease.check()
            results, errors = score_batch(batch, model, signature, row_context)
            handles["results"].write(b"".join(orjson.dumps(r) + b"\n" for r in results))
            handles["errors"].write(b"".join(orjson.dumps(e) + b"\n" for e in errors))
            completed, failed = completed + len(results), failed + len(errors)
            with context.sessions.begin() as session:
                renewed = session.execute(RENEW_CHUNK, {
                    "job_id": job_id, "index": index, "attempt": attempt,
                    "lease_seconds": settings.lease_seconds}).first()
            if renewed is None:
                log.info("chunk %s/%d lost its lease; another attempt owns it", job_id, index)
                return None
            if renewed.status not in ("running", "cancelling"):
                return None  # the job ended elsewhere (failed, expired)
            if renewed.status == "cancelling":
                with context.sessions.begin() as session:
                    session.execute(text("""
                        UPDATE job_chunks SET status = 'cancelled', lease_expires_at = NULL
                        WHERE job_id = :job_id AND index = :index AND attempt = :attempt
                          AND status = 'running'"""),
                        {"job_id": job_id, "index": index, "attempt": attempt})
                finalize_if_done(context, job_id)
                return None
    finally:
        for handle in handles.values():
            handle.close()
    lease.check()
    with context.sessions.begin() as session:
        done = session.execute(FINISH_CHUNK, {
            "job_id": job_id, "index": index, "attempt": attempt, "completed": completed,
            "failed": failed, "output_uri": uris["results"] if completed else None,
            "error_uri": uris["errors"] if failed else None}).first()
        if done is not None:
            record_progress_event(session, job_id, settings.progress_event_seconds)
    if done is None:
        return None
    with context.sessions.begin() as session:  # the slot may go to another job of the tenant
        following = dispatch_chunks(session, tenant_id, **dispatch_limits(settings))
    if following:
        context.publisher.publish_chunks(following)
    finalize_if_done(context, job_id)
    return {"rows": completed + failed, "completed": completed, "failed": failed}


def finalize_if_done(context: WorkerContext, job_id: uuid.UUID) -> str | None:
    """When no chunk is left to run: cancel, or join the parts into the job's files and end it."""
    settings = context.settings
    with context.sessions.begin() as session:
        state = session.execute(text("""
            SELECT j.status,
                   count(*) FILTER (WHERE c.status IN ('queued', 'running')) AS open_chunks,
                   count(*) FILTER (WHERE c.status = 'running') AS running_chunks
            FROM jobs j LEFT JOIN job_chunks c ON c.job_id = j.id
            WHERE j.id = :job_id GROUP BY j.status"""), {"job_id": job_id}).first()
        if state is None:
            return None
        if state.status == "cancelling" and state.running_chunks == 0:
            session.execute(text("""UPDATE job_chunks SET status = 'cancelled'
                                    WHERE job_id = :job_id AND status = 'queued'"""),
                            {"job_id": job_id})
            ended = session.execute(text("""
                UPDATE jobs SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL
                WHERE id = :job_id AND status = 'cancelling' RETURNING id"""),
                {"job_id": job_id}).first()
            if ended:
                record_events(session, [job_id])
            return "cancelled"
        if state.status != "running" or state.open_chunks:
            return None
        claimed = session.execute(text("""
            UPDATE jobs SET status = 'finalizing', attempt = attempt + 1, last_error = NULL,
                lease_expires_at = now() + make_interval(secs => :lease_seconds)
            WHERE id = :job_id AND status = 'running' RETURNING attempt"""),
            {"job_id": job_id, "lease_seconds": settings.lease_seconds}).first()
    if claimed is None:
        return None
    return finalize(context, job_id, claimed.attempt)


def finalize(context: WorkerContext, job_id: uuid.UUID, attempt: int) -> str | None:
    """Join the parts under the finalizing lease, then end the job; a lost lease writes nothing
    more, and an error lets the lease go at once for the reconciler to retry."""
    try:
        with phase_lease(context, job_id, attempt, "finalizing") as lease:
            written = join_parts(context, job_id, attempt, lease)
            lease.check()
            return end_finalized(context, job_id, attempt, written)
    except LeaseLost:
        log.info("finalizing %s: lost the lease; another attempt owns it", job_id)
        return None
    except Exception as exc:
        release_phase(context, job_id, attempt, "finalizing", exc)
        raise


def join_parts(context: WorkerContext, job_id: uuid.UUID, attempt: int,
               lease: PhaseLease) -> dict[str, tuple[str, int, str]]:
    """Join the parts in input order into output and error files, as (uri, bytes, sha256) per
    kind. A file an earlier attempt joined and recorded is kept, not joined again: the parts
    of a finalizing job no longer change."""
    base = context.settings.resolved_storage_url
    with context.sessions() as session:
        job = job_row(session, job_id)
        fmt = job.options.get("output_format", "jsonl")
        joined = dict(job.options.get("joined") or {})
        parts = {kind: finished_parts(session, job, kind, input_order=True)
                 for kind in ("results", "errors")}
    written = {}
    for kind, uris in parts.items():
        earlier = joined.get(kind)
        if earlier and earlier.get("format") == fmt and earlier.get("parts") == len(uris):
            written[kind] = (earlier["uri"], earlier["bytes"], earlier["sha256"])
            continue
        uri = f"{base.rstrip('/')}/jobs/{job_id}/{kind}.a{attempt}.{fmt}"
        size, sha256 = write_joined(uri, fmt, uris, checkpoint=lease.check)
        written[kind] = (uri, size, sha256)
        record = {"uri": uri, "bytes": size, "sha256": sha256, "format": fmt, "parts": len(uris)}
        with context.sessions.begin() as session:
            if session.execute(RECORD_JOINED, {"job_id": job_id, "attempt": attempt, "kind": kind,
                                               "joined": orjson.dumps(record).decode()}
                               ).first() is None:
                raise LeaseLost(f"finalizing {job_id}: the lease is another attempt's now")
        log.info("finalizing %s: joined %s (%d bytes, %d parts)", job_id, kind, size, len(uris))
    return written


def end_finalized(context: WorkerContext, job_id: uuid.UUID, attempt: int,
                  written: dict[str, tuple[str, int, str]]) -> str | None:
    """Record the joined files and end the job, fenced by the finalizing attempt."""
    with context.sessions() as session:
        fmt = job_row(session, job_id).options.get("output_format", "jsonl")
    with context.sessions.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.attempt != attempt or job.status != "finalizing":
            return None
        counts = {"results": job.completed_count, "errors": job.failed_count}
        files = {kind: record_output_file(session, job.tenant_id, uri=uri,
                                          filename=f"{job_id}-{kind}.{fmt}", fmt=fmt,
                                          purpose="output" if kind == "results" else "errors",
                                          size=size, sha256=sha256,
                                          rows=counts[kind])
                 for kind, (uri, size, sha256) in written.items()}
        job.output_file_id, job.error_file_id = files["results"].id, files["errors"].id
        limit = float(job.options.get("max_failed_fraction", 1.0))
        fraction = job.failed_count / job.total_count if job.total_count else 0.0
        if fraction > limit:
            job.status, job.error_code = "failed", "too_many_failed_rows"
            job.error_message = (f"{job.failed_count} of {job.total_count} rows failed, more "
                                 f"than max_failed_fraction={limit}")
        else:
            job.status = "succeeded"
        job.finished_at, job.lease_expires_at = _now(session), None
        session.flush()
        record_events(session, [job_id])
        return job.status


def _now(session: Session):
    return session.execute(text("SELECT now()")).scalar_one()
