"""Admission: whether a submit or an upload may go ahead under its tenant's and the instance's
limits, decided where it cannot be raced.

A tenant with no limits, on an instance with no backlog limit, costs its submits one cache
lookup: `writer_for` hands back the group-commit writer itself. Otherwise the job is written by
an `AdmittingWriter`: the submit rate is checked in Redis (the `limits` library's moving window,
shared by every API process), then the counts are read under row and advisory locks in the
transaction that inserts the job (`app.store.limits`), so the last slot is admitted once.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import orjson
from limits import RateLimitItemPerSecond
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session, sessionmaker

from app.caching import LoadingCache, cached_or_loaded
from app.errors import QuotaExceeded, RateLimited
from app.groupcommit import GroupCommit
from app.orm import File
from app.services.auth import Caller
from app.services.files import remove_stored
from app.services.jobs import insert_jobs
from app.services.limits import Limits, load_limits
from app.settings import Settings
from app.store import limits as limit_store


def limits_storage_url(redis_url: str) -> str:
    """The `limits` library spells Redis Unix sockets `redis+unix://`."""
    return "redis+unix://" + redis_url[len("unix://"):] if redis_url.startswith("unix://") \
        else redis_url


def rate_item(limits: Limits) -> RateLimitItemPerSecond:
    """`burst` submits per window of `burst / rate` seconds (whole seconds, at least one; with a
    burst under one second's rate the window's amount is the rate's)."""
    window = max(1, math.ceil(limits.burst / limits.submits_per_second))
    return RateLimitItemPerSecond(max(limits.burst, math.ceil(limits.submits_per_second * window)),
                                  window)


class Admission:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 cache: LoadingCache[Limits] | None = None):
        self.settings, self.sessions, self.cache = settings, sessions, cache
        self._limiter: MovingWindowRateLimiter | None = None

    def limits_for(self, tenant_id: uuid.UUID) -> Limits:
        """The tenant's limits, cached like API keys (a change applies within the TTL)."""
        def load() -> Limits:
            with self.sessions() as session:
                return load_limits(session, tenant_id, self.settings)

        return cached_or_loaded(self.cache, ("limits", tenant_id), load)

    def writer_for(self, caller: Caller, writer: GroupCommit | None) -> Any:
        """The writer a submit uses: `writer` itself when nothing limits it."""
        limits = self.limits_for(caller.tenant_id)
        if not (limits.counted or limits.submits_per_second or self.settings.max_queued_rows):
            return writer
        return AdmittingWriter(self, limits, writer)

    def check_rate(self, tenant_id: uuid.UUID, limits: Limits) -> None:
        if not limits.submits_per_second:
            return
        if self._limiter is None:
            storage = storage_from_string(limits_storage_url(self.settings.redis_url or ""))
            self._limiter = MovingWindowRateLimiter(storage)
        item = rate_item(limits)
        if not self._limiter.hit(item, "kiln-submit", str(tenant_id)):
            reset = self._limiter.get_window_stats(item, "kiln-submit", str(tenant_id)).reset_time
            raise RateLimited(
                f"more than {item.amount} submits in {item.multiples} s "
                f"(submits_per_second {limits.submits_per_second:g})",
                retry_after_seconds=math.ceil(reset - time.time()), limit="submits_per_second",
                limit_value=limits.submits_per_second, current=item.amount)

    def check_quotas(self, session: Session, tenant_id: uuid.UUID, limits: Limits,
                     rows: int) -> None:
        """Refuse a job of `rows` rows past a quota; takes the locks that keep the counts
        true until `session`'s transaction ends."""
        if self.settings.max_queued_rows:
            limit_store.lock_backlog(session)
            queued = limit_store.instance_queued_rows(session)
            if queued + rows > self.settings.max_queued_rows:
                self._refuse("KILN_MAX_QUEUED_ROWS", self.settings.max_queued_rows, queued,
                             f"the instance holds {queued} rows of unfinished jobs")
        if not limits.counted:
            return
        limit_store.lock_tenant(session, tenant_id)
        backlog = limit_store.tenant_backlog(session, tenant_id)
        if limits.max_active_jobs and backlog.active_jobs + 1 > limits.max_active_jobs:
            self._refuse("max_active_jobs", limits.max_active_jobs, backlog.active_jobs,
                         f"{backlog.active_jobs} jobs are unfinished")
        if limits.max_queued_rows and backlog.queued_rows + rows > limits.max_queued_rows:
            self._refuse("max_queued_rows", limits.max_queued_rows, backlog.queued_rows,
                         f"{backlog.queued_rows} rows are unfinished and this job adds {rows}")
        if limits.max_storage_bytes:
            self.check_storage(session, tenant_id, limits, adding=0)

    def check_storage(self, session: Session, tenant_id: uuid.UUID, limits: Limits,
                      adding: int) -> None:
        """Refuse when the tenant's files (plus `adding` bytes) are past its storage quota."""
        if not limits.max_storage_bytes:
            return
        stored = limit_store.tenant_storage_bytes(session, tenant_id)
        if stored >= limits.max_storage_bytes or stored + adding > limits.max_storage_bytes:
            self._refuse("max_storage_bytes", limits.max_storage_bytes, stored,
                         f"the tenant stores {stored} bytes" + (f" and this adds {adding}"
                                                                if adding else ""))

    def precheck_upload(self, session: Session, caller: Caller) -> None:
        """Refuse an upload before its bytes are read when the tenant is already full."""
        self.check_storage(session, caller.tenant_id, self.limits_for(caller.tenant_id), 0)

    def admit_upload(self, session: Session, caller: Caller, record: File) -> None:
        """Check a stored (flushed, uncommitted) upload against the quota under the tenant's
        lock; a refused upload's bytes are removed, and rolling back forgets its row."""
        limits = self.limits_for(caller.tenant_id)
        if not limits.max_storage_bytes:
            return
        limit_store.lock_tenant(session, caller.tenant_id)
        stored = limit_store.tenant_storage_bytes(session, caller.tenant_id)  # with this upload
        if stored > limits.max_storage_bytes:
            remove_stored(record.uri)
            self._refuse("max_storage_bytes", limits.max_storage_bytes, stored - record.bytes,
                         f"this upload of {record.bytes} bytes would make it {stored}")

    def _refuse(self, name: str, limit: int, current: int, why: str) -> None:
        raise QuotaExceeded(f"{name} is {limit}: {why}", limit=name, limit_value=limit,
                            current=current,
                            retry_after_seconds=self.settings.quota_retry_after_seconds)


class AdmittingWriter:
    """A submit's writer under limits: `run(row)` as `GroupCommit.run` does, after admission."""

    def __init__(self, admission: Admission, limits: Limits, writer: GroupCommit | None):
        self.admission, self.limits, self.writer = admission, limits, writer

    def run(self, row: tuple[uuid.UUID, bytes]) -> Any:
        values = orjson.loads(row[1])
        tenant_id = uuid.UUID(values["tenant_id"])
        self.admission.check_rate(tenant_id, self.limits)
        if not (self.limits.counted or self.admission.settings.max_queued_rows):
            if self.writer is not None:
                return self.writer.run(row)
        rows = max(1, values.get("total_count") or 0)
        with self.admission.sessions.begin() as session:
            self.admission.check_quotas(session, tenant_id, self.limits, rows)
            return insert_jobs(lambda sql, params: session.connection().exec_driver_sql(
                sql, params).all(), [row])[0]
