"""Every Prometheus metric Kiln exports, defined in one place; docs/metrics.md describes each.

The metrics are module-level objects, as prometheus_client expects. All of them have labels, so
defining them creates no value and, in multiprocess mode, opens no file: that happens on the
first `labels(...)` call.

Multiprocess mode (API worker processes, Celery prefork children): `kiln api` and `kiln worker` set
PROMETHEUS_MULTIPROC_DIR to a fresh folder before anything imports prometheus_client (see
`app.cli.api.multiprocess_metrics`); every process then writes its values to its own files there,
and a scrape adds them up (`scrape_registry`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ---------------------------------------------------------------- API (kiln api)

HTTP_REQUESTS = Counter(
    "kiln_http_requests_total", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"])
HTTP_REQUEST_SECONDS = Histogram(
    "kiln_http_request_duration_seconds",
    "Time from the first request hook to the response object (streamed bodies not included).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
JOBS_SUBMITTED = Counter(
    "kiln_jobs_submitted_total",
    "Job submissions the API accepted (202), by kind; an Idempotency-Key replay counts again.",
    ["kind"])

# ---------------------------------------------------------------- both sides

JOBS_FINISHED = Counter(
    "kiln_jobs_finished_total",
    "Jobs that reached a terminal status, counted by the process that ended them.", ["status"])

# ---------------------------------------------------------------- workers (kiln worker)

MODEL_CALLS = Counter(
    "kiln_model_calls_total", "Calls of a model runtime, by model and outcome (ok or error).",
    ["model", "outcome"])
MODEL_CALL_SECONDS = Histogram(
    "kiln_model_call_seconds", "Seconds per model call, by model and execution provider.",
    ["model", "provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
             60.0))
MODEL_BATCH_ROWS = Histogram(
    "kiln_model_batch_rows", "Rows per model call (batch size), failed calls included.",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384))
ROWS_SCORED = Counter(
    "kiln_rows_scored_total", "Rows a model call returned outputs for.", ["model"])
CHUNKS_PROCESSED = Counter(
    "kiln_chunks_processed_total",
    "File-job chunk tasks, by outcome: done, skipped (not claimed, lease lost, job ended) "
    "or error (raised).", ["outcome"])
PHASES_STALLED = Counter(
    "kiln_phases_stalled_total",
    "File-job phases that reached no checkpoint for KILN_STALL_SECONDS and let their lease go, "
    "by phase: validating, chunk or finalizing.", ["phase"])
WEBHOOK_DELIVERIES = Counter(
    "kiln_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome: delivered, retry, failed, gone (410) or error "
    "(the outcome could not be recorded).", ["outcome"])

# ---------------------------------------------------------------- labels

UNMATCHED_ROUTE = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(rule) -> str:
    """The URL rule's template (`/v1/jobs/<job_id>`); one label for every URL no rule matched,
    so that requests for random paths cannot grow the number of series."""
    return rule.rule if rule is not None else UNMATCHED_ROUTE


def method_label(method: str) -> str:
    """Standard methods as themselves; anything else a client invents is `other`."""
    return method if method in METHODS else "other"


# ---------------------------------------------------------------- recording across forks

_fork_guard = threading.Lock()
_forks_guarded = threading.Event()


def hold_across_forks() -> None:
    """Keep other threads out of prometheus_client while this process forks.

    A Celery worker's main process records metrics from its reconciler and webhook threads while
    it forks prefork children. A child forked while one of those threads held a prometheus_client
    lock would inherit the lock held, and hang on its first metric. Recording through the
    functions below takes `_fork_guard`, and with this a fork waits for it. Idempotent.
    """
    if _forks_guarded.is_set():
        return
    _forks_guarded.set()
    os.register_at_fork(before=_fork_guard.acquire, after_in_parent=_fork_guard.release,
                        after_in_child=_fork_guard.release)


def count_finished_jobs(statuses: Iterable[str]) -> None:
    with _fork_guard:
        for status in statuses:
            JOBS_FINISHED.labels(status).inc()


def count_chunk(outcome: str) -> None:
    with _fork_guard:
        CHUNKS_PROCESSED.labels(outcome).inc()


def count_stalled_phase(phase: str) -> None:
    with _fork_guard:
        PHASES_STALLED.labels(phase).inc()


def count_webhook_delivery(outcome: str) -> None:
    with _fork_guard:
        WEBHOOK_DELIVERIES.labels(outcome).inc()


class ModelMeter:
    """The series of one model and provider, resolved once, recorded per call."""

    def __init__(self, model: str, provider: str):
        self.ok = MODEL_CALLS.labels(model, "ok")
        self.error = MODEL_CALLS.labels(model, "error")
        self.seconds = MODEL_CALL_SECONDS.labels(model, provider)
        self.batch_rows = MODEL_BATCH_ROWS.labels(model)
        self.scored = ROWS_SCORED.labels(model)

    def record(self, rows: int, seconds: float, ok: bool) -> None:
        with _fork_guard:
            self.seconds.observe(seconds)
            self.batch_rows.observe(rows)
            if ok:
                self.ok.inc()
                self.scored.inc(rows)
            else:
                self.error.inc()


# ---------------------------------------------------------------- scraping

def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def scrape_registry() -> CollectorRegistry | None:
    """A registry that adds up every process's files in multiprocess mode; None otherwise,
    where the default registry holds this process's metrics."""
    if not multiprocess_dir():
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live-gauge files (Kiln has none yet); its counters stay counted."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
