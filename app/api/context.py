"""Per-app dependencies and the per-request session and caller."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import MutableMapping

from cachetools import TTLCache

from flask import current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from app.queueing import Publisher
from app.services.auth import Caller, authenticate
from app.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    sessions: sessionmaker[Session]
    publisher: Publisher
    callers: MutableMapping = field(default_factory=dict)
    models: MutableMapping = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, sessions: sessionmaker[Session]) -> "ApiContext":
        ttl = settings.cache_seconds
        caches = ({"callers": LockedTTLCache(10_000, ttl), "models": LockedTTLCache(1_000, ttl)}
                  if ttl > 0 else {})
        return cls(settings=settings, sessions=sessions, publisher=Publisher(settings), **caches)


class LockedTTLCache(TTLCache):
    """cachetools' TTLCache is not thread-safe; gunicorn's gthread workers share it."""

    def __init__(self, maxsize: int, ttl: float):
        super().__init__(maxsize, ttl)
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            return super().get(key, default)

    def __setitem__(self, key, value) -> None:
        with self._lock:
            super().__setitem__(key, value)


def context() -> ApiContext:
    return current_app.extensions["kiln"]


def db() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = context().sessions()
    return g.db


def caller() -> Caller:
    if "caller" not in g:
        g.caller = authenticate(db(), request.headers.get("Authorization"), context().callers)
    return g.caller


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()
