"""Metric labels, the /metrics switch and token, the model wrapper and the queue-depth cache."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app import metrics
from app.api import create_app
from app.api.metrics import QueueDepthCollector
from app.settings import Settings
from workers.runtime.metered import MeteredModel

UNREACHABLE = {"database_url": "postgresql://kiln@127.0.0.1:1/none",
               "redis_url": "redis://127.0.0.1:1"}


def requests_counted(**labels: str) -> float:
    return REGISTRY.get_sample_value("kiln_http_requests_total", labels) or 0.0


def series_of(name: str) -> list[dict[str, str]]:
    return [s.labels for family in REGISTRY.collect() for s in family.samples if s.name == name]


@pytest.fixture
def client():
    return create_app(Settings(**UNREACHABLE)).test_client()


def test_unknown_urls_and_methods_share_one_series(client):
    before = requests_counted(route="unmatched", method="GET", status="404")
    for path in ("/nope", "/random/123", "/v2/jobs/abc", "/%F0%9F%94%A5"):
        assert client.get(path).status_code == 404
    assert requests_counted(route="unmatched", method="GET", status="404") == before + 4
    routes = {labels["route"] for labels in series_of("kiln_http_requests_total")}
    assert not routes & {"/nope", "/random/123", "/v2/jobs/abc"}

    before = requests_counted(route="unmatched", method="other", status="405")
    assert client.open("/healthz", method="BREW").status_code == 405
    assert requests_counted(route="unmatched", method="other", status="405") == before + 1


def test_matched_requests_are_labelled_by_their_route_template(client):
    route = "/v1/jobs/<uuid:job_id>"
    before = requests_counted(route=route, method="GET", status="401")
    assert client.get("/v1/jobs/0b7c9d1e-0000-0000-0000-000000000000").status_code == 401
    assert client.get("/v1/jobs/0B7C9D1E-0000-0000-0000-000000000001").status_code == 401
    assert client.get("/v1/jobs/another-id").status_code == 401  # no route (ids are UUIDs)
    assert requests_counted(route=route, method="GET", status="401") == before + 2
    assert metrics.route_label(None) == metrics.UNMATCHED_ROUTE
    assert metrics.method_label("PROPFIND") == "other" and metrics.method_label("POST") == "POST"


def test_metrics_endpoint_is_text_format_and_can_be_protected_or_turned_off():
    open_app = create_app(Settings(**UNREACHABLE)).test_client()
    response = open_app.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE kiln_http_requests_total counter" in response.data

    protected = create_app(Settings(**UNREACHABLE, metrics_token="s3cret")).test_client()
    assert protected.get("/metrics").status_code == 401
    assert protected.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert protected.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200

    off = create_app(Settings(**UNREACHABLE, metrics_enabled=False)).test_client()
    before = requests_counted(route="unmatched", method="GET", status="404")
    assert off.get("/metrics").status_code == 404
    assert requests_counted(route="unmatched", method="GET", status="404") == before  # no hooks


class Classifier:
    """A runtime with both entry points; row 'bad' makes a call raise."""

    providers = ("CPUExecutionProvider",)

    def run(self, records):
        if "bad" in records:
            raise ValueError("bad row")
        return [{"label": 0} for _ in records]

    def run_features(self, features):
        return [{"label": 0} for _ in range(len(features))]


class Embedder:
    providers = ("CUDAExecutionProvider",)

    def run(self, records):
        return [{"embedding": [0.0]} for _ in records]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metered_model_counts_rows_calls_and_failures():
    model = MeteredModel(Classifier(), "unit-classifier")
    model.run(["a", "b", "c"])
    model.run_features(np.zeros((5, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        model.run(["a", "bad"])
    assert sample("kiln_model_calls_total", model="unit-classifier", outcome="ok") == 2
    assert sample("kiln_model_calls_total", model="unit-classifier", outcome="error") == 1
    assert sample("kiln_rows_scored_total", model="unit-classifier") == 8
    assert sample("kiln_model_batch_rows_sum", model="unit-classifier") == 10  # failed call too
    assert sample("kiln_model_batch_rows_count", model="unit-classifier") == 3
    assert sample("kiln_model_call_seconds_count", model="unit-classifier", provider="cpu") == 3
    assert model.providers == ("CPUExecutionProvider",)  # other attributes are the runtime's

    embedder = MeteredModel(Embedder(), "unit-embedder")
    assert not hasattr(embedder, "run_features")  # callers pick their path with hasattr
    embedder.run([{"text": "x"}])
    assert sample("kiln_model_call_seconds_count", model="unit-embedder", provider="cuda") == 1


class CountingSessions:
    """A session factory whose sessions answer the queue-depth query, or fail."""

    def __init__(self, fail: bool = False):
        self.queries, self.fail = 0, fail

    @contextmanager
    def __call__(self):
        yield self

    def execute(self, _statement):
        self.queries += 1
        if self.fail:
            raise OSError("database down")
        return [SimpleNamespace(status="queued", jobs=7, oldest_seconds=12.5),
                SimpleNamespace(status="running", jobs=2, oldest_seconds=None)]


def test_queue_depth_is_one_query_per_cache_period():
    sessions = CountingSessions()
    collector = QueueDepthCollector(sessions, cache_seconds=60)
    for _ in range(3):
        families = {f.name: f for f in collector.collect()}
    assert sessions.queries == 1
    jobs = {s.labels["status"]: s.value for s in families["kiln_jobs"].samples}
    assert jobs == {"queued": 7, "running": 2, "cancelling": 0, "finalizing": 0}
    assert families["kiln_jobs_oldest_queued_seconds"].samples[0].value == 12.5

    down = CountingSessions(fail=True)
    failing = QueueDepthCollector(down, cache_seconds=60)
    assert list(failing.collect()) == [] and list(failing.collect()) == []
    assert down.queries == 1  # a database that is down is not asked again on every scrape


def test_children_forked_while_another_thread_records_can_record():
    metrics.hold_across_forks()
    metrics.hold_across_forks()  # idempotent: a second registration would deadlock the fork
    stop = threading.Event()

    def record():
        while not stop.is_set():
            metrics.count_chunk("skipped")

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    try:
        for _ in range(30):
            pid = os.fork()
            if pid == 0:  # the child: record once and leave at once
                metrics.count_chunk("skipped")
                os._exit(0)
            deadline = time.monotonic() + 10
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                assert time.monotonic() < deadline, "a forked child hung on its first metric"
                time.sleep(0.005)
    finally:
        stop.set()
        recorder.join()
