"""A tenant's usage, added up from its jobs: rows, failed rows, model seconds, bytes in and out.

Each job carries its own usage (written with its counts, see `app.store.jobs`); a report sums
the tenant's jobs submitted in a window, through `ix_jobs_tenant_created`, in total or per model
or UTC day. A deleted job keeps its row (a tombstone), so its usage still counts.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

GROUP_KEYS = {"model": "model_name", "day": "date(created_at AT TIME ZONE 'UTC')"}


def _usage_sql(key: str | None):
    selected = f"{key} AS key, " if key else ""
    grouped = "GROUP BY 1 ORDER BY 1" if key else ""
    return text(f"""
SELECT {selected}count(*) AS jobs, coalesce(sum(completed_count + failed_count), 0) AS rows,
       coalesce(sum(failed_count), 0) AS failed_rows,
       coalesce(sum(model_seconds), 0) AS model_seconds,
       coalesce(sum(bytes_in), 0) AS bytes_in, coalesce(sum(bytes_out), 0) AS bytes_out
FROM jobs
WHERE tenant_id = :tenant_id
  AND created_at >= coalesce(CAST(:start AS timestamptz), '-infinity')
  AND created_at < coalesce(CAST(:end AS timestamptz), 'infinity')
{grouped}""")


USAGE = {None: _usage_sql(None), **{name: _usage_sql(key) for name, key in GROUP_KEYS.items()}}


def usage_rows(session: Session, tenant_id: uuid.UUID, start: datetime | None,
               end: datetime | None, group_by: str | None = None) -> list[dict]:
    """The tenant's usage of jobs created in [start, end): one row, or one per `group_by` key
    (`model` or `day`) with the key under that name."""
    rows = session.execute(USAGE[group_by], {"tenant_id": tenant_id, "start": start, "end": end})
    return [{**({group_by: row.key} if group_by else {}), "jobs": row.jobs, "rows": int(row.rows),
             "failed_rows": int(row.failed_rows),
             "model_seconds": round(float(row.model_seconds), 6),
             "bytes_in": int(row.bytes_in), "bytes_out": int(row.bytes_out)}
            for row in rows]
