"""Prometheus metrics end to end: a real API (two processes) and a real worker (two
prefork children), each scraped over HTTP, checked against Postgres and the worker's log."""

from __future__ import annotations

import csv
import io
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app.orm import Job
from app.services.models import register_model
from app.store.queue_depth import COUNTED_STATUSES
from app.storage import Storage
from tests import models as test_models
from tests.integration.test_webhooks import Receiver
from tests.support import free_port, start_api, start_worker, wait_for

INLINE_SIZES = list(range(1, 11))  # ten inline jobs: 55 rows
FILE_ROWS, CHUNK_ROWS, BATCH_SIZE = 300, 100, 64


def scrape(url: str, token: str | None = None) -> dict[tuple, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def records(n: int, seed: int) -> list[dict[str, float]]:
    return [{c: float((seed + i + j) % 17) for j, c in enumerate(test_models.COLUMNS)}
            for i in range(n)]


def jobs_by_status(stack) -> dict[str, int]:
    with stack.sessions() as session:
        return dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def test_api_and_worker_metrics_add_up_across_processes(make_stack):
    worker_port = free_port()
    stack = make_stack(KILN_WORKER_METRICS_PORT=str(worker_port), KILN_TUNING__BATCH_SIZE=str(BATCH_SIZE),
                       KILN_TUNING__CHUNK_ROWS=str(CHUNK_ROWS), KILN_WEBHOOK_ALLOW_PRIVATE="true",
                       KILN_METRICS_TOKEN="scrape-me", KILN_API_WORKERS="2")
    model = f"metered-{uuid.uuid4().hex[:6]}"
    with stack.sessions.begin() as session:
        register_model(session, Storage(stack.settings.resolved_storage_url), name=model,
                       artifact=test_models.slow_classifier(hidden=16, layers=1),
                       signature=test_models.SIGNATURE, processing=test_models.PROCESSING,
                       metrics={})
    key = stack.create_key()
    auth = {"Authorization": f"Bearer {key}"}
    api = start_api(stack.env, stack.logdir)
    worker = None
    try:
        assert httpx.get(api.url + "/metrics").status_code == 401  # KILN_METRICS_TOKEN is set
        with Receiver() as receiver:
            # Jobs go in before any worker runs, so that the queue-depth gauge has work to show.
            # Each POST on its own connection, from several threads: both API processes
            # answer some, and only a scrape that adds up their files shows every request.
            def submit(i: int) -> str:
                body = {"model": model, "inputs": records(INLINE_SIZES[i], i)}
                if i == 0:
                    body["webhook_url"] = receiver.url + "/hook"
                response = httpx.post(api.url + "/v1/jobs", json=body, headers=auth, timeout=30)
                assert response.status_code == 202, response.text
                return response.json()["id"]

            with ThreadPoolExecutor(5) as pool:
                list(pool.map(submit, range(len(INLINE_SIZES))))
            upload = httpx.post(api.url + "/v1/files", headers=auth, timeout=30,
                                files={"file": ("rows.csv", to_csv(records(FILE_ROWS, 99)))})
            assert upload.status_code == 201, upload.text
            filed = httpx.post(api.url + "/v1/jobs", headers=auth, timeout=30,
                               json={"model": model, "input_file": upload.json()["id"]})
            assert filed.status_code == 202, filed.text
            for path in ("/no-such-page", "/and/another/one"):
                assert httpx.get(api.url + path).status_code == 404

            submitted = len(INLINE_SIZES) + 1
            for _ in range(3):  # whichever process answers the scrape, the totals are the same
                api_samples = scrape(api.url + "/metrics", "scrape-me")
                assert value(api_samples, "kiln_http_requests_total", route="/v1/jobs",
                             method="POST", status="202") == submitted
                assert value(api_samples, "kiln_jobs_submitted_total", kind="inline") == \
                    len(INLINE_SIZES)
                assert value(api_samples, "kiln_jobs_submitted_total", kind="file") == 1
                assert value(api_samples, "kiln_http_requests_total", route="unmatched",
                             method="GET", status="404") == 2
            assert not [labels for (name, labels) in api_samples
                        if name == "kiln_http_requests_total"
                        and ("route", "/no-such-page") in labels]
            queued = jobs_by_status(stack)
            assert queued.get("queued") == len(INLINE_SIZES)
            for status in COUNTED_STATUSES:
                assert value(api_samples, "kiln_jobs", status=status) == queued.get(status, 0)
            assert value(api_samples, "kiln_jobs_oldest_queued_seconds") > 0

            worker = start_worker(stack.env, stack.logdir)
            wait_for(lambda: set(jobs_by_status(stack)) == {"succeeded"}, timeout=90,
                     message="every job succeeded")
            receiver.wait(1)
            worker_url = f"http://127.0.0.1:{worker_port}/metrics"

            def delivery_counted():
                samples = scrape(worker_url)
                delivered = value(samples, "kiln_webhook_deliveries_total", outcome="delivered")
                return samples if delivered == 1 else None

            worker_samples = wait_for(delivery_counted, timeout=30,
                                      message="the webhook delivery counted")

        inline_rows, file_rows = sum(INLINE_SIZES), FILE_ROWS
        logged = [tuple(map(int, m)) for m in re.findall(
            r"scored (\d+) rows of \d+ job\(s\) in (\d+) batch", worker.log.read_text())]
        assert sum(rows for rows, _ in logged) == inline_rows
        # Tasks run only in the prefork children, never in the process that serves the scrape:
        # these counts are the children's files added up.
        assert value(worker_samples, "kiln_model_batch_rows_sum", model=model) == \
            inline_rows + file_rows
        assert value(worker_samples, "kiln_rows_scored_total", model=model) == \
            inline_rows + file_rows
        calls = value(worker_samples, "kiln_model_calls_total", model=model, outcome="ok")
        assert value(worker_samples, "kiln_model_batch_rows_count", model=model) == calls
        assert value(worker_samples, "kiln_model_call_seconds_count", model=model,
                     provider="cpu") == calls
        chunks = FILE_ROWS // CHUNK_ROWS
        calls_per_chunk = -(-CHUNK_ROWS // BATCH_SIZE)
        assert calls == sum(batches for _, batches in logged) + chunks * calls_per_chunk
        assert value(worker_samples, "kiln_model_batch_rows_bucket", model=model,
                     le=f"{float(BATCH_SIZE)}") == calls  # no call above the batch size
        assert value(worker_samples, "kiln_jobs_finished_total", status="succeeded") == submitted
        assert value(worker_samples, "kiln_chunks_processed_total", outcome="done") == chunks

        def queue_empty():
            samples = scrape(api.url + "/metrics", "scrape-me")
            return all(value(samples, "kiln_jobs", status=s) == 0 for s in COUNTED_STATUSES)

        wait_for(queue_empty, timeout=30, message="the queue-depth gauge back at zero")
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


def to_csv(rows: list[dict[str, float]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()
