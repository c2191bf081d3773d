"""Per-app dependencies and the per-request session and caller."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request
from flask.globals import app_ctx
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from app.caching import LoadingCache
from app.db import close_quietly, connect
from app.groupcommit import GroupCommit
from app.queueing.coalescer import Coalescer
from app.queueing.drains import DrainFlags
from app.queueing.publisher import Publisher
from app.services import jobs
from app.services.admission import Admission
from app.services.auth import Caller, authenticate
from app.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    sessions: sessionmaker[Session]
    publisher: Publisher
    coalescer: Coalescer | None = None
    callers: LoadingCache | None = None  # None: no caching (KILN_TUNING__CACHE_SECONDS=0)
    models: LoadingCache | None = None
    writer: GroupCommit | None = None  # new jobs, group-committed
    request_sessions: scoped_session | None = None  # see `db()`
    admission: Admission | None = None  # tenant and instance limits (app.services.admission)

    @classmethod
    def build(cls, settings: Settings, sessions: sessionmaker[Session]) -> ApiContext:
        ttl = settings.tuning.cache_seconds
        caches = ({"callers": LoadingCache(10_000, ttl), "models": LoadingCache(1_000, ttl)}
                  if ttl > 0 else {})
        publisher = Publisher(settings)
        window = settings.tuning.max_batch_wait_ms / 1000
        engine = sessions.kw["bind"]
        return cls(settings=settings, sessions=sessions, publisher=publisher,
                   coalescer=Coalescer(publisher, window, DrainFlags(settings.redis_url),
                                       quiet_seconds=settings.tuning.quiet_seconds)
                   if window > 0 else None,
                   writer=GroupCommit(lambda: connect(engine, autocommit=True), jobs.insert_jobs_on,
                                      gather_seconds=settings.tuning.group_commit_wait_ms / 1000),
                   request_sessions=scoped_session(sessions, scopefunc=_app_context_id),
                   admission=Admission(settings, sessions,
                                       LoadingCache(10_000, ttl) if ttl > 0 else None),
                   **caches)

    def announce(self, job) -> None:
        """Tell workers about a committed job: coalesced per model for inline jobs, over the
        model's own `max_batch_wait_ms` when it sets one."""
        queue, wait_ms = job.options.get("queue"), job.options.get("max_batch_wait_ms")
        if self.coalescer is not None and job.kind == "inline":
            self.coalescer.notify((job.model_id, queue), job.id, queue,
                                  None if wait_ms is None else wait_ms / 1000)
        else:
            self.publisher.publish_jobs([job.id], queue)


def context() -> ApiContext:
    return current_app.extensions["kiln"]


def _app_context_id() -> int:
    return id(app_ctx._get_current_object())


def db() -> Session:
    """The request's session: a proxy that opens it on first use, closed at teardown. Most
    submits never open one (the caller and the model come from caches, the job goes through
    the group-commit writer), and opening and closing one costs more than the rest of auth."""
    return context().request_sessions


def caller() -> Caller:
    if "caller" not in g:
        g.caller = authenticate(db(), request.headers.get("Authorization"), context().callers)
    return g.caller


def close_session(_exc: BaseException | None = None) -> None:
    """Teardown: the request's session is closed and always forgotten. `scoped_session.remove()`
    keeps a session whose close raised, and the next app context at the same address would be
    handed it."""
    sessions = context().request_sessions
    try:
        if sessions.registry.has():
            close_quietly(sessions.registry())
    finally:
        sessions.registry.clear()
