"""A client generated from Kiln's own `/openapi.json` by openapi-python-client (generated here,
into a temporary folder, never committed) runs the two user journeys against a real API:
1. submit an inline job, poll it, read its results;
2. upload a CSV, score it as a file job, read its results and its failed rows.
Anything the spec says wrongly (a status, a field, a content type) breaks the typed parsing."""

from __future__ import annotations

import csv
import importlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from workers.demo_models import DIGITS_COLUMNS

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


@pytest.fixture(scope="module")
def generated(contract, tmp_path_factory):
    """The `kiln_client` package, generated from the running API's document."""
    where = tmp_path_factory.mktemp("generated")
    spec = where / "openapi.json"
    spec.write_bytes(httpx.get(f"{contract.url}/openapi.json", timeout=30).content)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "openapi-python-client"), "generate", "--path",
         str(spec), "--meta", "none", "--output-path", str(where / "kiln_client")],
        capture_output=True, text=True, env=env, timeout=300, cwd=where)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(where))
    try:
        package = importlib.import_module("kiln_client")
        yield package.AuthenticatedClient(base_url=contract.url, token=contract.key,
                                          raise_on_unexpected_status=True)
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == "kiln_client" or m.startswith("kiln_client.")]:
            del sys.modules[name]


class Operations:
    """`ops.submit_job` is the generated module `kiln_client.api.<tag>.submit_job`."""

    def __init__(self, tag: str):
        self.tag = tag

    def __getattr__(self, name: str):
        return importlib.import_module(f"kiln_client.api.{self.tag}.{name}")


def record(i: int) -> dict[str, float]:
    return {c: float((i * 7 + n) % 17) for n, c in enumerate(DIGITS_COLUMNS)}


def wait_until_done(get_job, client, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job.sync(job_id, client=client)
        if job.status.value in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end in {timeout}s")


@pytest.mark.integration
def test_journey_1_inline_job(generated):
    client = generated
    jobs = Operations("jobs")
    models = importlib.import_module("kiln_client.models")
    answer = jobs.submit_job.sync_detailed(
        client=client, body={"model": "digits", "inputs": [record(i) for i in range(3)]})
    assert answer.status_code == 202 and isinstance(answer.parsed, models.JobOut)
    assert answer.headers["location"] == f"/v1/jobs/{answer.parsed.id}"
    done = wait_until_done(jobs.get_job, client, answer.parsed.id)
    assert done.status.value == "succeeded"
    assert (done.request_counts.total, done.request_counts.completed) == (3, 3)
    results = jobs.job_results.sync_detailed(answer.parsed.id, client=client)
    assert results.status_code == 200
    assert results.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in results.content.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert all(0 <= line["output"]["label"] <= 9 for line in lines)
    listed = jobs.list_jobs.sync(client=client, limit=1)
    assert isinstance(listed, models.JobList) and listed.data[0].id == answer.parsed.id
    assert listed.first_id == listed.last_id == answer.parsed.id
    missing = jobs.get_job.sync_detailed("00000000-0000-4000-8000-000000000000", client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.Problem)
    assert missing.parsed.type_ == "/problems/not_found"
    unknown = jobs.submit_job.sync_detailed(client=client, body={"model": "nope", "inputs": [{}]})
    assert unknown.status_code == 404 and isinstance(unknown.parsed, models.Problem)


@pytest.mark.integration
def test_journey_2_file_job_with_errors(generated):
    client = generated
    files = Operations("files")
    jobs = Operations("jobs")
    models = importlib.import_module("kiln_client.models")
    types = importlib.import_module("kiln_client.types")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["custom_id", *DIGITS_COLUMNS])
    writer.writeheader()
    for i in range(20):
        writer.writerow({"custom_id": f"row-{i}", **record(i)} | ({"p5": "oops"} if i in (4, 11)
                                                                   else {}))
    upload = files.upload_file.sync_detailed(client=client, body=models.UploadForm(
        file=types.File(payload=io.BytesIO(out.getvalue().encode()), file_name="digits.csv",
                        mime_type="text/csv")))
    assert upload.status_code == 201 and isinstance(upload.parsed, models.FileOut)
    assert (upload.parsed.format_, upload.parsed.purpose) == ("csv", "input")
    page = files.list_files.sync(client=client, limit=5)
    assert page.data[0].id == upload.parsed.id and page.has_more is False

    job = jobs.submit_job.sync(client=client, body={
        "model": "digits", "input_file": upload.parsed.id, "max_failed_fraction": 0.5})
    assert isinstance(job, models.JobOut) and job.kind == "file"
    done = wait_until_done(jobs.get_job, client, job.id)
    assert done.status.value == "succeeded"
    assert (done.request_counts.completed, done.request_counts.failed) == (18, 2)
    results = jobs.job_results.sync_detailed(job.id, client=client)
    rows = list(csv.DictReader(io.StringIO(results.content.decode())))
    assert len(rows) == 18 and {r["custom_id"] for r in rows}.isdisjoint({"row-4", "row-11"})
    errors = jobs.job_errors.sync_detailed(job.id, client=client)
    assert errors.status_code == 200
    failed = list(csv.DictReader(io.StringIO(errors.content.decode())))
    assert [r["custom_id"] for r in failed] == ["row-4", "row-11"]
    assert all(r["error_code"] for r in failed)
    content = files.file_content.sync_detailed(upload.parsed.id, client=client)
    assert content.content == out.getvalue().encode()
