"""The one context per app (settings, sessions, storage, the secret box, the publisher, the
submit writer) and the request's unit of work: its session, its caller, and one commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from flask import current_app, g, request
from flask.globals import app_ctx
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from app import origin
from app.caching import LoadingCache
from app.db import close_quietly, connect
from app.groupcommit import GroupCommit
from app.queueing.coalescer import Coalescer
from app.queueing.drains import DrainFlags
from app.queueing.endings import Endings, Waiters
from app.queueing.publisher import Publisher
from app.secretbox import SecretBox
from app.services import jobs
from app.services.admission import Admission
from app.services.auth import Caller, authenticate
from app.services.commands import Intake
from app.settings import Settings
from app.storage import Storage


@dataclass
class ApiContext:
    """Built once per app by `create_app`; handlers reach it through `context()`."""

    settings: Settings
    sessions: sessionmaker[Session]
    publisher: Publisher
    storage: Storage
    coalescer: Coalescer | None = None
    callers: LoadingCache | None = None  # None: no caching (KILN_TUNING__CACHE_SECONDS=0)
    models: LoadingCache | None = None
    writer: GroupCommit | None = None  # new jobs, group-committed
    request_sessions: scoped_session | None = None  # see `db()`
    intake: Intake = field(default_factory=Intake)  # what every submission brings
    waiters: Waiters | None = None  # requests waiting for jobs to end (`?wait`)

    @cached_property
    def secret_box(self) -> SecretBox:
        """Built on first use, so that creating the app reads (or creates) no key file."""
        return SecretBox.from_settings(self.settings)
    admission: Admission | None = None  # tenant and instance limits (app.services.admission)

    @classmethod
    def build(cls, settings: Settings, sessions: sessionmaker[Session]) -> ApiContext:
        ttl = settings.tuning.cache_seconds
        callers, models = ((LoadingCache(10_000, ttl), LoadingCache(1_000, ttl)) if ttl > 0
                           else (None, None))
        publisher = Publisher(settings)
        Endings.install(settings.redis_url)  # a cancel that ends a job wakes its waiters
        window = settings.tuning.max_batch_wait_ms / 1000
        engine = sessions.kw["bind"]
        writer = GroupCommit(lambda: connect(engine, autocommit=True), jobs.insert_jobs_on,
                             gather_seconds=settings.tuning.group_commit_wait_ms / 1000)
        return cls(settings=settings, sessions=sessions, publisher=publisher,
                   storage=Storage(settings.resolved_storage_url),
                   coalescer=Coalescer(publisher, window, DrainFlags(settings.redis_url),
                                       quiet_seconds=settings.tuning.quiet_seconds)
                   if window > 0 else None,
                   callers=callers, models=models, writer=writer,
                   request_sessions=scoped_session(sessions, scopefunc=_app_context_id),
                   intake=Intake(max_inline_inputs=settings.max_inline_inputs,
                                 queues=(settings.queue, settings.gpu_queue), models=models,
                                 writer=writer,
                                 result_retention_seconds=settings.result_retention_seconds),
                   admission=Admission(settings, sessions,
                                       LoadingCache(10_000, ttl) if ttl > 0 else None),
                   waiters=Waiters(settings.redis_url, settings.max_waiting_requests,
                                   settings.tuning.wait_recheck_seconds))

    def announce(self, job) -> None:
        """Tell workers about a committed job: coalesced per model for inline jobs, over the
        model's own `max_batch_wait_ms` when it sets one."""
        queue, wait_ms = job.options.get("queue"), job.options.get("max_batch_wait_ms")
        if self.coalescer is not None and job.kind == "inline":
            self.coalescer.notify((job.model_id, queue), job.id, queue,
                                  None if wait_ms is None else wait_ms / 1000, job.total_count)
        else:
            self.publisher.publish_jobs([job.id], queue)


def context() -> ApiContext:
    return current_app.extensions["kiln"]


def _app_context_id() -> int:
    return id(app_ctx._get_current_object())


def db() -> Session:
    """The request's session: a proxy that opens it on first use, committed by
    `commit_request` and closed at teardown. Handlers never commit it. Most submits never open
    one (the caller and the model come from caches, the job goes through the group-commit
    writer), and opening and closing one costs more than the rest of auth."""
    return context().request_sessions


def on_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the request's transaction has committed: commit, then publish."""
    g.setdefault("after_commit", []).append(callback)


def commit_request(response: object) -> object:
    """The request's unit of work ends here, once its handler has returned: a success commits
    the session (if the request opened one), then runs its `on_commit` callbacks. A handler
    that raised, or answered an error, commits nothing: teardown closes, and so rolls back,
    the session. A commit that fails is the request's error, mapped like any other."""
    callbacks = g.pop("after_commit", None)
    if getattr(response, "status_code", 200) >= 400:
        return response
    sessions = context().request_sessions
    if sessions.registry.has():
        session = sessions.registry()
        if session.in_transaction():
            session.commit()
    for callback in callbacks or ():
        callback()
    return response


def caller() -> Caller:
    if "caller" not in g:
        g.caller = authenticate(db(), request.headers.get("Authorization"), context().callers)
        origin.set_origin(actor=g.caller.key_prefix,  # undone by `app.api.requests`
                          tenant_id=str(g.caller.tenant_id))
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
