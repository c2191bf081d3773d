"""Drain a model's queued inline jobs: claim, score, repeat until none is left or time is up.

One process drains a model at a time: a message that arrives while another process drains it
(its drain flag is set) is done at once, because the drainer claims until nothing is left, and
claims once more after clearing its flag. Two drainers would split each window's jobs between
them, twice the claims and statements for the same rows. A drainer whose claims come back full
is falling behind, and sends one `helper` message, which is not turned away: so a slow model or
a flood still gets every worker process it needs.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from app.store import jobs as job_store
from app.store.jobs import ClaimedJob
from workers.context import WorkerContext
from workers.inline import execute_jobs, finish_in_transaction, fits_one_transaction

log = logging.getLogger(__name__)

class Drainer:
    """Drains the model of one message's job in this process."""

    def __init__(self, context: WorkerContext, job_id: uuid.UUID, model_id: uuid.UUID,
                 queue: str | None, processing: dict[str, Any], *, routing_key: str | None,
                 redelivered: bool):
        settings = self.settings = context.settings
        self.context, self.job_id, self.model_id, self.queue = context, job_id, model_id, queue
        self.routing_key, self.redelivered = routing_key, redelivered
        self.batch_size = context.batch_size(processing)
        self.row_budget = self.batch_size * settings.tuning.claim_row_budget_batches
        wait_ms = processing.get("max_batch_wait_ms")
        self.linger = (settings.tuning.max_batch_wait_ms if wait_ms is None else wait_ms) / 1000
        self.in_transaction_rows = min(settings.tuning.single_transaction_rows, self.batch_size)
        self.totals = {"rows": 0, "batches": 0, "jobs_finished": 0}
        self.asked_for_help = False

    def claim(self) -> tuple[list[ClaimedJob], dict[str, int] | None]:
        """Lock waiting jobs; a small first-try claim is scored and finished right there
        (returned with its stats), any other is leased, to be scored by `execute_jobs`."""
        settings = self.settings
        with self.context.sessions() as session, session.begin():
            jobs = job_store.lock_inline(session, self.job_id,
                                         max_jobs=settings.tuning.max_jobs_per_claim,
                                         row_budget=self.row_budget,
                                         max_attempts=settings.max_attempts,
                                         urgent_seconds=settings.tuning.urgent_seconds)
            if fits_one_transaction(jobs, self.in_transaction_rows, self.redelivered):
                model = self.context.model(session, jobs[0].model_id)
                return jobs, finish_in_transaction(session, jobs, model, self.batch_size)
            job_store.start_leases(session, jobs, settings.lease_seconds)
            return jobs, None

    def run(self, helper: bool) -> dict[str, int]:
        drains = self.context.drains
        if not helper and drains.active(self.model_id, self.queue):
            return self.totals  # another process is draining this model: it takes this job
        if helper:
            log.info("helping to drain model %s", self.model_id)
        try:
            return self.drain(time.monotonic() + self.settings.tuning.drain_seconds)
        except BaseException:
            drains.clear(self.model_id, self.queue)  # a failed drain must not turn messages away
            raise

    def drain(self, deadline: float) -> dict[str, int]:
        """Keep claiming this model's queued jobs while there are any."""
        drains = self.context.drains
        while True:
            drains.mark(self.model_id, self.queue)  # the API sends no messages meanwhile
            claimed, stats = self.claim()
            if not claimed:
                drains.clear(self.model_id, self.queue)
                claimed, stats = self.claim()  # a job committed by a submitter that saw the flag
                if not claimed:
                    return self.totals
            self.ask_for_help_when_full(claimed)
            self.score(claimed, stats)
            if time.monotonic() > deadline:  # let other models' messages have this process
                drains.clear(self.model_id, self.queue)
                self.context.publisher.publish_jobs([self.job_id], self.routing_key)
                return self.totals

    def ask_for_help_when_full(self, claimed: list[ClaimedJob]) -> None:
        if self.asked_for_help:
            return
        if (len(claimed) >= self.settings.tuning.max_jobs_per_claim
                or sum(j.total for j in claimed) >= self.row_budget):
            self.asked_for_help = True  # a full claim: more is waiting than this process takes
            log.info("claims are full: asking another process to help drain")
            self.context.publisher.publish_jobs([self.job_id], self.routing_key, helper=True)

    def score(self, claimed: list[ClaimedJob], stats: dict[str, int] | None) -> None:
        """Score a leased claim (an in-transaction one is done), then wait for company if the
        jobs arrive together but did not fill a batch."""
        settings = self.settings
        if stats is None:
            with self.context.sessions() as session:
                model = self.context.model(session, claimed[0].model_id)
            stats = execute_jobs(self.context.sessions, claimed, model,
                                 batch_size=self.batch_size, lease_seconds=settings.lease_seconds,
                                 heartbeat_seconds=settings.lease_heartbeat_seconds)
        log.info("scored %d rows of %d job(s) in %d batch(es)", stats["rows"], len(claimed),
                 stats["batches"])
        self.totals = {k: self.totals[k] + stats[k] for k in self.totals}
        if len(claimed) > 1 and stats["rows"] < self.batch_size and self.linger > 0:
            # a claim of one job (an idle system, or jobs one at a time) does not wait
            time.sleep(self.linger)
