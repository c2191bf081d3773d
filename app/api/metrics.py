"""Prometheus for the API: request hooks that count and time every request, `GET /metrics`, and
queue-depth gauges read from Postgres when scraped."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Request, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session, sessionmaker

from app.api.responses import Response
from app import metrics
from app.errors import Unauthorized
from app.store.queue_depth import queue_depth

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)
SUBMIT_ENDPOINTS = {"jobs.submit_job": None, "jobs.retry_job": "file"}  # endpoint: fixed kind
QUEUE_DEPTH_CACHE_SECONDS = 5.0
STARTED = "kiln.request_started"  # WSGI environ key


class RequestMetrics:
    """Counts and times every request; each series' children are looked up once and kept.

    The request object is taken from its proxy once per hook: every proxy lookup costs about as
    much as a counter increment.
    """

    def __init__(self):
        self.series: dict[tuple, tuple] = {}

    def start(self) -> None:
        request.environ[STARTED] = time.perf_counter()

    def finish(self, response: Response) -> Response:
        req = request._get_current_object()
        rule, method, status = req.url_rule, metrics.method_label(req.method), response.status_code
        key = (rule.rule if rule is not None else None, method, status)
        series = self.series.get(key)
        if series is None:
            route = metrics.route_label(rule)
            series = self.series[key] = (metrics.HTTP_REQUESTS.labels(route, method, str(status)),
                                         metrics.HTTP_REQUEST_SECONDS.labels(route, method))
        series[0].inc()
        started = req.environ.get(STARTED)
        if started is not None:  # None: a hook before ours answered
            series[1].observe(time.perf_counter() - started)
        if status == 202 and req.endpoint in SUBMIT_ENDPOINTS:
            metrics.JOBS_SUBMITTED.labels(submitted_kind(req)).inc()
        return response


def submitted_kind(req: Request) -> str:
    """`file` for a body naming an input file (or a retry), else `inline`; the body is already
    parsed and cached by the request's validation."""
    if SUBMIT_ENDPOINTS[req.endpoint]:
        return SUBMIT_ENDPOINTS[req.endpoint]
    body = req.get_json(silent=True)
    return "file" if isinstance(body, dict) and body.get("input_file") else "inline"


class QueueDepthCollector:
    """`kiln_jobs{status}` and `kiln_jobs_oldest_queued_seconds` from one query per cache period,
    however many scrapers ask; a failed query leaves them out of that scrape."""

    def __init__(self, sessions: sessionmaker[Session], cache_seconds: float):
        self.sessions, self.cache_seconds = sessions, cache_seconds
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._depth = None

    def read(self):
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._read_at = time.monotonic()
                try:
                    with self.sessions() as session:
                        self._depth = queue_depth(session)
                except Exception as exc:  # noqa: BLE001 - a scrape must not fail with Postgres
                    log.warning("queue depth for /metrics failed: %s", exc)
                    self._depth = None
            return self._depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = self.read()
        if depth is None:
            return
        jobs = GaugeMetricFamily("kiln_jobs", "Jobs in Postgres by status (waiting and running "
                                 "statuses only), read at scrape time.", labels=["status"])
        for status, count in depth.jobs_by_status.items():
            jobs.add_metric([status], count)
        yield jobs
        yield GaugeMetricFamily("kiln_jobs_oldest_queued_seconds",
                                "Age of the oldest queued job (0 when none is queued).",
                                value=depth.oldest_queued_seconds)


@bp.get("/metrics")
def serve_metrics() -> Response:
    """Every process's metrics (multiprocess mode) or this one's, then the queue depth."""
    token = current_app.extensions["kiln"].settings.metrics_token
    if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                         f"Bearer {token}".encode()):
        raise Unauthorized("GET /metrics needs the bearer token in KILN_METRICS_TOKEN")
    body = (generate_latest(metrics.scrape_registry() or REGISTRY)
            + generate_latest(current_app.extensions["kiln_metrics"]))
    return Response(body, mimetype=None, content_type=metrics.CONTENT_TYPE)


def init_app(app: Flask, sessions: sessionmaker[Session]) -> None:
    """Call before any other request hook, so that requests they answer are timed too."""
    hooks = RequestMetrics()
    app.before_request(hooks.start)
    app.after_request(hooks.finish)
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(sessions, QUEUE_DEPTH_CACHE_SECONDS))
    app.extensions["kiln_metrics"] = registry
    app.register_blueprint(bp)
