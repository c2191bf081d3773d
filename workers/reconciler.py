"""The safety net: Postgres is the record, Redis only carries hints.

Re-publishes queued jobs whose message may have been lost, returns jobs whose lease expired to
the queue, and fails jobs that keep killing their worker instead of looping forever. Every
statement is a named function of `app.store.rescue`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app.queueing.publisher import Publisher
from app.services import retention
from app.store import rescue
from app.store.chunks import dispatch_chunks

log = logging.getLogger(__name__)

@dataclass
class Report:
    given_up: list = field(default_factory=list)
    requeued: list = field(default_factory=list)
    republished: list = field(default_factory=list)
    chunks: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.given_up or self.requeued or self.republished or self.chunks)


def reconcile_once(session: Session, *, max_attempts: int, grace_seconds: float,
                   limit: int = 5000, chunk_window: int = 4, tenant_chunk_limit: int = 0) -> Report:
    """One pass; the caller commits, then publishes `requeued + republished` and `chunks`.

    Held-back chunks (queued, never published) are not lost: each pass hands the free slots of
    every tenant that has some to them, in tenant order so that passes never deadlock.
    """
    given_up = [job.id for job in rescue.expire_overdue(session, limit)]
    given_up += [job.id for job in rescue.give_up_crashed(session, max_attempts, limit)]
    given_up += [job.id for job in rescue.give_up_chunks(session, max_attempts)]
    requeued = rescue.requeue_expired(session, max_attempts)
    republished = rescue.republish_queued(session, grace_seconds, limit) \
        + rescue.nudge_file_jobs(session, grace_seconds, limit)
    chunks = rescue.requeue_chunks(session, max_attempts, grace_seconds)
    chunks += [chunk for tenant_id in rescue.tenants_with_held_chunks(session, limit)
               for chunk in dispatch_chunks(session, tenant_id, job_window=chunk_window,
                                            tenant_limit=tenant_chunk_limit,
                                            grace_seconds=grace_seconds)]
    return Report(given_up, requeued, republished, chunks)


def reconcile_and_publish(sessions: sessionmaker[Session], publisher: Publisher, *,
                          max_attempts: int, grace_seconds: float, chunk_window: int = 4,
                          tenant_chunk_limit: int = 0) -> Report:
    with sessions() as session, session.begin():
        report = reconcile_once(session, max_attempts=max_attempts, grace_seconds=grace_seconds,
                                chunk_window=chunk_window, tenant_chunk_limit=tenant_chunk_limit)
    if report.requeued or report.republished:
        publisher.publish_routed(report.requeued + report.republished)
    if report.chunks:
        publisher.publish_chunks(report.chunks)
    if report:
        log.info("reconciler: %d given up, %d requeued, %d republished, %d chunks",
                 len(report.given_up), len(report.requeued), len(report.republished),
                 len(report.chunks))
    return report


class ReconcilerThread(threading.Thread):
    """Runs the reconciler every `interval_seconds` inside a long-lived process."""

    def __init__(self, sessions: sessionmaker[Session], publisher: Publisher, *,
                 interval_seconds: float, max_attempts: int, grace_seconds: float,
                 chunk_window: int = 4, tenant_chunk_limit: int = 0, sweep_batch: int = 500):
        super().__init__(name="kiln-reconciler", daemon=True)
        self.sweep_batch = sweep_batch
        self.sessions, self.publisher = sessions, publisher
        self.interval, self.max_attempts, self.grace = interval_seconds, max_attempts, grace_seconds
        self.chunk_window, self.tenant_chunk_limit = chunk_window, tenant_chunk_limit
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                reconcile_and_publish(self.sessions, self.publisher,
                                      max_attempts=self.max_attempts, grace_seconds=self.grace,
                                      chunk_window=self.chunk_window,
                                      tenant_chunk_limit=self.tenant_chunk_limit)
            except Exception as exc:  # noqa: BLE001 - Postgres may be down; try next period
                log.warning("reconciler pass failed: %s", exc)
            self.sweep()

    def sweep(self) -> None:
        """Retention: what expired goes, a bounded batch per step (app.services.retention)."""
        try:
            swept = retention.sweep(self.sessions, self.sweep_batch)
        except Exception as exc:  # noqa: BLE001 - Postgres or storage may be down; next period
            log.warning("retention sweep failed: %s", exc)
            return
        if swept:
            log.info("retention: %d job(s) lost their results, %d file(s) expired, "
                     "%d object(s) removed", swept.jobs, swept.files, swept.objects)
