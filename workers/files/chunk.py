"""One chunk of a file job: claim it, score it batch by batch into attempt-named parts, commit."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from app.errors import LeaseLost, describe_error
from app.formats import ChunkPlan, open_reader
from app.orm import File, Job, Model
from app.services.outputs import discard_parts, open_part, part_uri
from app.store import chunks as chunk_store
from app.store.lifecycle import Usage
from app.store.outbox import record_progress_event
from workers.context import WorkerContext
from workers.files.finalizing import finalize_if_done
from workers.files.phases import dispatch_next
from workers.leases import PhaseLease
from workers.runtime.clocked import ClockedModel
from workers.scoring import RowContext, score_batch, score_columns
from workers.small_jobs import SmallJobs

log = logging.getLogger(__name__)


def chunk_lease(context: WorkerContext, job_id: uuid.UUID, index: int, attempt: int) -> PhaseLease:
    """The heartbeat of one chunk held by `attempt`, between (and during) its model batches."""
    lease_seconds = context.settings.lease_seconds
    return PhaseLease(context.sessions,
                      lambda session: chunk_store.renew_chunk(session, job_id, index, attempt,
                                                              lease_seconds),
                      context.settings.lease_heartbeat_seconds, name=f"chunk {job_id}/{index}",
                      stall_seconds=context.settings.stall_seconds,
                      release=lambda session, why: chunk_store.release_chunk(
                          session, job_id, index, attempt, why))


def run_chunk(context: WorkerContext, job_id: uuid.UUID, index: int) -> dict[str, int] | None:
    """Score one chunk in batches into attempt-named parts; commit counts and parts at the end."""
    with context.sessions.begin() as session:
        claimed = chunk_store.claim_chunk(session, job_id, index, context.settings.lease_seconds)
    if claimed is None:
        return None
    try:
        with chunk_lease(context, job_id, index, claimed.attempt) as lease:
            scored = ChunkRun.load(context, job_id, index, claimed).score(lease)
    except LeaseLost:
        log.info("chunk %s/%d lost its lease; another attempt owns it", job_id, index)
        return None
    except Exception as exc:
        log.exception("chunk %s/%d failed on attempt %d", job_id, index, claimed.attempt)
        with context.sessions.begin() as session:
            chunk_store.release_chunk(session, job_id, index, claimed.attempt,
                                      describe_error(exc))
        raise
    if scored is None:
        return None
    dispatch_next(context, scored.tenant_id)  # the slot may go to another job of the tenant
    finalize_if_done(context, job_id)
    return {"rows": scored.completed + scored.failed, "completed": scored.completed,
            "failed": scored.failed}


@dataclass
class ChunkRun:
    """A claimed chunk with what scoring it needs, and its counts so far."""

    context: WorkerContext
    job_id: uuid.UUID
    index: int
    attempt: int
    tenant_id: uuid.UUID
    plan: ChunkPlan
    source: File
    model: Any
    signature: dict[str, Any]
    batch_rows: int
    rows: RowContext
    file_rows: int  # the whole input's, to share its bytes among the chunks
    input_uri: str  # the input, or the staging copy of a compressed input (`decoded_uri`)
    output_format: str
    small_jobs: SmallJobs  # scored between batches, so they never wait for this chunk
    completed: int = 0
    failed: int = 0
    bytes_out: int = 0

    @classmethod
    def load(cls, context: WorkerContext, job_id: uuid.UUID, index: int, claimed) -> ChunkRun:
        with context.sessions() as session:
            job = session.get(Job, job_id)
            source = session.get(File, job.input_file_id)
            model_row = session.get(Model, job.model_id)
            options = dict(job.options)
            model = context.model(session, job.model_id)
        decoded = options.get("decoded_uri")
        offsets = options.get("chunk_offsets") or []
        start_offset, end_offset = offsets[index] if index < len(offsets) else (0, 0)
        return cls(context, job_id, index, claimed.attempt, job.tenant_id,
                   ChunkPlan(claimed.start_row, claimed.end_row, start_offset, end_offset),
                   source, ClockedModel(model), dict(model_row.signature),
                   context.batch_size(dict(model_row.processing)),
                   RowContext(options.get("id_column"), tuple(options.get("keep_columns") or ())),
                   job.total_count, decoded or source.uri, options.get("output_format", "jsonl"),
                   SmallJobs(context, options.get("queue")))

    @property
    def columnar(self) -> bool:
        """Whether rows go model to part as Arrow tables (`score_columns`): a tabular model on
        a typed input (a JSONL file's values may change type from row to row)."""
        return (hasattr(self.model, "run_arrays") and not self.rows.keep_columns
                and self.source.format in ("csv", "parquet"))

    @property
    def read_rows(self) -> int:
        """Rows parsed at once: many for a tabular model (one model call), a bucket for a text
        model to sort by length (the model batches within it)."""
        tuning = self.context.settings.tuning
        wanted = tuning.file_batch_rows if self.columnar else tuning.text_bucket_rows
        return max(self.batch_rows, wanted)

    def score(self, lease: PhaseLease) -> ChunkRun | None:
        """Score every batch into the parts, then commit; None when the chunk stopped (lost,
        cancelled, or its job ended elsewhere)."""
        base = self.context.settings.resolved_storage_url
        ext = {"results": "arrow" if self.columnar else "jsonl", "errors": "jsonl"}
        uris = {kind: part_uri(base, self.job_id, self.index, self.attempt, kind, ext[kind])
                for kind in ("results", "errors")}
        handles = {kind: open_part(uri, with_csv=self.output_format == "csv")
                   for kind, uri in uris.items()}
        try:
            try:
                scored = self.score_batches(handles, lease)
            finally:
                self.small_jobs.close()  # their flags cleared; a message for any still waiting
                for handle in handles.values():
                    handle.close()
            if scored:
                lease.check()
        except BaseException:
            discard_parts(uris.values())  # not committed: no chunk row will name these parts
            raise
        if not scored:  # stopped (cancelled, or the job ended elsewhere) before its commit
            discard_parts(uris.values())
            return None
        lease.stop()  # the commit ends the lease (fenced: it fails if the lease was lost)
        counts = {"results": self.completed, "errors": self.failed}
        named = {kind: uri if counts[kind] else None for kind, uri in uris.items()}
        committed = self.commit(named)
        # the parts the chunk row does not name (an empty kind, or all when fenced off)
        discard_parts([uri for kind, uri in uris.items() if not committed or named[kind] is None])
        return self if committed else None

    def score_batches(self, handles: dict[str, Any], lease: PhaseLease) -> bool:
        compression = None if self.input_uri != self.source.uri else self.source.compression
        reader = open_reader(self.source.format, self.input_uri, compression)
        strings = (self.rows.id_column,) if self.rows.id_column else ()
        for batch in reader.read(self.plan, self.read_rows, string_columns=strings):
            lease.check()
            scored = self.columnar and score_columns(batch, self.model, self.signature, self.rows,
                                                     self.batch_rows)
            results, errors = scored or score_batch(batch, self.model, self.signature, self.rows)
            self.completed += handles["results"].write(results)
            self.failed += handles["errors"].write(errors)
            if not self.still_wanted():
                return False
            self.small_jobs.serve()
        self.bytes_out = sum(handle.sink.tell() for handle in handles.values())
        return True

    def still_wanted(self) -> bool:
        """Renew the lease after a batch; stop when it is lost or the job no longer runs, and
        on a cancel stop the chunk where it is."""
        settings = self.context.settings
        with self.context.sessions.begin() as session:
            status = chunk_store.renew_chunk(session, self.job_id, self.index, self.attempt,
                                             settings.lease_seconds)
        if status is None:
            raise LeaseLost(f"chunk {self.job_id}/{self.index}: the lease is another attempt's")
        if status == "cancelling":
            with self.context.sessions.begin() as session:
                chunk_store.cancel_chunk(session, self.job_id, self.index, self.attempt)
            finalize_if_done(self.context, self.job_id)
            return False
        return status == "running"  # else the job ended elsewhere (failed, expired)

    def commit(self, named: dict[str, str | None]) -> bool:
        """The chunk's counts and the parts it names (None: an empty kind), fenced by attempt,
        with an opt-in progress event."""
        with self.context.sessions.begin() as session:
            done = chunk_store.commit_chunk(
                session, self.job_id, self.index, self.attempt, completed=self.completed,
                failed=self.failed, output_uri=named["results"], error_uri=named["errors"],
                usage=self.usage())
            if done:
                record_progress_event(session, self.job_id,
                                      self.context.settings.progress_event_seconds)
        return done


    def usage(self) -> Usage:
        """Model seconds, the chunk's share of the input's bytes (by rows; the shares add up to
        the file's size), and the bytes of the parts written."""
        total, size = max(self.file_rows, 1), self.source.bytes or 0
        bytes_in = size * self.plan.end_row // total - size * self.plan.start_row // total
        return Usage(self.model.seconds, bytes_in, self.bytes_out)

