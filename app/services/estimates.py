"""A pre-flight estimate: what a job would be (rows), what is ahead of it, and when it would end.

It validates as a submit would (an inline job's records; a file's columns, and its rows counted
in one streaming pass), so a bad request is refused before it costs anything, and queues
nothing. The rate is the tenant's recent throughput with this model and kind of job (rows over
the seconds from start to end of its jobs that succeeded within `window_seconds`), else the
`KILN_ESTIMATE_ROWS_PER_SECOND` default.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.services.auth import Caller
from app.services.commands import Intake, SubmitFileJob, SubmitJob
from app.services.files import check_columns, get_file
from app.services.jobs import checked_inline, route
from app.services.models import resolve_model_ref
from app.store import estimates as estimate_store

RECENT_SECONDS = 3600.0


def file_rows(session: Session, caller: Caller, command: SubmitFileJob,
              intake: Intake, chunk_rows: int):
    """The model and the row count of a file job's input, checked as its validation would."""
    source = get_file(session, caller, command.input_file)
    found = resolve_model_ref(session, caller.tenant_id, command.model, intake.models,
                              command.variant)
    try:
        from app.formats import open_reader  # pyarrow: only when a job is estimated

        reader = open_reader(source.format, source.uri, source.compression)
        check_columns(reader.columns(), found.signature,
                      {"id_column": command.id_column, "keep_columns": command.keep_columns})
        plans = reader.plan(chunk_rows)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"the input file cannot be read: {exc}") from None
    return found, plans[-1].end_row if plans else 0


def estimate(session: Session, caller: Caller, command: SubmitJob | SubmitFileJob,
             intake: Intake, *, chunk_rows: int, default_rows_per_second: float) -> dict[str, Any]:
    """`POST /v1/jobs/estimate`: rows, the rows queued ahead, and the times at the rate."""
    if isinstance(command, SubmitFileJob):
        found, rows = file_rows(session, caller, command, intake, chunk_rows)
        kind = "file"
    else:
        found, rows, kind = checked_inline(session, caller, command, intake), \
            len(command.inputs), "inline"
    queue = command.queue if isinstance(command, SubmitFileJob) and command.queue else \
        route(found, intake.queues, command.require_gpu)
    ahead = estimate_store.queue_ahead_rows(session, found.id, command.priority, queue)
    recent = estimate_store.recent_throughput(session, caller.tenant_id, found.id, kind,
                                              RECENT_SECONDS)
    if recent.rows and recent.seconds > 0:
        rate = recent.rows / recent.seconds
        basis = {"source": "recent_usage", "jobs": recent.jobs, "rows": recent.rows,
                 "seconds": round(recent.seconds, 3), "window_seconds": RECENT_SECONDS}
    else:
        rate, basis = default_rows_per_second, {"source": "default"}
    now = datetime.now(UTC)
    start, run = now + timedelta(seconds=ahead / rate), rows / rate
    return {"object": "estimate", "model": found.name, "kind": kind, "rows": rows,
            "queue_ahead_rows": ahead, "rows_per_second": round(rate, 3),
            "estimated_seconds": round((ahead + rows) / rate, 3),
            "estimated_start_at": start, "estimated_finish_at": start + timedelta(seconds=run),
            "basis": basis}
