"""Heartbeats for leases: a file job's phases (validating, a chunk, finalizing) and inline jobs.

A phase holds its lease for as long as it works, however long that is: a thread renews it every
heartbeat with a statement fenced by the phase's attempt. Only the job's `completion_window`
bounds a phase, never the lease length. A renewal that finds the lease gone (another attempt
took it, or the job ended) marks it lost; the phase calls `check()` between steps and stops
with `LeaseLost` before it writes anything more. A worker that dies stops renewing, so the
reconciler still takes its work back one lease later.

A heartbeat only shows that the process lives, not that its phase moves: a read stuck on a
hung disk would hold the lease forever. So each `check()` is also a sign of progress, and a
phase that reaches none for `stall_seconds` (`KILN_STALL_SECONDS`) stops renewing, as a dead
worker would: the reconciler gives the work to another attempt (counted, so work that stalls
every time fails its job), and the stuck phase, should it ever wake, stops at its next
`check()` with `LeaseLost`; its own writes are fenced by attempt either way.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.errors import LeaseLost
from app.store.jobs import ClaimedJob, renew_leases

log = logging.getLogger(__name__)


class PhaseLease:
    """Renews one lease every `every_seconds` until closed; `renew(session)` returns None once
    the lease is no longer this attempt's, and anything else (for example the job's status)
    while it is."""

    def __init__(self, sessions: sessionmaker[Session], renew: Callable[[Session], Any | None],
                 every_seconds: float, name: str = "lease", stall_seconds: float = 0.0,
                 release: Callable[[Session, str], None] | None = None):
        self.sessions, self.renew, self.every, self.name = sessions, renew, every_seconds, name
        self.stall_seconds, self.release = stall_seconds, release
        self.lost = threading.Event()
        self.stalled = False
        self.renewals = 0
        self._progress = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kiln-{name}", daemon=True)

    def __enter__(self) -> PhaseLease:
        self._started = self._progress = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        log.info("%s held its lease for %.1f s (%d renewals)", self.name,
                 time.monotonic() - self._started, self.renewals)

    def stop(self) -> None:
        """Stop renewing (before the phase's last, fenced commit, which ends the lease)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def check(self) -> None:
        """Raise `LeaseLost` when another attempt owns the work (or it ended elsewhere, or the
        phase stalled); otherwise note that the phase moves on."""
        if self.lost.is_set():
            raise LeaseLost(f"{self.name}: the lease is another attempt's now")
        self._progress = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            idle = time.monotonic() - self._progress
            if self.stall_seconds and idle > self.stall_seconds:
                self._let_go(idle)
                return
            try:
                with self.sessions() as session, session.begin():
                    held = self.renew(session)
            except Exception as exc:  # noqa: BLE001 - Postgres may be down; retry next beat
                log.warning("%s: lease renewal failed: %s", self.name, exc)
                continue
            if held is None:
                if not self._stop.is_set():
                    log.info("%s: lost its lease; stopping", self.name)
                self.lost.set()
                return
            self.renewals += 1


    def _let_go(self, idle: float) -> None:
        """A stalled phase: stop renewing, and end the lease now (fenced by attempt, saying
        why) so that the reconciler's next pass retries it rather than one lease later."""
        self.stalled = True
        self.lost.set()
        metrics.count_stalled_phase(self.name.split(" ", 1)[0])
        why = f"stalled: no progress for {idle:.1f} s (KILN_STALL_SECONDS={self.stall_seconds:g})"
        log.error("%s %s; letting its lease go for another attempt", self.name, why)
        if self.release is None:
            return
        try:
            with self.sessions() as session, session.begin():
                self.release(session, why)
        except Exception as exc:  # noqa: BLE001 - the lease then runs out on its own
            log.warning("%s: releasing the stalled lease failed: %s", self.name, exc)


class LeaseKeeper:
    """Renews the leases of the inline jobs a worker holds until it is stopped."""

    def __init__(self, sessions: sessionmaker[Session], lease_seconds: float, every_seconds: float):
        self.sessions, self.lease_seconds, self.every = sessions, lease_seconds, every_seconds
        self.held: dict[uuid.UUID, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kiln-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, jobs: Iterable[ClaimedJob]) -> None:
        with self._lock:
            self.held.update({j.id: j.attempt for j in jobs})

    def release(self, job_ids: Iterable[uuid.UUID]) -> None:
        with self._lock:
            for job_id in job_ids:
                self.held.pop(job_id, None)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                held = dict(self.held)
            if not held:
                continue
            try:
                with self.sessions() as session, session.begin():
                    renew_leases(session, held, self.lease_seconds)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried next tick
                log.warning("lease renewal failed: %s", exc)
