"""Job endings over Redis pub/sub, so that a client can wait for its job instead of polling.

`GET /v1/jobs/{id}?wait=N` holds the request until the job ends or N seconds pass. Polling a
one-record job every few milliseconds to see it done within that much of its end costs the API
(and the workers' cores it shares) a request per poll; a waiting request costs one request and
one wake-up.

- Every process that ends jobs (`app.store.lifecycle.finish`: workers, the reconciler, an API
  cancel) publishes the ids it ended, once the transaction that ended them has committed: one
  message per commit, `Endings.install`.
- Each API process has one listener thread, subscribed to the channel, that wakes the requests
  waiting for those ids (`Waiters`).

Postgres stays the record: a woken request reads the job again, and a waiting request reads it
again every `KILN_TUNING__WAIT_RECHECK_SECONDS` anyway, so a message lost (Redis restarting, a publish that
failed) costs a waiter at most that much latency, never a wrong answer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_PENDING = "kiln_ended_ids"  # Session.info: ids ended in the session's open transaction


def channel(redis_url: str) -> str:
    """Pub/sub channels span a Redis server's databases: the channel names the database."""
    from redis.connection import parse_url

    return f"kiln:{parse_url(redis_url).get('db', 0)}:jobs-ended"


class Endings:
    """The publishing side: ids of jobs `lifecycle.finish` ended, published after commit."""

    _installed: Endings | None = None

    def __init__(self, redis_url: str):
        import redis

        # short timeouts: a Redis that is away must not hold up the commit path for long
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=0.5,
                                          socket_connect_timeout=0.5)
        self.channel = channel(redis_url)

    @classmethod
    def install(cls, redis_url: str) -> None:
        """Publish the jobs this process ends from now on (once per process; the last URL
        wins, which only tests use)."""
        from app.store import lifecycle

        first = cls._installed is None
        cls._installed = cls(redis_url)
        if first:
            lifecycle.subscribe(_remember_ended)
            event.listen(Session, "after_commit", _publish_ended)
            event.listen(Session, "after_rollback", _forget_ended)

    def publish(self, ids: Sequence[uuid.UUID]) -> None:
        try:
            self.redis.publish(self.channel, " ".join(str(i) for i in ids))
        except Exception as exc:  # noqa: BLE001 - any Redis failure: waiters re-read anyway
            log.warning("job endings not published (waiting requests read their jobs again "
                        "within KILN_TUNING__WAIT_RECHECK_SECONDS): %s", exc)


def _remember_ended(session: Session, ended: Sequence[Any]) -> None:
    if ended:
        session.info.setdefault(_PENDING, []).extend(job.id for job in ended)


def _publish_ended(session: Session) -> None:
    ids = session.info.pop(_PENDING, None)
    if ids and Endings._installed is not None:
        Endings._installed.publish(ids)


def _forget_ended(session: Session) -> None:
    session.info.pop(_PENDING, None)


class Waiters:
    """The waiting side, one per API process: requests waiting for jobs to end.

    At most `limit` requests wait at once (each holds one of the process's request threads);
    `watch` tells a request beyond that to answer at once.
    """

    def __init__(self, redis_url: str, limit: int, recheck_seconds: float = 1.0):
        self.redis_url, self.limit, self.recheck_seconds = redis_url, limit, recheck_seconds
        self.channel = channel(redis_url)
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = {}
        self._waiting = 0
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[threading.Event | None]:
        """An event set when `job_id` may have ended (read the job again), or None when this
        process already holds `limit` waiting requests. Watch before reading the job, so that
        an ending published after the read is not missed."""
        key, ended = str(job_id), threading.Event()
        with self._lock:
            if self._waiting >= self.limit:
                ended = None
            else:
                self._waiting += 1
                self._events.setdefault(key, []).append(ended)
        if ended is not None:
            self._ensure_listening()
        try:
            yield ended
        finally:
            if ended is not None:
                with self._lock:
                    self._waiting -= 1
                    events = self._events.get(key, [])
                    if ended in events:
                        events.remove(ended)
                    if not events:
                        self._events.pop(key, None)

    def _ensure_listening(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            started = self._thread is None
            if started:
                self._thread = threading.Thread(target=self._listen, daemon=True,
                                                name="kiln-job-endings")
                self._thread.start()
        if started:  # the first watcher waits (briefly) for the subscription to exist
            self._subscribed.wait(1.0)

    def _wake(self, ids: list[str] | None) -> None:
        with self._lock:
            if ids is None:  # the subscription was lost: everyone reads again
                events = [e for waiting in self._events.values() for e in waiting]
            else:
                events = [e for key in ids for e in self._events.get(key, ())]
        for ended in events:
            ended.set()

    def _listen(self) -> None:
        import redis

        while True:
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2,
                                              health_check_interval=10)
                pubsub = client.pubsub(ignore_subscribe_messages=False)
                pubsub.subscribe(self.channel)
                for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                        self._wake(None)  # endings may have passed while unsubscribed
                    elif message["type"] == "message":
                        self._wake(message["data"].decode().split())
            except Exception as exc:  # noqa: BLE001 - Redis away: waiters fall back to re-reads
                self._subscribed.clear()
                log.warning("job endings listener lost Redis, retrying: %s", exc)
                self._wake(None)
                time.sleep(1.0)
