"""The one way a job ends: `finish` writes the terminal state, the outbox rows and calls the hooks.

Every path that ends a job (a batch that completes it, a finalized file, a cancel, the
reconciler giving up or expiring it) builds `Outcome`s and hands them here, so a terminal state,
its webhook event and its metrics can never disagree. One statement ends any number of jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from app import metrics
from app.domain.states import TERMINAL, JobStatus, can_transition, ending_status
from app.store.outbox import NOTIFY_SQL, record_ended_jobs


@dataclass(frozen=True)
class Usage:
    """What scoring some rows cost: model time, and the bytes read and written."""

    model_seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.model_seconds + other.model_seconds, self.bytes_in + other.bytes_in,
                     self.bytes_out + other.bytes_out)


NO_USAGE = Usage()


@dataclass(frozen=True)
class Outcome:
    """How one job ends: the target status, from which statuses, and what to record with it.

    `attempt` fences the write (only that attempt may end the job); `claim_attempt` ends a job
    claimed in the same transaction, recording the attempt that ran it. Counts are absolute.
    A job whose cancel was requested (`cancelling`) ends `cancelled` instead of succeeding or
    failing, keeping what it wrote.
    """

    id: uuid.UUID
    status: JobStatus
    from_statuses: tuple[JobStatus, ...]
    attempt: int | None = None
    claim_attempt: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    completed: int | None = None
    failed: int | None = None
    output_file_id: uuid.UUID | None = None
    error_file_id: uuid.UUID | None = None
    usage: Usage | None = None  # absolute, like the counts: the usage of the rows it keeps

    def __post_init__(self) -> None:
        if self.status not in TERMINAL:
            raise ValueError(f"{self.status} is not a terminal status")
        for current in self.from_statuses:
            if not can_transition(current, ending_status(current, self.status)):
                raise ValueError(f"a job cannot go from {current} to {self.status}")


@dataclass(frozen=True)
class Ended:
    """A job `finish` ended: its id, final status, and whether anyone listens for it."""

    id: uuid.UUID
    status: str
    notify: bool


FINISH = text(f"""
UPDATE jobs j
SET status = CASE WHEN j.status = 'cancelling' AND v.status IN ('succeeded', 'failed')
                  THEN 'cancelled' ELSE v.status END,
    error_code = CASE WHEN j.status = 'cancelling' AND v.status IN ('succeeded', 'failed')
                      THEN j.error_code ELSE coalesce(v.error_code, j.error_code) END,
    error_message = CASE WHEN j.status = 'cancelling' AND v.status IN ('succeeded', 'failed')
                         THEN j.error_message ELSE coalesce(v.error_message, j.error_message) END,
    completed_count = coalesce(v.completed, j.completed_count),
    failed_count = coalesce(v.failed, j.failed_count),
    output_file_id = coalesce(v.output_file_id, j.output_file_id),
    error_file_id = coalesce(v.error_file_id, j.error_file_id),
    model_seconds = coalesce(v.model_seconds, j.model_seconds),
    bytes_in = coalesce(v.bytes_in, j.bytes_in), bytes_out = coalesce(v.bytes_out, j.bytes_out),
    attempt = coalesce(v.claim_attempt, j.attempt),
    started_at = CASE WHEN v.claim_attempt IS NULL THEN j.started_at
                      ELSE coalesce(j.started_at, statement_timestamp()) END,
    finished_at = statement_timestamp(), lease_expires_at = NULL,
    results_expire_at = statement_timestamp() + j.results_retention_seconds * interval '1 second'
FROM jsonb_to_recordset(CAST(:outcomes AS jsonb))
     AS v(id uuid, status text, from_statuses text[], attempt int, claim_attempt int,
          error_code text, error_message text, completed int, failed int,
          output_file_id uuid, error_file_id uuid, model_seconds float8, bytes_in bigint,
          bytes_out bigint)
WHERE j.id = v.id AND j.status = ANY(v.from_statuses)
  AND (v.attempt IS NULL OR j.attempt = v.attempt)
RETURNING j.id, j.status, {NOTIFY_SQL} AS notify
""")

EndedHook = Callable[[Session, Sequence[Ended]], None]


def count_finished(_session: Session, ended: Sequence[Ended]) -> None:
    """The `kiln_jobs_finished_total` counter, by final status."""
    metrics.count_finished_jobs(job.status for job in ended)


# (the CASE on 'cancelling' is `app.domain.states.ending_status`)
# Subscribers called in the transaction that ended the jobs (metrics today; audit, traces next).
ON_ENDED: list[EndedHook] = [count_finished]


def subscribe(hook: EndedHook) -> None:
    """Call `hook(session, ended)` whenever jobs end, inside the transaction that ends them."""
    if hook not in ON_ENDED:
        ON_ENDED.append(hook)


def finish(session: Session, outcomes: Iterable[Outcome]) -> list[Ended]:
    """End the jobs whose guard still holds; write their outbox rows and call the hooks.

    Returns the jobs that ended here; an outcome whose job moved on (another attempt, already
    ended) is skipped, which is what makes every caller safe to run twice.
    """
    document = [_row(outcome) for outcome in outcomes]
    if not document:
        return []
    ended = [Ended(r.id, r.status, r.notify) for r in
             session.execute(FINISH, {"outcomes": orjson.dumps(document).decode()})]
    record_ended_jobs(session, ended)
    for hook in ON_ENDED:
        hook(session, ended)
    return ended


def _row(outcome: Outcome) -> dict[str, Any]:
    row = asdict(outcome)
    row.update(row.pop("usage") or {})
    if outcome.error_message is not None:
        row["error_message"] = outcome.error_message[:2000]
    return row
