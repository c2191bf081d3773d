"""Signed-out sessions: a cookie is signed, not stored, so signing out also records the
session's id in Redis until the cookie would have expired anyway; a copy of the cookie kept
from before is then refused too."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class SignedOut:
    def __init__(self, redis_url: str):
        import redis

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)

    @staticmethod
    def key(session_id: str) -> str:
        return f"kiln:ui:signed-out:{session_id}"

    def record(self, session_id: str, seconds: float) -> None:
        self.redis.set(self.key(session_id), 1, ex=max(int(seconds), 1))

    def contains(self, session_id: str) -> bool:
        """False when Redis cannot tell: the dashboard stays usable through a Redis outage
        (the cookie still expires, and the key behind it can be revoked)."""
        try:
            return bool(self.redis.exists(self.key(session_id)))
        except Exception as exc:  # noqa: BLE001 - any Redis failure
            log.warning("signed-out sessions unreadable: %s", exc)
            return False
