"""What an estimate reads: the rows queued ahead of a job, and a model's recent throughput."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.orm import LIVE_STATUSES

# Rows still to score of the model's unfinished jobs on the same queue at this priority or
# above; a file job still validating has no count yet and adds nothing.
QUEUE_AHEAD = text(f"""
SELECT coalesce(sum(greatest(total_count - completed_count - failed_count, 0)), 0)
FROM jobs
WHERE model_id = :model_id AND status IN ({LIVE_STATUSES}) AND priority >= :priority
  AND coalesce(options->>'queue', '') = :queue
""")

# The tenant's jobs of this model and kind that succeeded lately (a range of
# `ix_jobs_tenant_created`): rows scored over the seconds from their start to their end.
RECENT = text("""
SELECT count(*) AS jobs, coalesce(sum(completed_count + failed_count), 0) AS rows,
       coalesce(sum(extract(epoch FROM finished_at - coalesce(started_at, created_at))), 0)
           AS seconds
FROM jobs
WHERE tenant_id = :tenant_id AND created_at > now() - make_interval(secs => :window_seconds)
  AND model_id = :model_id AND kind = :kind AND status = 'succeeded'
  AND completed_count + failed_count > 0
""")


@dataclass(frozen=True)
class Throughput:
    jobs: int
    rows: int
    seconds: float


def queue_ahead_rows(session: Session, model_id: uuid.UUID, priority: int,
                     queue: str | None) -> int:
    return int(session.execute(QUEUE_AHEAD, {"model_id": model_id, "priority": priority,
                                             "queue": queue or ""}).scalar_one())


def recent_throughput(session: Session, tenant_id: uuid.UUID, model_id: uuid.UUID, kind: str,
                      window_seconds: float) -> Throughput:
    row = session.execute(RECENT, {"tenant_id": tenant_id, "model_id": model_id, "kind": kind,
                                   "window_seconds": window_seconds}).one()
    return Throughput(int(row.jobs), int(row.rows), float(row.seconds))
