"""The pre-flight estimate through HTTP and the CLI: exact rows, the queue ahead, nothing queued,
bad input refused as on submit, and how far the estimate is from what file jobs then take."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from app.orm import File, Job, Tenant
from tests.conftest import build_stack
from tests.integration.test_files import digits_rows, to_csv
from tests.support import drop_database, run_kiln, start_api, start_worker, wait_for
from workers.demo_models import digits_records, digits_split

RECORDS = digits_records(digits_split()[1][:6])
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def estimating(services, tmp_path_factory):
    """API only; the accuracy test starts a worker when it needs one."""
    built, name = build_stack(services, tmp_path_factory.mktemp("estimate"),
                              KILN_TUNING__CHUNK_ROWS="50", KILN_ESTIMATE_ROWS_PER_SECOND="500")
    built.kiln("models", "add-demo", "digits")
    api = start_api(built.env, built.logdir)
    built.api_url = api.url
    yield built
    api.stop()
    drop_database(services.admin_url, name)


class Client:
    def __init__(self, stack):
        self.name, self.stack = f"t-{uuid.uuid4().hex[:8]}", stack
        self.key = stack.create_key(self.name)
        self.http = httpx.Client(base_url=stack.api_url, timeout=60,
                                 headers={"Authorization": f"Bearer {self.key}"})

    def upload(self, data: bytes, name: str = "d.csv") -> str:
        return self.http.post("/v1/files", files={"file": (name, data)}).json()["id"]

    def jobs(self) -> int:
        with self.stack.sessions() as session:
            return session.scalar(select(func.count()).select_from(Job).join(Tenant)
                                  .where(Tenant.name == self.name))


def test_inline_estimate_counts_rows_and_the_queue_ahead_and_queues_nothing(estimating):
    client, other = Client(estimating), Client(estimating)
    for priority in (0, 5):  # no worker runs: these stay queued
        assert other.http.post("/v1/jobs", json={"model": "digits", "inputs": RECORDS[:4],
                                                 "priority": priority}).status_code == 202
    answer = client.http.post("/v1/jobs/estimate", json={"model": "digits", "inputs": RECORDS})
    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["rows"] == 6 and estimate["queue_ahead_rows"] >= 8
    assert estimate["basis"] == {"source": "default"} and estimate["rows_per_second"] == 500
    assert estimate["estimated_seconds"] == pytest.approx(
        (estimate["queue_ahead_rows"] + 6) / 500, abs=1e-3)
    start = datetime.fromisoformat(estimate["estimated_start_at"])
    finish = datetime.fromisoformat(estimate["estimated_finish_at"])
    assert (finish - start).total_seconds() == pytest.approx(6 / 500, abs=1e-3)
    urgent = client.http.post("/v1/jobs/estimate", json={"model": "digits", "inputs": RECORDS,
                                                         "priority": 10}).json()
    assert urgent["queue_ahead_rows"] == estimate["queue_ahead_rows"] - 8  # none at 10 or above
    high = client.http.post("/v1/jobs/estimate", json={"model": "digits", "inputs": RECORDS,
                                                       "priority": 5}).json()
    assert high["queue_ahead_rows"] == estimate["queue_ahead_rows"] - 4  # only the priority 5
    assert client.jobs() == 0
    bad = client.http.post("/v1/jobs/estimate", json={"model": "digits",
                                                      "inputs": [{"p0": "x"}]})
    submitted = client.http.post("/v1/jobs", json={"model": "digits", "inputs": [{"p0": "x"}]})
    assert bad.status_code == submitted.status_code == 422
    assert bad.json()["detail"] == submitted.json()["detail"]
    assert client.http.post("/v1/jobs/estimate", json={"model": "nope", "inputs": RECORDS}
                            ).status_code == 404


def test_file_estimate_counts_the_rows_exactly_and_refuses_a_bad_file(estimating, tmp_path):
    client = Client(estimating)
    for rows, fmt in ((123, "csv"), (7, "jsonl")):
        data = to_csv(digits_rows(rows)) if fmt == "csv" else b"".join(
            orjson.dumps(r) + b"\n" for r in digits_rows(rows))
        file_id = client.upload(data, f"d.{fmt}")
        estimate = client.http.post("/v1/jobs/estimate", json={
            "model": "digits", "input_file": file_id}).json()
        assert estimate["rows"] == rows and estimate["kind"] == "file", estimate
    bad = client.upload(b"a,b\n1,2\n3,4\n", "bad.csv")
    refused = client.http.post("/v1/jobs/estimate", json={"model": "digits", "input_file": bad})
    assert refused.status_code == 422 and refused.headers["content-type"] == PROBLEM
    assert "lacks column(s)" in refused.json()["detail"]
    keep = client.http.post("/v1/jobs/estimate", json={
        "model": "digits", "input_file": file_id, "keep_columns": ["nope"]})
    assert keep.status_code == 422 and "nope" in keep.json()["detail"]
    assert client.jobs() == 0
    # the CLI: --estimate prints it and creates nothing (the upload is deleted again)
    env = {**estimating.env, "KILN_API_URL": estimating.api_url, "KILN_API_KEY": client.key}
    path = tmp_path / "rows.csv"
    path.write_bytes(to_csv(digits_rows(31)))
    with estimating.sessions() as session:
        files_before = session.scalar(select(func.count()).select_from(File))
    shown = orjson.loads(run_kiln(env, "upload", str(path), "--model", "digits",
                                  "--estimate").stdout)
    assert shown["rows"] == 31 and shown["object"] == "estimate"
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS[:3]))
    assert orjson.loads(run_kiln(env, "submit", "--model", "digits", "--input", str(records),
                                 "--estimate").stdout)["rows"] == 3
    with estimating.sessions() as session:
        assert session.scalar(select(func.count()).select_from(File)) == files_before
    assert client.jobs() == 0


def test_estimate_accuracy_on_file_jobs(estimating):
    """Estimate, then run, a few file jobs one after another; the estimate's rate comes from the
    jobs before it. Prints the error reported in docs/benchmarks.md."""
    client = Client(estimating)
    worker = start_worker(estimating.env, estimating.logdir)
    errors = []
    try:
        for rows in (400, 600, 800, 1000):
            file_id = client.upload(to_csv(digits_rows(rows)))
            estimate = client.http.post("/v1/jobs/estimate", json={
                "model": "digits", "input_file": file_id}).json()
            assert estimate["rows"] == rows
            began = time.monotonic()
            job_id = client.http.post("/v1/jobs", json={"model": "digits",
                                                        "input_file": file_id}).json()["id"]
            wait_for(lambda job_id=job_id: client.http.get(f"/v1/jobs/{job_id}").json()
                     ["status"] == "succeeded", timeout=120, interval=0.05)
            took = time.monotonic() - began
            errors.append((rows, estimate["basis"]["source"], estimate["estimated_seconds"],
                           took))
    finally:
        worker.stop()
    print("\nestimate accuracy (rows, basis, estimated s, actual s, error):")
    for rows, source, guess, took in errors:
        print(f"  {rows:5d} {source:13s} {guess:7.2f} {took:7.2f} {(guess - took) / took:+.0%}")
    assert [source for _, source, _, _ in errors] == ["default"] + ["recent_usage"] * 3
