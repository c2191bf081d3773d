"""The coalescer: one message per model per batch window during a burst of small jobs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from app.queueing.drains import DrainFlags
from app.queueing.publisher import Publisher

LARGE = 2**62  # the rows of a job whose size was not given: never small


class Pending(NamedTuple):
    """A trailing message to send: the newest job's id, its queue, when it is due, and the
    most rows of a job it announces."""

    job_id: uuid.UUID | str
    queue: str | None
    due: float
    rows: int


class Coalescer:
    """At most one message per model per `window_seconds` during a burst, plus a trailing one.

    Any message for a model makes a worker claim every queued job of that model, so a burst of
    small jobs needs one message, not one each. The trailing message, sent at the end of the
    window with the newest job's id, guarantees every committed job is followed by a message
    published after its commit: no job waits for the reconciler. No message is sent while a
    worker drains that model (see `DrainFlags`): its next claim takes the job. Nor while a
    file chunk serves the model's small jobs between its batches, when every job the message
    would announce is small enough for it.

    A job that follows a quiet gap (no job of the model for `quiet_seconds`) is not a burst:
    it is announced at once even inside the window, so jobs sent one at a time are not held
    for the window each.
    """

    def __init__(self, publisher: Publisher, window_seconds: float,
                 drains: DrainFlags | None = None, *, quiet_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.publisher, self.window, self.drains = publisher, window_seconds, drains
        self.clock = clock
        self.quiet_seconds = quiet_seconds
        self.last_sent: dict[Any, float] = {}
        self.last_job: dict[Any, float] = {}
        self.pending: dict[Any, Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, model_key: Any, job_id: uuid.UUID | str, queue: str | None = None,
               window_seconds: float | None = None, rows: int | None = None) -> None:
        """A job of `model_key` was committed; `window_seconds` overrides the default window
        (a model's own `max_batch_wait_ms`); `rows`, its size (unknown: large)."""
        window = self.window if window_seconds is None else window_seconds
        rows = LARGE if rows is None else rows
        now = self.clock()
        with self._lock:
            quiet = now - self.last_job.get(model_key, -1e9) >= min(window, self.quiet_seconds)
            self.last_job[model_key] = now
            if quiet or now - self.last_sent.get(model_key, -1e9) >= window:
                self.last_sent[model_key] = now
                earlier = self.pending.pop(model_key, None)  # this message is after its commit
                rows = max(rows, earlier.rows) if earlier else rows
                send = True
            else:
                earlier = self.pending.get(model_key)
                self.pending[model_key] = Pending(job_id, queue, self.last_sent[model_key] + window,
                                                  max(rows, earlier.rows) if earlier else rows)
                send = False
                self._ensure_thread()
        if send:
            self._send(model_key, job_id, queue, rows)
        else:
            self._wake.set()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._flush_loop, name="kiln-coalescer",
                                            daemon=True)
            self._thread.start()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            with self._lock:
                due_at = min((entry.due for entry in self.pending.values()), default=None)
                if due_at is None:
                    self._wake.clear()
                    continue
            time.sleep(min(max(due_at - self.clock(), 0.0), 1.0))
            now, due = self.clock(), []
            with self._lock:
                for key, (job_id, queue, at, rows) in list(self.pending.items()):
                    if at <= now:
                        due.append((key, job_id, queue, rows))
                        self.last_sent[key] = now
                        del self.pending[key]
            for key, job_id, queue, rows in due:
                self._send(key, job_id, queue, rows)

    def _send(self, model_key: Any, job_id: uuid.UUID | str, queue: str | None,
              rows: int) -> None:
        """Publish, unless a worker's next claim takes every job this message announces: a
        drain of the model, or a chunk serving its small jobs when they all are small."""
        if self.drains is not None and self.drains.covers(model_key[0], queue, rows):
            return
        self.publisher.publish_jobs([job_id], queue)
