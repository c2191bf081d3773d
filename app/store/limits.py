"""The counts that decide admission, read under the locks that make them hold.

A limited submit runs, in one transaction: `lock_backlog` (only when the instance has a backlog
limit), `lock_tenant`, the counts, then the job's INSERT; the locks are held until it commits,
so two API processes can never both admit the last slot. Unlimited submits take none of this.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.orm import LIVE_STATUSES

# Any constant: the advisory lock that serializes submits while KILN_MAX_QUEUED_ROWS is set.
BACKLOG_LOCK = 0x6B696C6E_0001

# A file job still validating has no row count yet (its worker counts them): it counts 1 row,
# and its job counts in full.
TENANT_BACKLOG = text(f"""
SELECT count(*) AS jobs, coalesce(sum(greatest(total_count, 1)), 0) AS rows
FROM jobs WHERE tenant_id = :tenant_id AND status IN ({LIVE_STATUSES})
""")

INSTANCE_BACKLOG = text(f"""
SELECT coalesce(sum(greatest(total_count, 1)), 0) FROM jobs WHERE status IN ({LIVE_STATUSES})
""")

TENANT_STORAGE = text("SELECT coalesce(sum(bytes), 0) FROM files WHERE tenant_id = :tenant_id")


@dataclass(frozen=True)
class Backlog:
    """A tenant's live (not yet ended) jobs and the rows they hold."""

    active_jobs: int
    queued_rows: int


def lock_backlog(session: Session) -> None:
    """Serialize limited submits instance-wide until this transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BACKLOG_LOCK})


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """Serialize this tenant's limited submits and uploads until this transaction ends."""
    session.execute(text("SELECT id FROM tenants WHERE id = :id FOR UPDATE"), {"id": tenant_id})


def tenant_backlog(session: Session, tenant_id: uuid.UUID) -> Backlog:
    row = session.execute(TENANT_BACKLOG, {"tenant_id": tenant_id}).one()
    return Backlog(active_jobs=int(row.jobs), queued_rows=int(row.rows))


def instance_queued_rows(session: Session) -> int:
    return int(session.execute(INSTANCE_BACKLOG).scalar_one())


def tenant_storage_bytes(session: Session, tenant_id: uuid.UUID) -> int:
    """Bytes of every file the tenant has: uploads, outputs and error files."""
    return int(session.execute(TENANT_STORAGE, {"tenant_id": tenant_id}).scalar_one())
