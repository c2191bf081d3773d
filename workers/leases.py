"""Heartbeats for leased phases: validating and planning a file, a chunk, finalizing a job.

A phase holds its lease for as long as it works, however long that is: a thread renews it every
heartbeat with a statement fenced by the phase's attempt. Only the job's `completion_window`
bounds a phase, never the lease length. A renewal that finds the lease gone (another attempt
took it, or the job ended) marks it lost; the phase calls `check()` between steps and stops
with `LeaseLost` before it writes anything more. A worker that dies stops renewing, so the
reconciler still takes its work back one lease later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.errors import LeaseLost

log = logging.getLogger(__name__)


class PhaseLease:
    """Renews one lease every `every_seconds` until closed; `renew(session)` returns None once
    the lease is no longer this attempt's, and anything else (for example the job's status)
    while it is."""

    def __init__(self, sessions: sessionmaker[Session], renew: Callable[[Session], Any | None],
                 every_seconds: float, name: str = "lease"):
        self.sessions, self.renew, self.every, self.name = sessions, renew, every_seconds, name
        self.lost = threading.Event()
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"kiln-{name}", daemon=True)

    def __enter__(self) -> PhaseLease:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        log.info("%s held its lease for %.1f s (%d renewals)", self.name,
                 time.monotonic() - self._started, self.renewals)

    def check(self) -> None:
        """Raise `LeaseLost` when another attempt owns the work (or it ended elsewhere)."""
        if self.lost.is_set():
            raise LeaseLost(f"{self.name}: the lease is another attempt's now")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with self.sessions() as session, session.begin():
                    held = self.renew(session)
            except Exception as exc:  # noqa: BLE001 - Postgres may be down; retry next beat
                log.warning("%s: lease renewal failed: %s", self.name, exc)
                continue
            if held is None:
                log.info("%s: lost its lease; stopping", self.name)
                self.lost.set()
                return
            self.renewals += 1
