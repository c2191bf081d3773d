"""How much work is waiting or running, across all tenants: one cheap query for a metrics scrape."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

# The statuses that partial indexes cover (queued jobs; running, cancelling and finalizing ones):
# each half of the query reads only an index, so a scrape costs the same with a million finished
# jobs as with none.
# `validating` and the terminal statuses have no such index; counting them would scan the table.
COUNTED_STATUSES = ("queued", "running", "cancelling", "finalizing")

QUEUE_DEPTH = text("""
SELECT 'queued' AS status, count(*) AS jobs,
       coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_seconds
FROM jobs WHERE status = 'queued'
UNION ALL
SELECT status, count(*), NULL FROM jobs
WHERE status IN ('running', 'cancelling', 'finalizing') GROUP BY status
""")


@dataclass(frozen=True)
class QueueDepth:
    jobs_by_status: dict[str, int]
    oldest_queued_seconds: float


def queue_depth(session: Session) -> QueueDepth:
    """Jobs per counted status (zero when none), and how long the oldest queued job has waited."""
    counts = dict.fromkeys(COUNTED_STATUSES, 0)
    oldest = 0.0
    for row in session.execute(QUEUE_DEPTH):
        counts[row.status] = row.jobs
        if row.status == "queued":
            oldest = float(row.oldest_seconds)
    return QueueDepth(counts, oldest)
