"""A local webhook receiver for the chaos test: verifies every delivery and remembers it.

Each tenant posts to `/hooks/<tenant>`; the receiver checks the signature with that tenant's job
secret (`app.domain.signing.verify`, the same code Kiln's own `kiln webhooks listen` uses). It
answers 503 to the first attempt of some events, so that retries (which must keep their
`webhook-id`) happen even when the chaos does not cause any.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from app.domain.signing import InvalidSignature, verify


@dataclass
class Delivery:
    """One POST as received."""

    tenant: str
    webhook_id: str | None
    event: str | None
    job_id: str | None
    status: str | None
    valid: bool
    answered: int
    at: float


@dataclass
class WebhookReceiver:
    secrets: dict[str, str] = field(default_factory=dict)
    fail_first_fraction: float = 0.25
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seen: set[str] = field(default_factory=set)

    def start(self) -> WebhookReceiver:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="chaos-receiver",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, tenant: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{tenant}"

    def fails_first(self, webhook_id: str) -> bool:
        """A stable pick of about `fail_first_fraction` of the events."""
        digest = hashlib.sha256(webhook_id.encode()).digest()
        return digest[0] < 256 * self.fail_first_fraction

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> int:
        tenant = path.rstrip("/").rsplit("/", 1)[-1]
        secret = self.secrets.get(tenant)
        try:
            if secret is None:
                raise InvalidSignature(f"unknown tenant {tenant!r}")
            webhook_id = verify(secret, headers, body, now=time.time())
            valid = True
        except InvalidSignature:
            webhook_id, valid = headers.get("webhook-id"), False
        try:
            payload = orjson.loads(body)
            event, data = payload.get("type"), payload.get("data") or {}
        except (orjson.JSONDecodeError, AttributeError):
            event, data = None, {}
        with self._lock:
            first = webhook_id not in self._seen
            self._seen.add(webhook_id)
            answered = 401 if not valid else (
                503 if first and webhook_id and self.fails_first(webhook_id) else 204)
            self.deliveries.append(Delivery(tenant, webhook_id, event, data.get("id"),
                                            data.get("status"), valid, answered, time.monotonic()))
        return answered

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.answered < 300]

    def ids_by_event(self) -> dict[tuple[str, str], set[str]]:
        """(job id, event) -> the distinct `webhook-id`s it arrived with (one is right)."""
        found: dict[tuple[str, str], set[str]] = defaultdict(set)
        with self._lock:
            for d in self.deliveries:
                if d.valid and d.job_id and d.event:
                    found[(d.job_id, d.event)].add(d.webhook_id)
        return found

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver.receive(self.path, headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                return

        return Handler
