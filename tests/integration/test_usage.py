"""Usage through the real entry points: each job's `usage`, `GET /v1/usage` with a window and
groups, `kiln usage`; and the fence that keeps a lost attempt's batch from counting twice."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import text

from app.orm import Job
from app.services.auth import authenticate
from app.services.commands import SubmitJob
from app.services.jobs import submit_job
from app.store.jobs import Tally, claim_inline, record_batch
from app.store.lifecycle import Usage
from tests.conftest import build_stack
from tests.integration.test_files import digits_rows, to_csv
from tests.support import drop_database, run_kiln, start_api_and_worker, wait_for
from workers.demo_models import digits_records, digits_split

RECORDS = digits_records(digits_split()[1][:10])
TOTAL_KEYS = {"jobs", "rows", "failed_rows", "model_seconds", "bytes_in", "bytes_out"}


@pytest.fixture(scope="module")
def metered(services, tmp_path_factory):
    """One stack for the module: batches of 4 rows (a 10-row job is leased and scored in three
    batches, a 3-row one in the transaction that claims it), file chunks of 5 rows."""
    built, name = build_stack(services, tmp_path_factory.mktemp("usage"),
                              KILN_TUNING__BATCH_SIZE="4", KILN_TUNING__CHUNK_ROWS="5",
                              KILN_TUNING__MAX_BATCH_WAIT_MS="0")
    built.kiln("models", "add-demo", "digits")
    api, worker = start_api_and_worker(built.env, built.logdir)
    built.api_url = api.url
    yield built
    worker.stop()
    api.stop()
    drop_database(services.admin_url, name)


def tenant_http(stack) -> tuple[httpx.Client, str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    key = stack.create_key(name)
    return httpx.Client(base_url=stack.api_url, timeout=30,
                        headers={"Authorization": f"Bearer {key}"}), key


def finished(http: httpx.Client, job_id: str) -> dict:
    return wait_for(lambda: (job := http.get(f"/v1/jobs/{job_id}").json())["finished_at"]
                    and job, timeout=60, message=f"job {job_id} to finish")


def json_bytes(values) -> int:
    return sum(len(orjson.dumps(value)) for value in values)


def test_each_job_shows_its_usage_and_the_tenant_totals_add_up(metered):
    http, _ = tenant_http(metered)
    submitted = http.post("/v1/jobs", json={"model": "digits", "inputs": RECORDS[:3]}).json()
    assert submitted["usage"] == {"rows": 0, "model_seconds": 0.0, "bytes_in": 0, "bytes_out": 0}
    leased = http.post("/v1/jobs", json={"model": "digits", "inputs": RECORDS}).json()
    upload = to_csv(digits_rows(12))
    file_id = http.post("/v1/files", files={"file": ("d.csv", upload)}).json()["id"]
    file_job = http.post("/v1/jobs", json={"model": "digits", "input_file": file_id}).json()
    jobs = [finished(http, job["id"]) for job in (submitted, leased, file_job)]
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    for job, records in zip(jobs[:2], (RECORDS[:3], RECORDS)):
        usage = job["usage"]
        assert usage["rows"] == len(records) and usage["model_seconds"] > 0, job
        assert usage["bytes_in"] == json_bytes(records)  # each record as JSON
        lines = [orjson.loads(line) for line in
                 http.get(f"/v1/jobs/{job['id']}/results").content.splitlines()]
        assert usage["bytes_out"] == pytest.approx(json_bytes(r["output"] for r in lines), rel=0.05)
    file_usage = jobs[2]["usage"]
    assert file_usage["rows"] == 12 and file_usage["model_seconds"] > 0
    assert file_usage["bytes_in"] == len(upload)  # the three chunks' shares add up to the file
    assert file_usage["bytes_out"] > 0

    report = http.get("/v1/usage").json()
    assert report["object"] == "usage" and set(report["totals"]) == TOTAL_KEYS
    totals = report["totals"]
    assert totals["jobs"] == 3 and totals["rows"] == 25 and totals["failed_rows"] == 0
    for key in ("bytes_in", "bytes_out"):
        assert totals[key] == sum(job["usage"][key] for job in jobs)
    assert totals["model_seconds"] == pytest.approx(
        sum(job["usage"]["model_seconds"] for job in jobs), abs=1e-5)
    assert report["current"] == {"queued_rows": 0, "active_jobs": 0,
                                 "storage_bytes": report["current"]["storage_bytes"]}
    assert report["current"]["storage_bytes"] >= len(upload)
    assert report["limits"]["max_queued_rows"] == 0


def test_usage_window_groups_and_errors(metered):
    http, _ = tenant_http(metered)
    for rows in (1, 2):
        finished(http, http.post("/v1/jobs", json={"model": "digits",
                                                   "inputs": RECORDS[:rows]}).json()["id"])
    now = datetime.now(UTC)
    by_model = http.get("/v1/usage", params={"group_by": "model"}).json()
    assert [(g["model"], g["jobs"], g["rows"]) for g in by_model["groups"]] == [("digits", 2, 3)]
    by_day = http.get("/v1/usage", params={"group_by": "day"}).json()
    assert [(g["day"], g["rows"]) for g in by_day["groups"]] == [(now.date().isoformat(), 3)]
    before = http.get("/v1/usage", params={"end": (now - timedelta(hours=1)).isoformat()}).json()
    assert before["totals"]["jobs"] == 0 and before["totals"]["rows"] == 0
    window = {"start": (now - timedelta(hours=1)).isoformat(),
              "end": (now + timedelta(minutes=1)).isoformat()}
    assert http.get("/v1/usage", params=window).json()["totals"]["rows"] == 3
    naive = http.get("/v1/usage", params={"start": "2000-01-01T00:00:00"}).json()
    assert naive["start"].startswith("2000-01-01T00:00:00") and naive["totals"]["rows"] == 3
    reversed_window = {"start": window["end"], "end": window["start"]}  # empty, not an error
    assert http.get("/v1/usage", params=reversed_window).json()["totals"]["rows"] == 0
    for bad in ({"group_by": "tenant"}, {"start": "yesterday"}, {"start": "0.5"}):
        answer = http.get("/v1/usage", params=bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    other, _ = tenant_http(metered)  # another tenant sees only its own
    assert other.get("/v1/usage").json()["totals"]["jobs"] == 0
    assert httpx.get(metered.api_url + "/v1/usage").status_code == 401


def test_kiln_usage_prints_a_table(metered):
    http, key = tenant_http(metered)
    finished(http, http.post("/v1/jobs", json={"model": "digits",
                                               "inputs": RECORDS[:4]}).json()["id"])
    env = {**metered.env, "KILN_API_URL": metered.api_url, "KILN_API_KEY": key}
    shown = run_kiln(env, "usage", "--group-by", "model").stdout
    lines = shown.splitlines()
    assert any("model_seconds" in line for line in lines), shown
    cells = [[cell for cell in line.split() if cell not in "│┃|"] for line in lines]
    digits = next(row for row in cells if row and row[0] == "digits")
    total = next(row for row in cells if row and row[0] == "total")
    assert digits[1:3] == ["1", "4"] and total[1:3] == ["1", "4"], shown  # jobs, rows
    assert "queued_rows 0 of unlimited" in shown
    as_json = orjson.loads(run_kiln(env, "usage", "--json").stdout)
    assert as_json["totals"]["rows"] == 4


def test_a_lost_attempts_batch_counts_no_usage_and_a_new_attempt_starts_from_zero(metered):
    """The usage of a batch is written by the statement that counts its rows, fenced by
    attempt: a worker that lost its lease (killed, or too slow) adds nothing, and the attempt
    that re-scores the job counts its rows and their usage once."""
    _, key = tenant_http(metered)
    with metered.sessions.begin() as session:  # a job no worker takes: claimed here
        caller = authenticate(session, f"Bearer {key}")
        job_id = submit_job(session, caller, SubmitJob(model="digits", inputs=RECORDS[:6]))[0].id
        session.execute(text("UPDATE jobs SET options = options || '{\"queue\": \"nobody\"}' "
                             "WHERE id = :id"), {"id": job_id})
    claim = dict(max_jobs=1, row_budget=100, lease_seconds=60, max_attempts=5)
    with metered.sessions.begin() as session:
        [first] = claim_inline(session, job_id, **claim)
    with metered.sessions.begin() as session:
        owned, _ = record_batch(session, {job_id: Tally(first.attempt, 3, 0, Usage(1.0, 10, 20))},
                                {}, 60)
        assert owned == {job_id}
    with metered.sessions.begin() as session:  # the lease runs out; another worker claims it
        session.execute(text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' "
                             "WHERE id = :id"), {"id": job_id})
    with metered.sessions.begin() as session:
        [second] = claim_inline(session, job_id, **claim)
    assert second.attempt == first.attempt + 1
    assert usage_of(metered, job_id) == (0, 0.0, 0, 0)  # the new attempt re-scores every row
    with metered.sessions.begin() as session:  # the first worker's next batch: fenced out
        owned, ended = record_batch(session, {},
                                    {job_id: Tally(first.attempt, 6, 0, Usage(2.0, 30, 40))}, 60)
        assert owned == set() and ended == []
    assert usage_of(metered, job_id) == (0, 0.0, 0, 0)
    with metered.sessions.begin() as session:
        record_batch(session, {job_id: Tally(second.attempt, 4, 0, Usage(0.5, 5, 6))}, {}, 60)
        owned, ended = record_batch(session, {}, {job_id: Tally(second.attempt, 5, 1,
                                                                Usage(0.75, 7, 9))}, 60)
        assert [job.status for job in ended] == ["succeeded"]
    assert usage_of(metered, job_id) == (6, 0.75, 7, 9)


def usage_of(stack, job_id) -> tuple[int, float, int, int]:
    with stack.sessions() as session:
        job = session.get(Job, job_id)
        return (job.completed_count + job.failed_count, job.model_seconds, job.bytes_in,
                job.bytes_out)
