"""A finished batch's output and error files in the dialect's line format, written once, the
first time the batch is read after its job ended: the job's own result and error rows, joined
back to their input lines, plus the lines refused at create."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator
from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.domain import openai_batch as dialect
from app.domain.states import is_terminal
from app.orm import File, Job
from app.services import files
from app.storage import Storage
from app.store import dialect as dialect_store

OUTPUT_PURPOSE = "batch_output"


def ensure_outputs(session: Session, storage: Storage, job: Job) -> Job:
    """The job, its dialect files written if it has ended and they are not yet."""
    state = (job.options or {}).get("openai") or {}
    if not is_terminal(job.status) or "completed" in state or job.results_expired_at:
        return job  # (results past their retention are gone: no files to write from)
    state = dialect_store.lock_state(session, job.id)  # one writer; the others wait, then see it
    if "completed" in state:
        session.refresh(job)
        return job
    written = write_outputs(session, storage, job, state)
    dialect_store.merge_state(session, job.id, written)
    session.refresh(job)
    return job


class Sink:
    """One dialect file being written, hashed and counted."""

    def __init__(self, storage: Storage, job: Job, kind: str):
        self.uri = storage.uri(f"files/{job.tenant_id}/batch-{job.id}-{kind}.jsonl")
        self.name, self.digest, self.size, self.lines = f"batch_{job.id}_{kind}.jsonl", \
            hashlib.sha256(), 0, 0
        self.handle = Storage.open_for_write(self.uri)

    def write(self, line: dict[str, Any]) -> None:
        data = orjson.dumps(line) + b"\n"
        self.handle.write(data)
        self.digest.update(data)
        self.size, self.lines = self.size + len(data), self.lines + 1

    def record(self, session: Session, job: Job) -> str | None:
        self.handle.close()
        if not self.lines:
            Storage.remove(self.uri)
            return None
        return str(files.record_output_file(
            session, job.tenant_id, uri=self.uri, filename=self.name, fmt="jsonl",
            purpose=OUTPUT_PURPOSE, size=self.size, sha256=self.digest.hexdigest(),
            rows=self.lines).id)


def write_outputs(session: Session, storage: Storage, job: Job,
                  state: dict[str, Any]) -> dict[str, Any]:
    """Write both files; the dialect state that records them and the exact line counts."""
    sinks = {"output": Sink(storage, job, "output"), "error": Sink(storage, job, "error")}
    batch_id = str(job.id)
    try:
        for rejected in state.get("rejected_lines", []):
            sinks["error"].write(dialect.rejected_line(batch_id, dialect.Rejected(**rejected)))
        for ok, line in joined_lines(session, job, state):
            sinks["output" if ok else "error"].write(line)
        ids = {f"{kind}_file_id": sink.record(session, job) for kind, sink in sinks.items()}
    except BaseException:
        for sink in sinks.values():
            sink.handle.close()
            Storage.remove(sink.uri)
        raise
    return {**ids, "completed": sinks["output"].lines, "failed": sinks["error"].lines}


def scored_rows(session: Session, job: Job) -> Iterator[dict[str, Any]]:
    """The job's result and error rows, merged in input order."""
    from app.services.outputs import finished_parts, part_rows  # pyarrow: only when read

    def flat(kind: str) -> Iterator[dict[str, Any]]:
        for piece in part_rows(finished_parts(session, job, kind, input_order=True)):
            yield from piece
    return heapq.merge(flat("results"), flat("errors"), key=lambda row: row["row_index"])


def input_rows(job: Job, session: Session) -> Iterator[dict[str, Any]]:
    source = session.get(File, job.input_file_id) if job.input_file_id else None
    if source is None:
        return
    with Storage.open(source.uri) as handle:
        for raw in handle:
            yield orjson.loads(raw)


def joined_lines(session: Session, job: Job,
                 state: dict[str, Any]) -> Iterator[tuple[bool, dict[str, Any]]]:
    """(succeeded, dialect line) per accepted input line: its rows' outputs joined in order;
    rows that never ran say why (expired, cancelled, failed)."""
    scored = scored_rows(session, job)
    pending = next(scored, None)
    endpoint, batch_id = state["endpoint"], str(job.id)
    current: tuple[int, str] | None = None
    rows: list[dict[str, Any] | None] = []
    texts: list[str] = []
    for index, row in enumerate(input_rows(job, session)):
        line = int(row[dialect.ROW_COLUMN].split(":")[0])
        if current is not None and line != current[0]:
            yield dialect.joined_line(batch_id, current[0], current[1], endpoint,
                                      job.model_name, rows, texts, job.status)
            rows, texts = [], []
        current = (line, row[dialect.CUSTOM_ID_COLUMN])
        texts.append(row.get(dialect.TEXT_FIELD) or "")
        if pending is not None and pending["row_index"] == index:
            rows.append(pending)
            pending = next(scored, None)
        else:
            rows.append(None)
    if current is not None:
        yield dialect.joined_line(batch_id, current[0], current[1], endpoint, job.model_name,
                                  rows, texts, job.status)
