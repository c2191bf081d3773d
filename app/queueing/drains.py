"""Drain flags: which (model, queue) pairs a worker is draining, so that the API can skip
messages a drain would make redundant."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class DrainFlags:
    """Which (model, queue) pairs a worker is draining right now: a Redis key with a short TTL.

    A worker sets the flag before each claim while it drains a model, and on the way out clears
    it and claims once more. So a job whose submitter saw the flag after committing is always
    claimed by a claim that began after its commit, and the API need not publish at all while a
    drain runs: under load, no messages. The TTL bounds the cost of a flag left by a killed
    worker (the reconciler re-publishes what waited) and lets other worker processes join a
    drain whose batches take longer than it.

    A second flag per pair says that a file chunk scores the pair's small inline jobs between
    its batches: the API then sends no message for a job that small, and the chunk, when it
    ends, clears the flag and sends one message for what is still waiting (the same
    clear-then-look-once-more exit as a drain).
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
    def small_key(model_id: Any, queue: str | None) -> str:
        return f"kiln:serving-small:{model_id}:{queue or ''}"

    def mark_small(self, model_id: Any, queue: str | None, max_rows: int) -> None:
        """A file chunk scores this model's queued inline jobs of at most `max_rows` rows
        between its batches (`workers.small_jobs`), so they need no message of their own."""
        self._write(self.redis.set, self.small_key(model_id, queue), max_rows, px=self.ttl_ms)

    def clear_small(self, model_id: Any, queue: str | None) -> None:
        self._write(self.redis.delete, self.small_key(model_id, queue))

    def covers(self, model_id: Any, queue: str | None, rows: int) -> bool:
        """Whether a job of `rows` rows just committed needs no message: the model is being
        drained, or a chunk serves its small jobs and this one is small enough for it. False
        when Redis cannot tell: publishing is the safe default."""
        try:
            draining, small = self.redis.mget(self.key(model_id, queue),
                                              self.small_key(model_id, queue))
            return draining is not None or (small is not None and rows <= int(small))
        except Exception:  # noqa: BLE001 - any Redis failure
            return False

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
