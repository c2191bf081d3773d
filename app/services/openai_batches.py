"""OpenAI batches over Kiln file jobs: a batch IS a file job over its input's lines, converted
to Kiln rows at create; its dialect state lives in the job's `options["openai"]`."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.domain import openai_batch as dialect
from app.domain.states import JobStatus
from app.domain.validation import check_records
from app.errors import BadRequest, InvalidInput, NotFound
from app.orm import File, Job
from app.services import files, jobs
from app.services.auth import Caller
from app.services.commands import Intake, SubmitFileJob
from app.services.models import ModelRef, resolve_model_ref
from app.storage import Storage
from app.store import dialect as dialect_store
from app.store.lifecycle import Outcome, finish

ROWS_PURPOSE = "batch_rows"  # the converted input: internal, hidden from the dialect's lists
MAX_ERRORS = 100  # line errors kept in the failed batch's `errors.data`


class ModelNotFound(NotFound):
    """Raised when a batch's lines name a model the tenant cannot use."""

    code = "model_not_found"


@dataclass(frozen=True)
class CreateBatch:
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, Any] | None = None


@dataclass
class Converted:
    """The input file read once: Kiln rows written, refused lines, invalid-file errors."""

    rows_uri: str
    model: ModelRef | None = None
    lines: int = 0
    rows: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dialect.LineError] = field(default_factory=list)
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


def checked_command(command: CreateBatch) -> float:
    """The window's seconds, after the request's own checks (400s)."""
    if command.endpoint not in dialect.ENDPOINTS:
        raise BadRequest(f"endpoint must be one of {list(dialect.ENDPOINTS)}, not "
                         f"{command.endpoint!r}")
    seconds = dialect.window_seconds(command.completion_window)
    if seconds is None:
        raise BadRequest(f"completion_window {command.completion_window!r} is not a duration "
                         "such as 24h")
    return seconds


def create_batch(session: Session, sessions: sessionmaker[Session], caller: Caller,
                 storage: Storage, intake: Intake, command: CreateBatch) -> Job:
    """Convert the input, record the rows file (committed first: the job refers to it), and
    submit the file job; an invalid input file ends it `failed` at once."""
    seconds = checked_command(command)
    source = files.get_file(session, caller, command.input_file_id)
    converted = convert(session, caller, storage, source, command.endpoint, intake)
    if converted.model is None:
        storage.remove(converted.rows_uri)
        why = converted.errors[0].message if converted.errors else "the file has no request"
        raise BadRequest(f"no line of the input file can run: {why}")
    rows_file = record_rows_file(sessions, caller, converted)
    state = {"endpoint": command.endpoint, "completion_window": command.completion_window,
             "input_file_id": str(source.id), "lines": converted.lines, "rows": converted.rows,
             "rejected": len(converted.rejected), "rejected_lines": converted.rejected,
             "errors": [e.as_dict() for e in converted.errors[:MAX_ERRORS]]}
    submit = SubmitFileJob(model=converted.model.name, input_file=str(rows_file),
                           variant=converted.model.variant, output_format="jsonl",
                           id_column=dialect.ROW_COLUMN, keep_columns=[dialect.CUSTOM_ID_COLUMN],
                           metadata=command.metadata, completion_window_seconds=seconds,
                           extra_options={"openai": state})
    try:
        job, _ = jobs.submit_file_job(session, caller, submit, intake)
    except BaseException:  # refused (a limit, a lost database): the rows file goes too
        forget_rows_file(sessions, rows_file, converted.rows_uri)
        raise
    if converted.errors:
        finish(session, [Outcome(job.id, JobStatus.FAILED, (JobStatus.VALIDATING,),
                                 error_code="invalid_file",
                                 error_message=converted.errors[0].message)])
    return jobs.get_job(session, caller, str(job.id))


def convert(session: Session, caller: Caller, storage: Storage, source, endpoint: str,
            intake: Intake) -> Converted:
    """Read the input's lines once, writing each accepted line's Kiln rows as JSONL."""
    converted = Converted(storage.uri(f"files/{caller.tenant_id}/{uuid.uuid4()}"))
    seen: set[str] = set()
    try:
        from app.formats import open_decoded  # pyarrow: only when a batch file is read

        with open_decoded(source.uri, source.compression) as lines, \
                storage.open_for_write(converted.rows_uri) as out:
            for number, raw in enumerate(lines, start=1):
                parsed = dialect.parse_line(raw, number, endpoint)
                if parsed is None:
                    continue
                converted.lines += 1
                if not isinstance(parsed, dialect.LineError):
                    custom_id = parsed.custom_id
                    if custom_id in seen:
                        parsed = dialect.LineError(number, "duplicate_custom_id",
                                                   f"custom_id {custom_id!r} is used by an "
                                                   "earlier line", "custom_id")
                    seen.add(custom_id)
                if isinstance(parsed, dialect.Accepted):
                    parsed = accept(session, caller, parsed, converted, intake)
                if isinstance(parsed, dialect.LineError):
                    converted.errors.append(parsed)
                elif isinstance(parsed, dialect.Rejected):
                    converted.rejected.append({"line": parsed.line, "custom_id": parsed.custom_id,
                                               "code": parsed.code, "message": parsed.message,
                                               "param": parsed.param})
                else:
                    write_rows(out, converted, parsed.rows)
    except BaseException:
        storage.remove(converted.rows_uri)
        raise
    if not converted.lines:
        converted.errors.append(dialect.LineError(0, "empty_file", "the input file is empty"))
    return converted


def accept(session: Session, caller: Caller, line: dialect.Accepted, converted: Converted,
           intake: Intake) -> dialect.Accepted | dialect.Rejected:
    """The line, or why this batch cannot run it: another model, or records the model cannot
    score. The first accepted line's model is the batch's (an unknown one is a 404)."""
    if converted.model is None:
        try:
            converted.model = resolve_model_ref(session, caller.tenant_id, line.model,
                                                intake.models)
        except NotFound:
            raise ModelNotFound(f"the model {line.model!r} (line {line.line}) does not exist "
                                "or you do not have access to it") from None
    elif line.model != converted.model.name:
        return dialect.Rejected(line.line, line.custom_id, "model_mismatch",
                                f"every request of a batch uses one model: "
                                f"{converted.model.name!r}, not {line.model!r}", "body.model")
    found = check_records(line.rows, converted.model.signature)
    if found:
        return dialect.Rejected(line.line, line.custom_id, found[0].code, found[0].message,
                                f"body.input.{found[0].field}")
    return line


def write_rows(out, converted: Converted, rows: list[dict[str, Any]]) -> None:
    data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    out.write(data)
    converted.digest.update(data)
    converted.size += len(data)
    converted.rows += len(rows)


def record_rows_file(sessions: sessionmaker[Session], caller: Caller,
                     converted: Converted) -> uuid.UUID:
    """The rows file in its own committed transaction, so that any writer's job may refer to it."""
    with sessions.begin() as session:
        record = files.record_output_file(
            session, caller.tenant_id, uri=converted.rows_uri, filename="batch_rows.jsonl",
            fmt="jsonl", purpose=ROWS_PURPOSE, size=converted.size,
            sha256=converted.digest.hexdigest(), rows=converted.rows)
        return record.id


def forget_rows_file(sessions: sessionmaker[Session], file_id: uuid.UUID, uri: str) -> None:
    with sessions.begin() as session:
        session.execute(delete(File).where(File.id == file_id))
    Storage.remove(uri)


def get_batch(session: Session, caller: Caller, batch_id: str) -> Job:
    """The caller's batch (a job made through the dialect); anything else is a 404."""
    job = jobs.get_job(session, caller, batch_id)
    if "openai" not in (job.options or {}):
        raise NotFound(f"no batch {batch_id!r}")
    return job


def list_batches(session: Session, caller: Caller, *, limit: int,
                 after: str | None) -> tuple[list[Job], bool]:
    """Newest first, one page, and whether more follow."""
    query = select(Job).where(Job.tenant_id == caller.tenant_id, Job.kind == "file",
                              Job.deleted_at.is_(None), Job.options.has_key("openai"))
    if after:
        anchor = get_batch(session, caller, after)
        query = query.where((Job.created_at, Job.id) < (anchor.created_at, anchor.id))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())
                                .limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_batch(session: Session, caller: Caller, batch_id: str) -> Job:
    job = get_batch(session, caller, batch_id)
    job = jobs.cancel_job(session, caller, batch_id)
    if "cancelling_at" not in job.options["openai"]:
        dialect_store.merge_state(session, job.id,
                                  {"cancelling_at": int(datetime.now(UTC).timestamp())})
        session.refresh(job)
    return job


def check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()):
        raise InvalidInput("metadata: at most 16 string keys (64 chars) to string values "
                           "(512 chars)")
    return metadata
