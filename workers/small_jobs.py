"""Small inline jobs scored between a file chunk's batches, so they never wait for a chunk.

A worker inside a chunk of a large file would otherwise leave another tenant's one-record job
queued until the chunk ends (a second or more). Between its model batches, at most every
`KILN_TUNING__SMALL_JOB_CHECK_MS`, the chunk looks for a queued inline job of at most one model
batch of rows on its own queue (one indexed query), and if it finds one, runs one claim of that
job's model through the drainer's own path (`Drainer.claim` / `Drainer.score`): the same claim
ranking, fenced attempts and one result per input, in this process with its warm sessions.

Once it has served a model's small job, the chunk sets that model's small-jobs flag
(`DrainFlags.mark_small`), and the API sends no message for the model's next small jobs: the
chunk's next look takes them, and no other process spends a task finding them done later. When
the chunk ends (however it ends), it clears the flag and sends one message per model for what
is still waiting. A killed worker's flag lapses within a second; the reconciler republishes
a job it left without a message.
"""

from __future__ import annotations

import logging
import time

from app.store import jobs as job_store
from workers.context import WorkerContext
from workers.drain import Drainer

log = logging.getLogger(__name__)

FLAG_REFRESH_SECONDS = 0.4  # well inside the flags' 1 s TTL
FLAG_MAX_BATCH_SECONDS = 0.5  # batches longer than this: small jobs keep their messages


class SmallJobs:
    """What one chunk needs to serve small inline jobs between its batches."""

    def __init__(self, context: WorkerContext, queue: str | None):
        self.context, self.queue = context, queue
        tuning = context.settings.tuning
        self.every = tuning.small_job_check_ms / 1000
        self.max_rows = tuning.batch_size
        self.next_look = 0.0
        self.flagged: dict = {}  # model id -> when its small-jobs flag was last set
        self.last_call: float | None = None  # when `serve` was last called (after a batch)
        self.batch_seconds = float("inf")  # the time between the last two calls

    def serve(self) -> int:
        """Score one claim of small jobs if it is time to look and one waits; the rows scored."""
        now = time.monotonic()
        if self.last_call is not None:
            self.batch_seconds = now - self.last_call
        self.last_call = now
        if self.every <= 0 or now < self.next_look:
            return 0
        self.next_look = now + self.every
        self.keep_flags(now)
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
            self.close()
            return 0

    def score_claim(self, job_id, target) -> int:
        _, _, processing, model_id, queue = target
        if model_id not in self.flagged and self.looks_often:
            self.flag(model_id)  # from now on this chunk takes the model's small jobs
        drainer = Drainer(self.context, job_id, model_id, queue, processing or {},
                          routing_key=None, redelivered=False)
        drainer.linger = 0  # the chunk's next batch is waiting
        claimed, stats = drainer.claim()
        if claimed:
            drainer.score(claimed, stats)
        return drainer.totals["rows"]

    def flag(self, model_id) -> None:
        """Tell the API that this chunk takes the model's small jobs by itself, so that they
        need no message (a message would only make another process find them done later)."""
        self.context.drains.mark_small(model_id, self.queue, self.max_rows)
        self.flagged[model_id] = time.monotonic()

    @property
    def looks_often(self) -> bool:
        """Whether this chunk's batches are short enough to flag models: a job that gets no
        message waits for the next look, which a slow batch (a text model's bucket) delays,
        while another worker process may be idle."""
        return self.batch_seconds <= FLAG_MAX_BATCH_SECONDS

    def keep_flags(self, now: float) -> None:
        """Set the flags again before they lapse (the TTL covers a killed worker); after a slow
        batch, let them lapse (`close` still clears them and looks once more)."""
        if not self.looks_often:
            return
        for model_id, at in list(self.flagged.items()):
            if now - at >= FLAG_REFRESH_SECONDS:
                self.flag(model_id)

    def close(self) -> None:
        """The chunk stops looking: clear its flags, then send one message for each flagged
        model that still has a small job waiting. A submitter that saw a flag committed before
        the flag was cleared, so this look, begun after the clear, sees its job."""
        if not self.flagged:
            return
        flagged, self.flagged = list(self.flagged), {}
        for model_id in flagged:
            self.context.drains.clear_small(model_id, self.queue)
        try:
            with self.context.sessions() as session:
                waiting = [job_store.waiting_small_job(session, self.queue, self.max_rows,
                                                       model_id) for model_id in flagged]
            for job in filter(None, waiting):
                self.context.publisher.publish_jobs([job.id], self.queue)
        except Exception:  # the reconciler republishes what waits without a message
            log.exception("looking for small jobs left without a message failed")
