"""Retention and deletion through the real entry points: results and uploads that expire (the
sweeper in the worker's reconciler loop), 410 afterwards, `DELETE /v1/jobs/{id}` leaving a
tombstone, and the bytes on disk shrinking; the sweeper's order, killed between its steps."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.orm import Job, JobResult, StorageGarbage
from app.services.retention import collect_garbage
from app.store import retention
from tests.conftest import build_stack
from app.storage import Storage
from tests.integration.test_files import digits_rows, to_csv
from tests.support import drop_database, start_api_and_worker, wait_for
from workers.demo_models import digits_records, digits_split

RECORDS = digits_records(digits_split()[1][:4])
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def kept(services, tmp_path_factory):
    """One stack: file chunks of 5 rows, the sweeper every 0.5 s (the reconciler's period)."""
    built, name = build_stack(services, tmp_path_factory.mktemp("retention"),
                              KILN_TUNING__CHUNK_ROWS="5", KILN_TUNING__MAX_BATCH_WAIT_MS="0")
    built.kiln("models", "add-demo", "digits")
    api, worker = start_api_and_worker(built.env, built.logdir)
    built.api_url, built.worker = api.url, worker
    yield built
    worker.stop()
    api.stop()
    drop_database(services.admin_url, name)


class Tenant:
    def __init__(self, stack):
        self.stack, self.name = stack, f"t-{uuid.uuid4().hex[:8]}"
        self.http = httpx.Client(base_url=stack.api_url, timeout=30, headers={
            "Authorization": f"Bearer {stack.create_key(self.name)}"})

    def finished(self, job_id: str) -> dict:
        return wait_for(lambda: (job := self.http.get(f"/v1/jobs/{job_id}").json())
                        ["finished_at"] and job, timeout=60, message=f"job {job_id} to finish")

    def file_job(self, rows: int = 12, **body) -> dict:
        data = to_csv(digits_rows(rows))
        file_id = self.http.post("/v1/files", files={"file": ("d.csv", data)}).json()["id"]
        return self.finished(self.http.post("/v1/jobs", json={
            "model": "digits", "input_file": file_id, **body}).json()["id"])

    def storage_bytes(self) -> int:
        return self.http.get("/v1/usage").json()["current"]["storage_bytes"]


def storage_root(stack) -> Path:
    return Path(stack.env["KILN_HOME"]) / "storage"


def disk_bytes(stack) -> int:
    """Bytes of every file under the stack's storage (uploads, parts, outputs, models)."""
    return sum(p.stat().st_size for p in storage_root(stack).rglob("*") if p.is_file())


def job_disk_bytes(stack, job_id: str) -> int:
    """Bytes of a job's parts and output files (all under `jobs/<id>/`)."""
    folder = storage_root(stack) / "jobs" / job_id
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_results_expire_on_time_with_410_and_the_disk_shrinks(kept):
    tenant = Tenant(kept)
    keep = tenant.file_job()  # the default: KILN_RESULT_RETENTION_SECONDS, 30 days
    assert keep["results_expired"] is False and keep["results_expire_at"] is not None
    before_disk, before_storage = disk_bytes(kept), tenant.storage_bytes()
    job = tenant.file_job(results_expire_after_seconds=2)
    inline = tenant.finished(tenant.http.post("/v1/jobs", json={
        "model": "digits", "inputs": RECORDS, "results_expire_after_seconds": 2}).json()["id"])
    assert tenant.http.get(f"/v1/jobs/{job['id']}/results").status_code == 200
    grown, stored = disk_bytes(kept), tenant.storage_bytes()
    outputs = [p for p in (storage_root(kept) / "jobs" / job["id"]).glob("*") if p.is_file()]
    assert outputs and job_disk_bytes(kept, job["id"]) > 0 and grown > before_disk
    output_bytes = sum(Storage.size(p.as_uri()) for p in outputs)  # a joined one: as read
    assert stored - before_storage == len(to_csv(digits_rows(12))) + output_bytes
    for done in (job, inline):
        wait_for(lambda done=done: tenant.http.get(f"/v1/jobs/{done['id']}").json()
                 ["results_expired"], timeout=30, message="the results to expire")
    wait_for(lambda: job_disk_bytes(kept, job["id"]) == 0, timeout=30, message="the sweeper")
    for path in (f"/v1/jobs/{job['id']}/results", f"/v1/jobs/{job['id']}/errors",
                 f"/v1/jobs/{inline['id']}/results"):
        gone = tenant.http.get(path)
        assert gone.status_code == 410 and gone.headers["content-type"] == PROBLEM, gone.text
        assert gone.json()["results_expired"] is True and gone.json()["type"].endswith(
            "/results_expired")
    after = tenant.http.get(f"/v1/jobs/{job['id']}").json()
    assert after["request_counts"] == job["request_counts"] and after["usage"] == job["usage"]
    assert after["output_file"] is None
    removed = grown - disk_bytes(kept)
    shed = stored - tenant.storage_bytes()
    assert shed == output_bytes > 0  # storage use lost exactly the output files' bytes on disk
    assert removed > shed  # and their parts left the disk too

    def inline_rows() -> int:
        with kept.sessions() as session:
            return session.scalar(select(func.count()).select_from(JobResult)
                                  .where(JobResult.job_id == uuid.UUID(inline["id"])))

    # past its expiry a job answers 410 at once; the sweeper deletes its rows on a later pass
    # (CI saw the 410 before that pass): wait for the sweep, not for a time
    wait_for(lambda: inline_rows() == 0, timeout=30, message="the sweeper to delete the rows")
    assert tenant.http.get(f"/v1/jobs/{keep['id']}/results").status_code == 200


def test_uploads_expire_and_are_deleted_unless_a_live_job_reads_them(kept):
    tenant = Tenant(kept)
    data = to_csv(digits_rows(3))
    short = tenant.http.post("/v1/files", files={"file": ("a.csv", data)},
                             data={"expires_after_seconds": "1"}).json()
    forever = tenant.http.post("/v1/files", files={"file": ("b.csv", data)}).json()
    assert short["expires_at"] is not None and forever["expires_at"] is None  # setting: 0
    busy = tenant.http.post("/v1/files", files={"file": ("e.csv", data)},
                            data={"expires_after_seconds": "2"}).json()
    live = tenant.http.post("/v1/jobs", json={"model": "digits", "input_file": busy["id"],
                                              "require_gpu": True})  # no GPU worker: stays live
    assert live.status_code == 202, live.text
    folder = storage_root(kept) / "files"
    on_disk = lambda file: any(file["id"] in str(p) for p in folder.rglob("*"))  # noqa: E731
    assert on_disk(short) and on_disk(busy)
    wait_for(lambda: not on_disk(short), timeout=30, message="the expired upload's bytes to go")
    time.sleep(3)  # busy expired too, but a live job reads it
    assert on_disk(busy)
    assert tenant.http.post(f"/v1/jobs/{live.json()['id']}/cancel").status_code == 200
    wait_for(lambda: not on_disk(busy), timeout=30, message="the freed upload to go")
    assert tenant.http.get(f"/v1/files/{short['id']}").status_code == 404
    assert tenant.http.get(f"/v1/files/{forever['id']}").status_code == 200
    assert tenant.storage_bytes() == forever["bytes"]
    kept.kiln("tenants", "retention", tenant.name, "--file-retention-seconds", "3600")
    by_tenant = tenant.http.post("/v1/files", files={"file": ("c.csv", data)}).json()
    ahead = datetime.fromisoformat(by_tenant["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=3500) < ahead <= timedelta(seconds=3600)
    explicit = tenant.http.post("/v1/files", files={"file": ("d.csv", data)},
                                data={"expires_after_seconds": "0"}).json()
    assert explicit["expires_at"] is None  # the upload's own 0 (kept) wins


def test_delete_a_job_only_once_it_ended_leaving_a_tombstone_for_usage(kept):
    tenant = Tenant(kept)
    waiting = tenant.http.post("/v1/jobs", json={"model": "digits", "inputs": RECORDS,
                                                 "require_gpu": True}).json()  # no GPU worker
    refused = tenant.http.delete(f"/v1/jobs/{waiting['id']}")
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    job = tenant.file_job()
    stored = tenant.storage_bytes()
    assert job_disk_bytes(kept, job["id"]) > 0
    answer = tenant.http.delete(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 200 and answer.json() == {"id": job["id"], "deleted": True}
    assert job_disk_bytes(kept, job["id"]) == 0  # removed once the delete committed
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/results"):
        assert tenant.http.get(path).status_code == 404
    assert tenant.http.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert job["id"] not in {j["id"] for j in tenant.http.get("/v1/jobs").json()["data"]}
    assert tenant.storage_bytes() < stored  # its output files
    usage = tenant.http.get("/v1/usage").json()["totals"]
    assert usage["jobs"] == 2 and usage["rows"] == 12  # the tombstone still counts
    with kept.sessions() as session:
        tomb = session.get(Job, uuid.UUID(job["id"]))
        assert tomb.deleted_at is not None and tomb.completed_count == 12
        assert tomb.output_file_id is None and tomb.inputs is None


def test_a_sweeper_killed_between_its_steps_leaves_no_job_claiming_lost_results(kept):
    """The job is marked expired in the transaction that forgets its rows and files; its bytes
    go only after that commits, and a garbage row only after its bytes. Stopping after each
    step (as SIGKILL would) leaves every job consistent, and the next pass finishes. (Last in
    the module: it stops the worker, whose sweeper would otherwise race these steps.)"""
    tenant = Tenant(kept)
    job = tenant.file_job(results_expire_after_seconds=3600)
    job_id, on_disk = uuid.UUID(job["id"]), job_disk_bytes(kept, job["id"])
    kept.worker.stop()
    with kept.sessions.begin() as session:  # due now, without waiting for the clock
        session.get(Job, job_id).results_expire_at = func.now() - timedelta(seconds=1)
    with kept.sessions.begin() as session:  # step 1 commits; "killed" before any removal
        assert job_id in retention.expire_results(session, 100)
    with kept.sessions() as session:
        record = session.get(Job, job_id)
        assert record.results_expired_at is not None and record.output_file_id is None
        garbage = session.scalar(select(func.count()).select_from(StorageGarbage))
    assert garbage >= 2 and job_disk_bytes(kept, job["id"]) == on_disk > 0  # bytes not yet gone
    assert tenant.http.get(f"/v1/jobs/{job['id']}/results").status_code == 410
    assert tenant.http.get(f"/v1/jobs/{job['id']}").json()["results_expired"] is True
    removed = []
    with kept.sessions() as session:  # step 2 removes bytes, "killed" before its commit
        retention.collect_garbage(session, removed.append, 100)
        session.rollback()
    assert len(removed) == garbage
    collect_garbage(kept.sessions, 100)  # the next pass finishes the removal
    assert job_disk_bytes(kept, job["id"]) == 0
    with kept.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StorageGarbage)) == 0
