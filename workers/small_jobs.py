"""Small inline jobs scored between a file chunk's batches, so they never wait for a chunk.

A worker inside a chunk of a large file would otherwise leave another tenant's one-record job
queued until the chunk ends (a second or more). Between its model batches, at most every
`KILN_TUNING__SMALL_JOB_CHECK_MS`, the chunk looks for a queued inline job of at most one model
batch of rows on its own queue (one indexed query), and if it finds one, runs one claim of that
job's model through the drainer's own path (`Drainer.claim` / `Drainer.score`): the same claim
ranking, fenced attempts and one result per input, in this process with its warm sessions. The
job's message, when a worker takes it later, finds the job done.
"""

from __future__ import annotations

import logging
import time

from app.store import jobs as job_store
from workers.context import WorkerContext
from workers.drain import Drainer

log = logging.getLogger(__name__)


class SmallJobs:
    """What one chunk needs to serve small inline jobs between its batches."""

    def __init__(self, context: WorkerContext, queue: str | None):
        self.context, self.queue = context, queue
        tuning = context.settings.tuning
        self.every = tuning.small_job_check_ms / 1000
        self.max_rows = tuning.batch_size
        self.next_look = 0.0

    def serve(self) -> int:
        """Score one claim of small jobs if it is time to look and one waits; the rows scored."""
        now = time.monotonic()
        if self.every <= 0 or now < self.next_look:
            return 0
        self.next_look = now + self.every
        with self.context.sessions() as session:
            waiting = job_store.waiting_small_job(session, self.queue, self.max_rows)
            target = waiting and job_store.message_target(session, waiting.id)
        if not target:
            return 0
        try:
            return self.score_claim(waiting.id, target)
        except Exception:
            # the job stays queued (or leased, for the reconciler): its own message retries it
            log.exception("scoring small job %s between batches failed; not looking again",
                          waiting.id)
            self.every = 0
            return 0

    def score_claim(self, job_id, target) -> int:
        _, _, processing, model_id, queue = target
        drainer = Drainer(self.context, job_id, model_id, queue, processing or {},
                          routing_key=None, redelivered=False)
        drainer.linger = 0  # the chunk's next batch is waiting
        claimed, stats = drainer.claim()
        if claimed:
            drainer.score(claimed, stats)
        return drainer.totals["rows"]
