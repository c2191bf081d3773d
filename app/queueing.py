"""Celery configuration shared by the API's publisher and the workers, and the publisher itself."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from celery import Celery

from app.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB = "kiln.run_job"
RUN_CHUNK = "kiln.run_chunk"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Reliability settings from DESIGN.md: late acks, requeue on worker loss, prefetch 1."""
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_seconds},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2.0,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_seconds,
        "worker_enable_soft_shutdown_on_idle": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        "worker_hijack_root_logger": False,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.1,
                                      "interval_step": 0.2, "interval_max": 0.5},
    }


class Publisher:
    """Tells workers to look at jobs. A lost message is harmless: the reconciler re-publishes."""

    def __init__(self, settings: Settings):
        self.celery = Celery("kiln-publisher", set_as_current=False)
        self.celery.conf.update(celery_config(settings))
        self.queue = settings.queue

    def publish_routed(self, jobs: Iterable[tuple[uuid.UUID | str, str | None]]) -> bool:
        """Publish (job id, queue) pairs, each to its own queue."""
        by_queue: dict[str | None, list] = {}
        for job_id, queue in jobs:
            by_queue.setdefault(queue, []).append(job_id)
        # a list, not a generator: every queue is published to even after one fails
        return all([self.publish_jobs(ids, queue) for queue, ids in by_queue.items()])  # noqa: C419

    def publish_jobs(self, job_ids: Iterable[uuid.UUID | str], queue: str | None = None,
                     helper: bool = False) -> bool:
        """One message per job; `helper` marks a draining worker's call for help (see
        `workers.tasks.run_job`)."""
        try:
            for job_id in job_ids:
                self.celery.send_task(RUN_JOB, kwargs={"job_id": str(job_id),
                                                       **({"helper": True} if helper else {})},
                                      queue=queue or self.queue)
        except Exception as exc:  # noqa: BLE001 - any broker failure; the job is safe in Postgres
            log.warning("publish failed, the reconciler will re-publish: %s", exc)
            return False
        return True

    def publish_chunks(self, chunks: Iterable[tuple], queue: str | None = None) -> bool:
        """Chunks as (job id, index) to `queue`, or (job id, index, queue) each to its own."""
        try:
            for job_id, index, *routed in chunks:
                target = (routed[0] if routed else None) or queue or self.queue
                self.celery.send_task(RUN_CHUNK, kwargs={"job_id": str(job_id), "index": index},
                                      queue=target)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("publish failed, the reconciler will re-publish: %s", exc)
            return False
        return True


class DrainFlags:
    """Which (model, queue) pairs a worker is draining right now: a Redis key with a short TTL.

    A worker sets the flag before each claim while it drains a model, and on the way out clears
    it and claims once more. So a job whose submitter saw the flag after committing is always
    claimed by a claim that began after its commit, and the API need not publish at all while a
    drain runs: under load, no messages. The TTL bounds the cost of a flag left by a killed
    worker (the reconciler re-publishes what waited) and lets other worker processes join a
    drain whose batches take longer than it.
    """

    def __init__(self, redis_url: str, ttl_seconds: float = 1.0):
        import redis

        # short timeouts: while Redis is away a drain must not stall on its flag
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=0.5,
                                          socket_connect_timeout=0.5)
        self.ttl_ms = max(int(ttl_seconds * 1000), 1)

    @staticmethod
    def key(model_id: Any, queue: str | None) -> str:
        return f"kiln:draining:{model_id}:{queue or ''}"

    def mark(self, model_id: Any, queue: str | None) -> None:
        self._write(self.redis.set, self.key(model_id, queue), 1, px=self.ttl_ms)

    def clear(self, model_id: Any, queue: str | None) -> None:
        self._write(self.redis.delete, self.key(model_id, queue))

    @staticmethod
    def _write(command, *args, **kwargs) -> None:
        """A failed write only costs messages (or, for a stale flag, a reconciler pass)."""
        try:
            command(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any Redis failure
            log.warning("drain flag not updated: %s", exc)

    def active(self, model_id: Any, queue: str | None) -> bool:
        """False when Redis cannot tell: publishing is the safe default."""
        try:
            return bool(self.redis.exists(self.key(model_id, queue)))
        except Exception:  # noqa: BLE001 - any Redis failure
            return False


class Coalescer:
    """At most one message per model per `window_seconds` during a burst, plus a trailing one.

    Any message for a model makes a worker claim every queued job of that model, so a burst of
    small jobs needs one message, not one each. The trailing message, sent at the end of the
    window with the newest job's id, guarantees every committed job is followed by a message
    published after its commit: no job waits for the reconciler. No message is sent while a
    worker drains that model (see `DrainFlags`): its next claim takes the job.

    A job that follows a quiet gap (no job of the model for `quiet_seconds`) is not a burst:
    it is announced at once even inside the window, so jobs sent one at a time are not held
    for the window each.
    """

    def __init__(self, publisher: Publisher, window_seconds: float,
                 drains: DrainFlags | None = None, *, quiet_seconds: float):
        self.publisher, self.window, self.drains = publisher, window_seconds, drains
        self.quiet_seconds = quiet_seconds
        self.last_sent: dict[Any, float] = {}
        self.last_job: dict[Any, float] = {}
        self.pending: dict[Any, tuple[uuid.UUID | str, str | None, float]] = {}  # id, queue, due
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, model_key: Any, job_id: uuid.UUID | str, queue: str | None = None,
               window_seconds: float | None = None) -> None:
        """A job of `model_key` was committed; `window_seconds` overrides the default window
        (a model's own `max_batch_wait_ms`)."""
        window = self.window if window_seconds is None else window_seconds
        now = time.monotonic()
        with self._lock:
            quiet = now - self.last_job.get(model_key, -1e9) >= min(window, self.quiet_seconds)
            self.last_job[model_key] = now
            if quiet or now - self.last_sent.get(model_key, -1e9) >= window:
                self.last_sent[model_key] = now
                self.pending.pop(model_key, None)  # this message is after its commit too
                send = True
            else:
                self.pending[model_key] = (job_id, queue, self.last_sent[model_key] + window)
                send = False
                self._ensure_thread()
        if send:
            self._send(model_key, job_id, queue)
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
                due_at = min((at for _, _, at in self.pending.values()), default=None)
                if due_at is None:
                    self._wake.clear()
                    continue
            time.sleep(max(due_at - time.monotonic(), 0.0))
            now, due = time.monotonic(), []
            with self._lock:
                for key, (job_id, queue, at) in list(self.pending.items()):
                    if at <= now:
                        due.append((key, job_id, queue))
                        self.last_sent[key] = now
                        del self.pending[key]
            for key, job_id, queue in due:
                self._send(key, job_id, queue)

    def _send(self, model_key: Any, job_id: uuid.UUID | str, queue: str | None) -> None:
        if self.drains is not None and self.drains.active(model_key[0], queue):
            return
        self.publisher.publish_jobs([job_id], queue)
