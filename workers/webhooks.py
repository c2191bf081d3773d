"""Send webhook deliveries from the Postgres outbox: signed, retried on a schedule held in Postgres.

One `WebhookDispatcher` runs in every `kiln worker` (beside the reconciler). It wakes when a
transaction that wrote outbox rows commits (Postgres NOTIFY), when a retry falls due, or every
reconcile interval; claims due rows with `FOR UPDATE SKIP LOCKED` and a short lease; and sends them
on a small thread pool, at most two at a time per URL, so a receiver that hangs holds two threads
for one timeout each and never the whole pool.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from opentelemetry.trace import SpanKind
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app import metrics, tracing
from app.db import make_engine, make_sessionmaker
from app.domain.signing import signature_headers
from app.domain.ssrf import Resolver, Target, UnsafeUrl, UrlPolicy, check_url
from app.secretbox import SecretBox
from app.services.webhooks import signing_secret, system_resolver, url_policy
from app.store import deliveries
from app.store.outbox import NOTIFY_CHANNEL
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_IN_FLIGHT_PER_HOST = 2
LEASE_MARGIN_SECONDS = 30.0
USER_AGENT = "Kiln-Webhooks/1"







@dataclass(frozen=True)
class Claimed:
    """One attempt this dispatcher owns until it records the result (fenced by `attempt`)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    event_id: str
    url: str
    payload: dict[str, Any]
    attempt: int
    trace_context: str | None = None  # the job's (app.tracing), read only while tracing is on


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: a status code, or an error before any response."""

    status_code: int | None = None
    error: str | None = None
    response_ms: int | None = None
    final: bool = False  # no retry can help (endpoint disabled or deleted)


def next_state(attempt: Attempt, attempts: int, schedule: Sequence[float]) -> tuple[str, float]:
    """`delivered`, `gone` (410), `failed` (no attempts left) or `retry` after the given delay."""
    code = attempt.status_code
    if code is not None and 200 <= code < 300:
        return "delivered", 0.0
    if code == 410:
        return "gone", 0.0
    if attempt.final or attempts >= len(schedule):
        return "failed", 0.0
    return "retry", float(schedule[attempts])


class Load:
    """What one dispatcher has in flight per receiver host and per tenant, with the caps.

    A hanging receiver holds at most `per_host` threads, and one tenant (however many hosts it
    uses) at most `per_tenant`, so the rest of the pool keeps serving everyone else.
    """

    def __init__(self, per_host: int, per_tenant: int):
        self.per_host, self.per_tenant = per_host, per_tenant
        self.hosts: Counter[str] = Counter()
        self.tenants: Counter[uuid.UUID] = Counter()
        self._lock = threading.Lock()

    def take(self, tenant_id: uuid.UUID, url: str) -> bool:
        host = receiver_host(url)
        with self._lock:
            if self.hosts[host] >= self.per_host or self.tenants[tenant_id] >= self.per_tenant:
                return False
            self.hosts[host] += 1
            self.tenants[tenant_id] += 1
            return True

    def give_back(self, tenant_id: uuid.UUID, url: str) -> None:
        host = receiver_host(url)
        with self._lock:
            self.hosts[host] -= 1
            self.tenants[tenant_id] -= 1
            self.hosts += Counter()  # drop zero counts
            self.tenants += Counter()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(self.tenants.values())


def receiver_host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()


def claim_deliveries(session: Session, load: Load, *, room: int,
                     lease_seconds: float) -> list[Claimed]:
    """Lock due rows (a few per host and tenant), keep those the caps admit, start an attempt."""
    candidates = deliveries.due_deliveries(session, per_host=load.per_host,
                                           per_tenant=load.per_tenant, scan=room * 4)
    picked = []
    for row in candidates:
        if len(picked) < room and load.take(row.tenant_id, row.url):
            picked.append(row)
    if not picked:
        return []
    attempts = deliveries.start_attempts(session, [r.id for r in picked], lease_seconds)
    traces = deliveries.trace_contexts(session, [r.id for r in picked]) if tracing.active() \
        else {}
    return [Claimed(r.id, r.tenant_id, r.endpoint_id, r.event_id, r.url, r.payload, attempts[r.id],
                    traces.get(r.id))
            for r in picked]


def record_attempt(session: Session, claimed: Claimed, attempt: Attempt,
                   schedule: Sequence[float]) -> str:
    """Store the outcome (a stale attempt changes nothing); a 410 disables the endpoint."""
    state, delay = next_state(attempt, claimed.attempt, schedule)
    deliveries.record_attempt(session, claimed.id, claimed.attempt,
                              state="failed" if state == "gone" else state,
                              status_code=attempt.status_code, error=attempt.error,
                              response_ms=attempt.response_ms, delay_seconds=delay)
    if state == "gone" and claimed.endpoint_id is not None:
        deliveries.disable_endpoint(session, claimed.endpoint_id, "the receiver answered 410 Gone")
    return state


def pinned_request(url: str, target: Target) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Connect to the address that passed the check, so DNS cannot change between check and send.

    The URL gets the address as its host; `Host` and TLS SNI (and so certificate checks) keep the
    name. With no address (an allowlisted host), the request goes out unchanged.
    """
    if not target.addresses:
        return url, {}, {}
    address = target.addresses[0]
    parts = urlsplit(url)
    if str(address) == target.host:
        return url, {}, {}
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return (urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
            {"Host": host_header}, extensions)


def post(claimed: Claimed, secret: str, target: Target, timeout_seconds: float,
         tls: ssl.SSLContext | None = None) -> Attempt:
    """One signed POST: no redirects followed, any 2xx is success. While tracing is on, a
    `kiln.webhook.deliver` span in the job's trace, whose `traceparent` the receiver gets."""
    if not tracing.active():
        return send(claimed, secret, target, timeout_seconds, tls)
    with tracing.continued({}, "kiln.webhook.deliver", SpanKind.CLIENT,
                           stored=lambda: claimed.trace_context, delivery_id=str(claimed.id),
                           event_id=claimed.event_id, attempt=claimed.attempt,
                           **{"server.address": target.host}):
        attempt = send(claimed, secret, target, timeout_seconds, tls, tracing.inject({}))
        tracing.annotate(**{"http.response.status_code": attempt.status_code,
                            "error.type": attempt.error and attempt.error[:100]})
        return attempt


def send(claimed: Claimed, secret: str, target: Target, timeout_seconds: float,
         tls: ssl.SSLContext | None = None, trace_headers: dict[str, str] | None = None
         ) -> Attempt:
    """The POST itself. A fresh client per POST, so that a connection pinned for one host name
    is never reused for another; `tls` is shared because building a context costs more than
    the request."""
    body = orjson.dumps(claimed.payload)
    url, headers, extensions = pinned_request(claimed.url, target)
    headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT,
                    **signature_headers(secret, claimed.event_id, int(time.time()), body),
                    **(trace_headers or {})})
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout_seconds, follow_redirects=False, trust_env=False,
                          verify=tls or True) as http:
            request = http.build_request("POST", url, content=body, headers=headers,
                                         extensions=extensions)
            response = http.send(request, stream=True)
            try:
                snippet = b"" if response.is_success else next(response.iter_raw(), b"")[:200]
            finally:
                response.close()
    except httpx.TimeoutException:
        return Attempt(error=f"timed out after {timeout_seconds:g}s", response_ms=_ms(started))
    except httpx.HTTPError as exc:
        return Attempt(error=f"{type(exc).__name__}: {exc}"[:500], response_ms=_ms(started))
    error = None
    if not response.is_success:
        reason = snippet.decode(errors="replace").strip()
        error = f"HTTP {response.status_code}" + (f": {reason}" if reason else "")
        if response.is_redirect:
            error += " (redirects are not followed)"
    return Attempt(status_code=response.status_code, error=error, response_ms=_ms(started))


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def deliver(sessions: sessionmaker[Session], box: SecretBox, policy: UrlPolicy, claimed: Claimed,
            *, timeout_seconds: float, schedule: Sequence[float],
            resolve: Resolver = system_resolver, tls: ssl.SSLContext | None = None) -> str:
    """Check the URL again (DNS may have changed), sign, send, record. Returns the new state."""
    try:
        with sessions.begin() as session:
            secret = signing_secret(session, box, claimed.tenant_id, claimed.endpoint_id)
        if secret is None:
            attempt = Attempt(error="the webhook endpoint is disabled or deleted", final=True)
        else:
            attempt = post(claimed, secret, check_url(claimed.url, policy, resolve),
                           timeout_seconds, tls)
    except UnsafeUrl as exc:
        attempt = Attempt(error=f"blocked by the SSRF guard: {exc}")
    except ValueError as exc:  # a secret that no longer decrypts: the operator must fix the key
        attempt = Attempt(error=str(exc))
    with sessions.begin() as session:
        state = record_attempt(session, claimed, attempt, schedule)
    log.info("webhook %s %s attempt %d to %s: %s", claimed.event_id, claimed.id, claimed.attempt,
             claimed.url, attempt.status_code or attempt.error)
    return state


class WebhookDispatcher:
    """Claims due deliveries and sends them concurrently; the pool bounds what is in flight."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.concurrency = settings.webhook_concurrency
        engine = make_engine(settings, name="kiln-webhooks", pool_size=2,
                             max_overflow=self.concurrency)
        self.sessions = make_sessionmaker(engine)
        self.box = SecretBox.from_settings(settings)
        self.policy = url_policy(settings)
        self.lease_seconds = settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
        self.load = Load(per_host=MAX_IN_FLIGHT_PER_HOST,
                         per_tenant=max(1, self.concurrency // 2))
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kiln-webhook")
        self.tls = httpx.create_ssl_context()
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def start(self) -> WebhookDispatcher:
        threading.Thread(target=self._listen, name="kiln-webhook-listen", daemon=True).start()
        threading.Thread(target=self._loop, name="kiln-webhook-dispatch", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def dispatch_once(self) -> float:
        """Claim what the pool has room for; returns how long to sleep before the next pass.

        Rows already due but not claimed wait for a free thread or for their host's or tenant's
        sends in flight, and a finished send wakes the loop; otherwise it sleeps until the next
        retry falls due, at most one poll interval.
        """
        poll = self.settings.reconcile_interval_seconds
        room = self.concurrency - self.load.in_flight
        if room <= 0:
            return poll
        claimed: list[Claimed] = []
        try:
            with self.sessions.begin() as session:
                claimed = claim_deliveries(session, self.load, room=room,
                                           lease_seconds=self.lease_seconds)
        except Exception:
            for item in claimed:
                self.load.give_back(item.tenant_id, item.url)
            raise
        for item in claimed:
            self.pool.submit(self._send, item)
        with self.sessions() as session:
            due_in = deliveries.next_due_seconds(session)
        return poll if due_in is None or due_in <= 0 else min(float(due_in), poll)

    def _send(self, claimed: Claimed) -> None:
        try:
            state = deliver(self.sessions, self.box, self.policy, claimed,
                            timeout_seconds=self.settings.webhook_timeout_seconds,
                            schedule=self.settings.webhook_retry_schedule_seconds, tls=self.tls)
            metrics.count_webhook_delivery(state)
        except Exception as exc:  # noqa: BLE001 - the lease expires and another pass retries
            metrics.count_webhook_delivery("error")
            log.warning("webhook delivery %s failed to record: %s", claimed.id, exc)
        finally:
            self.load.give_back(claimed.tenant_id, claimed.url)
            self.wake.set()

    def _loop(self) -> None:
        sleep = 0.0
        while not self.stopping.is_set():
            self.wake.wait(sleep)
            self.wake.clear()
            try:
                sleep = self.dispatch_once()
            except Exception as exc:  # noqa: BLE001 - Postgres may be down; try again later
                log.warning("webhook dispatch pass failed: %s", exc)
                sleep = self.settings.reconcile_interval_seconds

    def _listen(self) -> None:
        """LISTEN for commits that wrote outbox rows: delivery starts within milliseconds."""
        conninfo = make_url(self.settings.sqlalchemy_url).set(drivername="postgresql")
        while not self.stopping.is_set():
            try:
                with psycopg.connect(conninfo.render_as_string(hide_password=False),
                                     autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.wake.set()  # catch up with anything committed while not listening
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake.set()
            except Exception as exc:  # noqa: BLE001 - polling still delivers meanwhile
                log.warning("webhook listener lost its connection: %s", exc)
                self.stopping.wait(self.settings.reconcile_interval_seconds)
