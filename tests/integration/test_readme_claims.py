"""README claims through a real entry point (HTTP, the CLI, a worker), on one stack with the
settings the claims name: no API cache, no metrics route, no scoring inside the claim, no batch
window, and webhook receivers (http://localhost) allowed only by KILN_WEBHOOK_ALLOWED_HOSTS."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import httpx
import orjson
import pytest

from app.client import KilnClient
from app.domain.signing import InvalidSignature, verify
from app.services.auth import KEY_PREFIX
from tests.conftest import build_stack
from tests.integration.test_files import digits_rows, to_csv, upload
from tests.integration.test_webhooks import RECORD, Receiver
from tests.integration.test_workers import register_slow_model, slow_records
from tests.support import (KilnProcess, await_api, create_database, drop_database, free_port, run_kiln, spawn_api,
                           start_api, start_api_and_worker, start_worker, wait_for)

PROBLEM = "application/problem+json"


@dataclass
class Claims:
    stack: object
    api: KilnProcess
    worker: KilnProcess
    idle: KilnProcess  # the same database, publishing to a queue no worker consumes

    def tenant(self, api: KilnProcess | None = None, key: str | None = None) -> KilnClient:
        return KilnClient((api or self.api).url, key or self.stack.create_key())

    def cli(self, key: str, *args: str, check: bool = True):
        env = {**self.stack.env, "KILN_API_URL": self.api.url, "KILN_API_KEY": key}
        return run_kiln(env, *args, check=check)


@pytest.fixture(scope="module")
def claims(services, tmp_path_factory):
    stack, name = build_stack(services, tmp_path_factory.mktemp("claims"),
                              KILN_WEBHOOK_ALLOWED_HOSTS="localhost",
                              KILN_WEBHOOK_RETRY_SCHEDULE_SECONDS="0,0.5,30",
                              KILN_TUNING__CACHE_SECONDS="0", KILN_METRICS_ENABLED="false",
                              KILN_TUNING__SINGLE_TRANSACTION_ROWS="0",
                              KILN_TUNING__MAX_BATCH_WAIT_MS="0")
    stack.add_digits()
    idle = spawn_api({**stack.env, "KILN_QUEUE": f"idle-{uuid.uuid4().hex[:6]}"}, stack.logdir)
    api, worker = start_api_and_worker(stack.env, stack.logdir)
    await_api(idle)
    yield Claims(stack, api, worker, idle)
    for process in (worker, idle, api):
        process.stop()
    drop_database(services.admin_url, name)


def local(receiver: Receiver) -> str:
    """The receiver's URL by the host name KILN_WEBHOOK_ALLOWED_HOSTS names."""
    return receiver.url.replace("127.0.0.1", "localhost")


def file_job(kiln: KilnClient, rows: list[dict], **options) -> dict:
    meta = upload(kiln, "d.csv", to_csv(rows))
    response = kiln.http.post("/v1/jobs", json={"model": "digits", "input_file": meta["id"],
                                               **options})
    assert response.status_code == 202, response.text
    return response.json() | {"input_file_id": meta["id"]}


def assert_conflict(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"], response.json()


def test_settings_the_readme_names_change_what_the_api_and_worker_do(claims):
    """KILN_METRICS_ENABLED=false removes /metrics; KILN_TUNING__CACHE_SECONDS=0 makes a revoked
    key fail at once; with SINGLE_TRANSACTION_ROWS=0 and MAX_BATCH_WAIT_MS=0 jobs still score."""
    assert httpx.get(claims.api.url + "/metrics").status_code == 404
    key = claims.stack.create_key()
    kiln = claims.tenant(key=key)
    done = kiln.wait(kiln.submit("digits", [RECORD] * 3)["id"], timeout_seconds=60)
    assert done["status"] == "succeeded" and done["request_counts"]["completed"] == 3
    assert kiln.http.get("/v1/jobs").status_code == 200  # the key is now in any cache there is
    prefix = key[:len(KEY_PREFIX) + 8]  # kiln_ and the key's 8 public hex digits
    assert claims.cli(key, "keys", "revoke", prefix).stdout.strip() == f"revoked {prefix}"
    assert kiln.http.get("/v1/jobs").status_code == 401


def test_readyz_is_503_while_postgres_or_redis_is_down(claims):
    dead = f"127.0.0.1:{free_port()}"
    apis = [spawn_api({**claims.stack.env, **env}, claims.stack.logdir) for env in (
        {"KILN_REDIS_URL": f"redis://{dead}/0"},
        {"KILN_DATABASE_URL": f"postgresql://postgres@{dead}/kiln"})]
    try:
        for api in apis:
            await_api(api)  # alive (/healthz), not ready
            ready = httpx.get(api.url + "/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
    finally:
        for api in apis:
            api.stop()
    assert httpx.get(claims.api.url + "/readyz").status_code == 200


def test_retry_is_409_unless_a_finished_file_job_has_failed_rows_and_its_input(claims):
    kiln = claims.tenant()
    inline = kiln.submit("digits", [RECORD])
    assert kiln.wait(inline["id"], timeout_seconds=60)["status"] == "succeeded"
    assert_conflict(kiln.http.post(f"/v1/jobs/{inline['id']}/retry"), "finished file job")
    clean = file_job(kiln, digits_rows(5))
    assert kiln.wait(clean["id"], timeout_seconds=60)["request_counts"]["failed"] == 0
    assert_conflict(kiln.http.post(f"/v1/jobs/{clean['id']}/retry"), "no failed rows")
    rows = digits_rows(5)
    rows[2]["p4"] = "bad"
    flawed = file_job(kiln, rows)
    assert kiln.wait(flawed["id"], timeout_seconds=60)["request_counts"]["failed"] == 1
    assert kiln.http.delete(f"/v1/files/{flawed['input_file_id']}").status_code == 204
    assert_conflict(kiln.http.post(f"/v1/jobs/{flawed['id']}/retry"), "input file was deleted")
    # a job that has not finished: still queued on a queue no worker reads
    waiting = file_job(claims.tenant(claims.idle, kiln.http.headers["Authorization"][7:]), rows)
    assert_conflict(kiln.http.post(f"/v1/jobs/{waiting['id']}/retry"), "finished file job")
    assert_conflict(kiln.http.delete(f"/v1/files/{waiting['input_file_id']}"), "unfinished job")
    assert kiln.cancel(waiting["id"])["status"] == "cancelled"
    assert kiln.http.delete(f"/v1/files/{waiting['input_file_id']}").status_code == 204


def test_an_idempotency_key_is_scoped_to_its_tenant_and_covers_file_jobs(claims):
    first, second = claims.tenant(claims.idle), claims.tenant(claims.idle)
    body, headers = {"model": "digits", "inputs": [RECORD]}, {"Idempotency-Key": "order-42"}
    mine = first.http.post("/v1/jobs", json=body, headers=headers)
    theirs = second.http.post("/v1/jobs", json=body, headers=headers)
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert first.http.post("/v1/jobs", json=body, headers=headers).json()["id"] == mine.json()["id"]
    file_id = upload(first, "d.csv", to_csv(digits_rows(3)))["id"]
    file_body = {"model": "digits", "input_file": file_id}
    one = first.http.post("/v1/jobs", json=file_body, headers={"Idempotency-Key": "file-1"})
    again = first.http.post("/v1/jobs", json=file_body, headers={"Idempotency-Key": "file-1"})
    assert one.status_code == 202 and again.json()["id"] == one.json()["id"]
    other = first.http.post("/v1/jobs", json={**file_body, "output_format": "csv"},
                            headers={"Idempotency-Key": "file-1"})
    assert_conflict(other, "different request body")
    listed = first.http.get("/v1/jobs").json()["data"]
    assert sorted(j["id"] for j in listed) == sorted([mine.json()["id"], one.json()["id"]])


def test_completion_window_expires_queued_inline_and_file_jobs_with_a_job_expired_event(claims):
    """A job no worker takes ends `expired` once its window passes (the reconciler of the
    module's worker sweeps the whole database), and its webhook says so."""
    kiln = claims.tenant(claims.idle)
    with Receiver() as receiver:
        inline = kiln.http.post("/v1/jobs", json={
            "model": "digits", "inputs": [RECORD], "completion_window": "1s",
            "webhook_url": local(receiver)}).json()
        meta = upload(kiln, "d.csv", to_csv(digits_rows(3)))
        filed = kiln.http.post("/v1/jobs", json={"model": "digits", "input_file": meta["id"],
                                                 "completion_window": "1s"}).json()
        for job in (inline, filed):
            done = kiln.wait(job["id"], timeout_seconds=30)
            assert done["status"] == "expired" and done["error"]["code"] == "expired", done
            assert done["request_counts"]["completed"] == 0
        [event] = receiver.wait(1)
        assert event.payload["type"] == "job.expired"
        assert event.payload["data"]["id"] == inline["id"]


def test_job_failed_and_a_running_jobs_job_cancelled_reach_the_webhook(claims):
    kiln = claims.tenant()
    with Receiver() as receiver:
        rows = digits_rows(4)
        for row in rows:
            row["p4"] = "bad"
        failed = file_job(kiln, rows, max_failed_fraction=0.5, webhook_url=local(receiver))
        assert kiln.wait(failed["id"], timeout_seconds=60)["status"] == "failed"
        slow = f"slow-{uuid.uuid4().hex[:6]}"
        # slow enough that the job is still running when the cancel lands however fast the
        # worker is next to this client (CI once saw it end first at 6,000 rows of hidden=1024)
        register_slow_model(claims.stack, slow, hidden=2048)
        running = kiln.submit(slow, slow_records(9000), webhook_url=local(receiver))
        wait_for(lambda: kiln.job(running["id"])["request_counts"]["completed"] > 0, timeout=60,
                 message="the running job's first batch")
        assert kiln.cancel(running["id"])["status"] in ("cancelling", "cancelled")
        assert kiln.wait(running["id"], timeout_seconds=60)["status"] == "cancelled"
        got = {r.payload["data"]["id"]: r.payload["type"] for r in receiver.wait(2)}
        assert got == {failed["id"]: "job.failed", running["id"]: "job.cancelled"}


def test_allowed_hosts_admit_a_private_receiver_and_nothing_else(claims):
    """KILN_WEBHOOK_ALLOWED_HOSTS=localhost (without KILN_WEBHOOK_ALLOW_PRIVATE): the receiver
    there gets its event; other private targets, the same one by address included, are refused."""
    kiln = claims.tenant()
    with Receiver() as receiver:
        registered = kiln.http.post("/v1/webhooks", json={"url": local(receiver)})
        assert registered.status_code == 201, registered.text
        job = kiln.submit("digits", [RECORD])
        [event] = receiver.wait(1)
        assert event.payload["data"]["id"] == job["id"]
    for url in ("http://10.0.0.1/hook", "https://169.254.169.254/latest", receiver.url):
        refused = kiln.http.post("/v1/webhooks", json={"url": url})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "url", url


def test_cli_submit_cancel_and_reconcile(claims):
    key = claims.stack.create_key()
    records = claims.stack.logdir / f"records-{uuid.uuid4().hex[:6]}.jsonl"
    records.write_bytes(orjson.dumps(RECORD) + b"\n")
    with Receiver() as receiver:
        job_id = claims.cli(key, "submit", "--model", "digits", "--input", str(records),
                            "--priority", "7", "--webhook-url", local(receiver)).stdout.strip()
        kiln = claims.tenant(key=key)
        job = kiln.wait(job_id, timeout_seconds=60)
        assert job["status"] == "succeeded" and job["priority"] == 7
        assert receiver.wait(1)[0].payload["data"]["id"] == job_id
    queued = claims.tenant(claims.idle, key).submit("digits", [RECORD])
    cancelled = orjson.loads(claims.cli(key, "cancel", queued["id"]).stdout)
    assert cancelled["status"] == "cancelled" and kiln.job(queued["id"])["status"] == "cancelled"
    passed = claims.cli(key, "reconcile").stdout
    assert passed.startswith("given up "), passed


def test_a_rotated_secret_signs_the_retries_still_pending(claims):
    """docs/webhooks.md: signing happens at send time, so a rotation applies to pending retries.
    The receiver rotates the endpoint's secret while it answers the first attempt with a 503."""
    kiln = claims.tenant()
    secrets: list[str] = []

    def answer(n: int) -> int:
        if n == 1:
            rotated = kiln.http.post(f"/v1/webhooks/{secrets[0]}/rotate-secret")
            secrets.append(rotated.json()["secret"])
            return 503
        return 204

    with Receiver(answer) as receiver:
        endpoint = kiln.http.post("/v1/webhooks", json={"url": local(receiver)}).json()
        secrets[:] = [endpoint["id"], endpoint["secret"]]
        kiln.submit("digits", [RECORD])
        first, retry = receiver.wait(2)
    _, old, new = secrets
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    assert verify(old, first.headers, first.body, now=time.time())
    assert verify(new, retry.headers, retry.body, now=time.time())
    with pytest.raises(InvalidSignature):
        verify(old, retry.headers, retry.body, now=time.time())


def test_kiln_db_upgrade_migrates_an_empty_database(claims, services):
    name = f"kiln_empty_{uuid.uuid4().hex[:8]}"
    env = {**claims.stack.env, "KILN_DATABASE_URL": create_database(services.admin_url, name)}
    try:
        behind = run_kiln(env, "db", "wait", "--timeout", "1", check=False)
        assert behind.returncode == 1, behind.stdout + behind.stderr
        run_kiln(env, "db", "upgrade")
        assert run_kiln(env, "db", "wait", "--timeout", "5").stdout.startswith("database at")
    finally:
        drop_database(services.admin_url, name)


def test_a_410_ends_a_job_url_delivery_and_fails_a_disabled_endpoints_pending_ones(claims):
    """docs/webhooks.md: a 410 ends a job-URL delivery without retries; on a registered endpoint
    it disables the endpoint and its pending deliveries fail (the retry schedule here is 0, 0.5
    and 30 s: a delivery that failed at attempt 2 was failed by the 410, not by the schedule)."""
    kiln = claims.tenant()
    with Receiver(lambda n: 410) as gone:
        job = kiln.submit("digits", [RECORD], webhook_url=local(gone))
        gone.wait(1)
        [delivery] = wait_for(lambda: [d for d in deliveries(kiln, job["id"])
                                       if d["state"] == "failed"], message="the failed delivery")
        assert delivery["attempts"] == 1 and delivery["last_status_code"] == 410
    with Receiver() as receiver:
        kept = {}  # job id -> status to answer: 503 (retried later) for A, 410 for B
        receiver.answer = lambda n: kept.get(receiver.requests[n - 1].payload["data"]["id"], 503)
        endpoint = kiln.http.post("/v1/webhooks", json={"url": local(receiver)}).json()
        first = kiln.submit("digits", [RECORD])
        wait_for(lambda: [d for d in deliveries(kiln, first["id"]) if d["attempts"] == 2],
                 message="two attempts of the first delivery")
        second = kiln.submit("digits", [RECORD])
        kept[second["id"]] = 410
        wait_for(lambda: not kiln.http.get(f"/v1/webhooks/{endpoint['id']}").json()["enabled"],
                 message="the endpoint disabled")
        [pending] = wait_for(lambda: [d for d in deliveries(kiln, first["id"])
                                      if d["state"] == "failed"], timeout=20,
                             message="the first delivery failed by the 410")
        assert pending["attempts"] == 2
        assert kiln.http.post(f"/v1/webhooks/{endpoint['id']}/enable").json()["enabled"]
        third = kiln.submit("digits", [RECORD])  # enabled again: its event is sent
        wait_for(lambda: any(r.payload["data"]["id"] == third["id"] for r in receiver.requests),
                 message="a delivery after /enable")


def deliveries(kiln: KilnClient, job_id: str) -> list[dict]:
    response = kiln.http.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_the_guard_runs_at_send_time_and_a_secret_key_list_reads_old_secrets(make_stack):
    """An endpoint the API accepted (KILN_WEBHOOK_ALLOWED_HOSTS=localhost) is still refused by a
    worker without that setting; a worker whose KILN_SECRET_KEY cannot read the endpoint's secret
    fails the delivery saying so; one with `NEW,OLD` reads it and delivers, signed as before."""
    iso = make_stack(KILN_SECRET_KEY="old-key", KILN_WEBHOOK_ALLOWED_HOSTS="localhost",
                     KILN_WEBHOOK_RETRY_SCHEDULE_SECONDS="0,0.2")
    iso.add_digits()
    api = start_api(iso.env, iso.logdir)
    kiln = KilnClient(api.url, iso.create_key())
    phases = [({"KILN_SECRET_KEY": "new-key,old-key", "KILN_WEBHOOK_ALLOWED_HOSTS": ""},
               "blocked by the SSRF guard"),
              ({"KILN_SECRET_KEY": "new-key"}, "cannot be decrypted"),
              ({"KILN_SECRET_KEY": "new-key,old-key"}, None)]
    try:
        with Receiver() as receiver:
            endpoint = kiln.http.post("/v1/webhooks", json={"url": local(receiver)}).json()
            job = kiln.submit("digits", [RECORD])
            current = None  # the delivery each phase sends: the event's, then a redelivery's
            for env, error in phases:
                worker = start_worker({**iso.env, **env}, iso.logdir)
                try:
                    if current is None:
                        current = wait_for(lambda: deliveries(kiln, job["id"]),
                                           message="the delivery")[0]["id"]
                    else:
                        again = kiln.http.post(f"/v1/webhook-deliveries/{current}/redeliver")
                        assert again.status_code == 202, again.text
                        current = again.json()["id"]
                    state = "failed" if error else "delivered"
                    [shown] = wait_for(lambda s=state, i=current: [
                        d for d in deliveries(kiln, job["id"]) if d["id"] == i and d["state"] == s],
                        message=f"a {state} delivery")
                finally:
                    worker.stop()
                if error:
                    assert error in shown["last_error"] and receiver.requests == [], shown
            [got] = receiver.requests
            assert verify(endpoint["secret"], got.headers, got.body, now=time.time())
    finally:
        api.stop()
