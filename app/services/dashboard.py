"""What the dashboard shows beyond the API's views: a job's rate over its life, its first failed
rows, a file's header. The caller has already loaded the job or file through its tenant check."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import File, Job, JobChunk, JobResult


def rate_points(session: Session, job: Job) -> list[tuple[float, float]]:
    """(seconds since the job started, rows/s over the interval ending then), one point per
    finished chunk of a file job, or one for the whole of an inline job."""
    if job.started_at is None:
        return []
    if job.kind != "file":
        end = job.finished_at or datetime.now(UTC)
        seconds = max((end - job.started_at).total_seconds(), 1e-3)
        return [(0.0, 0.0), (seconds, (job.completed_count + job.failed_count) / seconds)]
    chunks = session.execute(
        select(JobChunk.finished_at, JobChunk.completed_count + JobChunk.failed_count)
        .where(JobChunk.job_id == job.id, JobChunk.finished_at.is_not(None))
        .order_by(JobChunk.finished_at)).all()
    points, previous = [(0.0, 0.0)], job.started_at
    for finished, rows in chunks:
        seconds = max((finished - previous).total_seconds(), 1e-3)
        points.append(((finished - job.started_at).total_seconds(), rows / seconds))
        previous = max(previous, finished)
    return points


def failed_rows(session: Session, job: Job, limit: int = 20) -> list[dict[str, Any]]:
    """The first failed rows: a file job's error rows (id columns, code, message), or an inline
    job's failed inputs (index and error)."""
    if job.kind != "file":
        rows = session.execute(select(JobResult.index, JobResult.error)
                               .where(JobResult.job_id == job.id, JobResult.error.is_not(None))
                               .order_by(JobResult.index).limit(limit)).all()
        return [{"index": index, **(error if isinstance(error, dict) else {"error": error})}
                for index, error in rows]
    if not job.failed_count:
        return []
    from app.services import outputs  # pyarrow: only when a page shows failed rows

    pieces, _ = outputs.stream_file_job(session, job, "errors", "jsonl")
    try:
        lines = (line for piece in _lines(pieces) for line in piece)
        return [orjson.loads(line) for line in islice(lines, limit)]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _lines(pieces):
    """Whole lines out of byte pieces."""
    rest = b""
    for piece in pieces:
        rest += piece
        *whole, rest = rest.split(b"\n")
        yield [line for line in whole if line.strip()]
    if rest.strip():
        yield [rest]


def file_columns(record: File) -> list[str]:
    """The file's column names, read from its header (CSV), first line (JSONL) or schema."""
    from app.formats import open_reader  # pyarrow: only when a page shows a file's columns

    return open_reader(record.format, record.uri, record.compression).columns()
