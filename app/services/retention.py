"""Retention: the sweeper's pass and the removal of bytes nothing refers to any more.

Run by every worker's reconciler loop (and after a `DELETE /v1/jobs/{id}` commits). Each step is
its own short transaction over a bounded batch of rows it locks with SKIP LOCKED, so sweepers
in every worker share the work instead of waiting on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.storage import Storage
from app.store import retention


@dataclass
class Swept:
    jobs: int = 0
    files: int = 0
    objects: int = 0

    def __bool__(self) -> bool:
        return bool(self.jobs or self.files or self.objects)


def collect_garbage(sessions: sessionmaker[Session], batch: int) -> int:
    """Remove the bytes of everything forgotten so far, `batch` objects per transaction."""
    removed = 0
    while True:
        with sessions.begin() as session:
            count = retention.collect_garbage(session, Storage.remove, batch)
        removed += count
        if count < batch:
            return removed


def sweep(sessions: sessionmaker[Session], batch: int) -> Swept:
    """One pass: jobs whose results expired and files past `expires_at` lose them (one batch
    each), then their bytes are removed."""
    with sessions.begin() as session:
        jobs = len(retention.expire_results(session, batch))
    with sessions.begin() as session:
        files = len(retention.expire_files(session, batch))
    return Swept(jobs, files, collect_garbage(sessions, batch))
