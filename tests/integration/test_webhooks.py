"""Webhooks end to end: real API, worker, Postgres outbox and dispatcher, and local receivers."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import httpx
import orjson
import pytest

from sqlalchemy import select

from app.client import KilnClient
from app.orm import WebhookDelivery
from app.domain.signing import signature_headers, verify
from tests.conftest import build_stack
from tests.support import (await_api, drop_database, kiln_command, spawn_api, start_api,
                           start_api_and_worker, wait_for)

RECORD = {f"p{i}": float(i % 17) for i in range(64)}
HANG = "hang"
PROGRESS_SECONDS, ROWS = 0.2, 1000  # the progress test: 10 chunks of 100 rows, one at a time


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict:
        return orjson.loads(self.body)


class Receiver:
    """A local HTTP receiver that records each POST and answers what `answer(n)` says."""

    def __init__(self, answer=lambda n: 204):
        self.requests: list[Received] = []
        self.answer = answer
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    receiver.requests.append(Received(time.time(), self.path,
                                                      dict(self.headers.items()), body))
                    n = len(receiver.requests)
                status = receiver.answer(n)
                if status == HANG:
                    receiver.release.wait(60)
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                return

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def wait(self, count: int, timeout: float = 30) -> list[Received]:
        wait_for(lambda: len(self.requests) >= count, timeout=timeout,
                 message=f"{count} webhook request(s) at {self.url}")
        return list(self.requests)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Hooks:
    stack: object
    api: object
    worker: object
    strict_api: object  # the same database, without KILN_WEBHOOK_ALLOW_PRIVATE

    def tenant(self, api=None) -> KilnClient:
        return KilnClient((api or self.api).url, self.stack.create_key())


@pytest.fixture(scope="module")
def hooks(services, tmp_path_factory):
    stack, name = build_stack(services, tmp_path_factory.mktemp("hooks"),
                              KILN_WEBHOOK_ALLOW_PRIVATE="true",
                              KILN_WEBHOOK_RETRY_SCHEDULE_SECONDS="0,0.5,0.5",
                              KILN_WEBHOOK_TIMEOUT_SECONDS="6", KILN_WEBHOOK_CONCURRENCY="4")
    stack.add_digits()
    strict_api = spawn_api({**stack.env, "KILN_WEBHOOK_ALLOW_PRIVATE": "false"}, stack.logdir)
    api, worker = start_api_and_worker(stack.env, stack.logdir)
    await_api(strict_api)
    yield Hooks(stack, api, worker, strict_api)
    for process in (worker, strict_api, api):
        process.stop()
    drop_database(services.admin_url, name)


def finished_at(job: dict) -> float:
    return datetime.fromisoformat(job["finished_at"]).timestamp()


def deliveries(kiln: KilnClient, job_id: str) -> list[dict]:
    response = kiln.http.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_a_job_webhook_url_gets_one_signed_succeeded_event(hooks):
    kiln = hooks.tenant()
    rotated = kiln.http.post("/v1/webhooks/job-secret/rotate").json()
    secret = rotated["secret"]
    assert secret.startswith("whsec_") and rotated["exists"]
    shown = kiln.http.get("/v1/webhooks/job-secret").json()
    assert shown["exists"] and "secret" not in shown
    with Receiver() as receiver:
        job = kiln.submit("digits", [RECORD], webhook_url=receiver.url + "/hook?tag=1")
        done = kiln.wait(job["id"], timeout_seconds=60)
        [got] = receiver.wait(1)
        latency = got.at - finished_at(done)
        print(f"\njob.succeeded delivered {latency * 1000:.0f} ms after the job finished")
        assert latency < 5
        assert got.path == "/hook?tag=1"
        assert "traceparent" not in {name.lower() for name in got.headers}  # tracing is off
        assert verify(secret, got.headers, got.body, now=time.time()) == got.headers["webhook-id"]
        import standardwebhooks  # the dev extra installs it: interop is checked, never skipped
        assert standardwebhooks.Webhook(secret).verify(got.body.decode(), got.headers)
        event = got.payload
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job["id"] and event["data"]["status"] == "succeeded"
        assert event["data"]["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
        assert event["data"]["links"]["results"] == f"/v1/jobs/{job['id']}/results"
        assert datetime.fromisoformat(event["timestamp"]).timestamp() == finished_at(done)
        time.sleep(1.5)
        assert len(receiver.requests) == 1
    [delivery] = deliveries(kiln, job["id"])
    assert delivery["state"] == "delivered" and delivery["attempts"] == 1
    assert delivery["webhook_id"] == got.headers["webhook-id"]
    assert delivery["last_status_code"] == 204 and delivery["response_ms"] is not None
    assert [a["status_code"] for a in delivery["history"]] == [204]


def test_registered_endpoints_get_their_tenants_events_only(hooks):
    mine, theirs = hooks.tenant(), hooks.tenant()
    with Receiver() as receiver, Receiver() as cancels_only:
        created = mine.http.post("/v1/webhooks", json={"url": receiver.url + "/a",
                                                       "description": "all events"})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        secret = endpoint["secret"]
        assert secret.startswith("whsec_") and endpoint["events"][0] == "job.succeeded"
        filtered = mine.http.post("/v1/webhooks", json={"url": cancels_only.url,
                                                        "events": ["job.cancelled"]})
        assert filtered.status_code == 201 and filtered.json()["events"] == ["job.cancelled"]
        listed = mine.http.get("/v1/webhooks").json()["data"]
        assert {e["id"] for e in listed} == {endpoint["id"], filtered.json()["id"]}
        assert all("secret" not in e for e in listed)
        assert "secret" not in mine.http.get(f"/v1/webhooks/{endpoint['id']}").json()
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/rotate-secret")):
            other = theirs.http.request(method, f"/v1/webhooks/{endpoint['id']}{path}")
            assert other.status_code == 404
            assert other.headers["content-type"] == "application/problem+json"

        other_job = theirs.submit("digits", [RECORD])
        my_job = mine.submit("digits", [RECORD])
        theirs.wait(other_job["id"], timeout_seconds=60)
        mine.wait(my_job["id"], timeout_seconds=60)
        [got] = receiver.wait(1)
        assert got.payload["data"]["id"] == my_job["id"]
        verify(secret, got.headers, got.body, now=time.time())

        rotated = mine.http.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret").json()["secret"]
        assert rotated != secret
        second = mine.submit("digits", [RECORD])
        mine.wait(second["id"], timeout_seconds=60)
        got = receiver.wait(2)[1]
        verify(rotated, got.headers, got.body, now=time.time())
        with pytest.raises(ValueError):
            verify(secret, got.headers, got.body, now=time.time())
        time.sleep(1)
        assert len(receiver.requests) == 2 and cancels_only.requests == []

    [delivery] = deliveries(mine, my_job["id"])
    assert delivery["endpoint_id"] == endpoint["id"]
    assert theirs.http.get(f"/v1/jobs/{my_job['id']}/webhooks").status_code == 404
    assert theirs.http.get(f"/v1/webhook-deliveries/{delivery['id']}").status_code == 404
    assert theirs.http.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver").status_code \
        == 404
    assert mine.http.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
    assert mine.http.get(f"/v1/webhooks/{endpoint['id']}").status_code == 404


def test_retries_keep_the_webhook_id_and_redeliver_replays_it(hooks):
    kiln = hooks.tenant()
    with Receiver(lambda n: 500 if n <= 2 else 204) as receiver:
        job = kiln.submit("digits", [RECORD], webhook_url=receiver.url)
        kiln.wait(job["id"], timeout_seconds=60)
        attempts = receiver.wait(3)
        assert len({r.headers["webhook-id"] for r in attempts}) == 1
        assert all(r.payload["type"] == "job.succeeded" for r in attempts)
        gaps = [b.at - a.at for a, b in pairwise(attempts[:3])]
        assert all(gap >= 0.45 for gap in gaps), gaps  # KILN_WEBHOOK_RETRY_SCHEDULE_SECONDS
        delivery = wait_for(lambda: next((d for d in deliveries(kiln, job["id"])
                                          if d["state"] == "delivered"), None),
                            message="the delivery recorded as delivered")
        assert delivery["attempts"] == 3
        assert [a["status_code"] for a in delivery["history"]] == [500, 500, 204]
        assert delivery["history"][0]["error"].startswith("HTTP 500")

        again = kiln.http.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
        assert again.status_code == 202, again.text
        copy = again.json()
        assert copy["id"] != delivery["id"] and copy["webhook_id"] == delivery["webhook_id"]
        replayed = receiver.wait(4)[3]
        assert replayed.headers["webhook-id"] == attempts[0].headers["webhook-id"]
        assert replayed.body == attempts[0].body
    wait_for(lambda: kiln.http.get(f"/v1/webhook-deliveries/{copy['id']}").json()["state"]
             == "delivered", message="the redelivery recorded")
    assert len(deliveries(kiln, job["id"])) == 2


def test_a_receiver_that_keeps_failing_is_marked_failed_after_the_last_attempt(hooks):
    kiln = hooks.tenant()
    with Receiver(lambda n: 503) as receiver:
        job = kiln.submit("digits", [RECORD], webhook_url=receiver.url)
        kiln.wait(job["id"], timeout_seconds=60)
        receiver.wait(3)
        failed = wait_for(lambda: next((d for d in deliveries(kiln, job["id"])
                                        if d["state"] == "failed"), None),
                          message="the delivery marked failed")
        assert failed["attempts"] == 3 and failed["next_attempt_at"] is None
        time.sleep(1.5)
        assert len(receiver.requests) == 3


def test_a_hanging_receiver_does_not_delay_another_tenant(hooks):
    slow, fast = hooks.tenant(), hooks.tenant()
    with Receiver(lambda n: HANG) as hang_a, Receiver(lambda n: HANG) as hang_b, \
            Receiver() as receiver:
        stuck = [slow.submit("digits", [RECORD], webhook_url=f"{hang.url}/{i}")
                 for i in range(3) for hang in (hang_a, hang_b)]
        for job in stuck:
            slow.wait(job["id"], timeout_seconds=60)
        wait_for(lambda: len(hang_a.requests) + len(hang_b.requests) >= 2,
                 message="the hanging receivers holding their sends")
        job = fast.submit("digits", [RECORD], webhook_url=receiver.url)
        done = fast.wait(job["id"], timeout_seconds=60)
        [got] = receiver.wait(1, timeout=10)
        latency = got.at - finished_at(done)
        print(f"\nanother tenant's delivery took {latency * 1000:.0f} ms while 6 hung")
        # Without the caps the four threads would all hang for KILN_WEBHOOK_TIMEOUT_SECONDS=6.
        assert latency < 2.5


def test_410_gone_disables_the_endpoint(hooks):
    kiln = hooks.tenant()
    with Receiver(lambda n: 410) as receiver:
        endpoint = kiln.http.post("/v1/webhooks", json={"url": receiver.url}).json()
        job = kiln.submit("digits", [RECORD])
        kiln.wait(job["id"], timeout_seconds=60)
        receiver.wait(1)
        shown = wait_for(lambda: (e := kiln.http.get(f"/v1/webhooks/{endpoint['id']}").json())
                         and not e["enabled"] and e, message="the endpoint disabled")
        assert "410" in shown["disabled_reason"]
        [delivery] = deliveries(kiln, job["id"])
        assert delivery["state"] == "failed" and delivery["attempts"] == 1
        later = kiln.submit("digits", [RECORD])
        kiln.wait(later["id"], timeout_seconds=60)
        time.sleep(1)
        assert len(receiver.requests) == 1 and deliveries(kiln, later["id"]) == []
        refused = kiln.http.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
        assert refused.status_code == 409
        assert kiln.http.post(f"/v1/webhooks/{endpoint['id']}/enable").json()["enabled"]


def test_cancelling_a_queued_job_delivers_job_cancelled(hooks):
    kiln = hooks.tenant()
    # An API publishing to a queue nobody consumes, so the job is still queued when cancelled.
    idle = start_api({**hooks.stack.env, "KILN_QUEUE": f"idle-{uuid.uuid4().hex[:6]}"},
                     hooks.stack.logdir)
    try:
        client = KilnClient(idle.url, kiln.http.headers["Authorization"].split()[1])
        with Receiver() as receiver:
            job = client.submit("digits", [RECORD], webhook_url=receiver.url)
            assert client.cancel(job["id"])["status"] == "cancelled"
            [got] = receiver.wait(1)
            assert got.payload["type"] == "job.cancelled"
            assert got.payload["data"]["status"] == "cancelled"
            time.sleep(1)
            assert len(receiver.requests) == 1
    finally:
        idle.stop()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest",
                                 "https://169.254.169.254/", "https://10.0.0.1/",
                                 "https://2130706433/", "https://[::ffff:127.0.0.1]/",
                                 "https://localhost/"])
def test_the_ssrf_guard_refuses_private_targets_without_allow_private(hooks, url):
    kiln = hooks.tenant(hooks.strict_api)
    refused = kiln.http.post("/v1/webhooks", json={"url": url})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"][0]["field"] == "url"
    job = kiln.http.post("/v1/jobs", json={"model": "digits", "inputs": [RECORD],
                                           "webhook_url": url})
    assert job.status_code == 422 and job.json()["errors"][0]["field"] == "webhook_url"
    assert kiln.http.get("/v1/webhooks").json()["data"] == []


def test_kiln_webhooks_listen_verifies_and_prints(hooks, tmp_path):
    from tests.support import free_port

    port, secret = free_port(), "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    output = (tmp_path / "listen.log").open("w+")
    process = subprocess.Popen(kiln_command("webhooks", "listen", "--port", str(port),
                                            "--secret", secret),
                               env=hooks.stack.env, stdout=output, stderr=subprocess.STDOUT)
    try:
        body = b'{"type": "job.succeeded", "data": {"id": "x"}}'
        headers = signature_headers(secret, "msg_1", int(time.time()), body)

        def post(signed: dict) -> int | None:
            try:
                return httpx.post(f"http://127.0.0.1:{port}/", content=body,
                                  headers=signed).status_code
            except httpx.HTTPError:
                return None

        assert wait_for(lambda: post(headers), timeout=20, message="the listener") == 204
        assert post({**headers, "webhook-id": "msg_2"}) == 401
        text = wait_for(lambda: (t := (tmp_path / "listen.log").read_text()).count("webhook-id")
                        >= 2 and t, timeout=10, message="the listener's output")
        assert "job.succeeded webhook-id=msg_1 signature ok" in text
        assert "SIGNATURE INVALID" in text
    finally:
        process.terminate()
        process.wait(10)
        output.close()


def test_progress_events_are_opt_in_and_rate_limited(services, tmp_path_factory):
    stack, name = build_stack(services, tmp_path_factory.mktemp("progress"),
                              KILN_WEBHOOK_ALLOW_PRIVATE="true", KILN_TUNING__CHUNK_ROWS="100",
                              KILN_PROGRESS_EVENT_SECONDS=str(PROGRESS_SECONDS),
                              KILN_MAX_RUNNING_CHUNKS_PER_JOB="1")
    stack.add_digits()
    api, worker = start_api_and_worker(stack.env, stack.logdir)
    try:
        kiln = KilnClient(api.url, stack.create_key())
        with Receiver() as progress, Receiver() as terminal_only:
            kiln.http.post("/v1/webhooks", json={"url": progress.url,
                                                  "events": ["job.progress", "job.succeeded"]})
            kiln.http.post("/v1/webhooks", json={"url": terminal_only.url})
            data = b"".join(orjson.dumps(RECORD) + b"\n" for _ in range(ROWS))
            file_id = kiln.http.post("/v1/files", files={"file": ("r.jsonl", data)}).json()["id"]
            job = kiln.http.post("/v1/jobs", json={"model": "digits", "input_file": file_id}).json()
            assert kiln.wait(job["id"], timeout_seconds=60)["status"] == "succeeded"
            got = progress.wait(2)
            wait_for(lambda: any(r.payload["type"] == "job.succeeded" for r in progress.requests),
                     timeout=30, message="job.succeeded")
            # Deliveries to one host run two at a time, so they may arrive out of order
            # (docs/webhooks.md); in the order they were recorded, the counts only grow.
            recorded = sorted((r.payload for r in progress.requests),
                              key=lambda p: datetime.fromisoformat(p["timestamp"]))
            types = [p["type"] for p in recorded]
            assert types.count("job.progress") >= 1 and types[-1] == "job.succeeded"
            completed = [p["data"]["request_counts"]["completed"] for p in recorded
                         if p["type"] == "job.progress"]
            assert completed == sorted(completed) and all(0 < c <= ROWS for c in completed)
            assert len(set(completed)) == len(completed)  # one event per recorded step
            assert len({r.headers["webhook-id"] for r in got}) == len(got)
            assert [r.payload["type"] for r in terminal_only.wait(1)] == ["job.succeeded"]
        # the rate limit: the outbox rows of one job's progress events (their transaction
        # times, which the limit compares) are at least the interval apart
        with stack.sessions() as session:
            created = session.scalars(select(WebhookDelivery.created_at).where(
                WebhookDelivery.job_id == uuid.UUID(job["id"]),
                WebhookDelivery.event == "job.progress").order_by(WebhookDelivery.created_at)).all()
        assert len(created) == len(completed)
        gaps = [(b - a).total_seconds() for a, b in pairwise(created)]
        assert all(gap >= PROGRESS_SECONDS for gap in gaps), gaps
    finally:
        worker.stop()
        api.stop()
        drop_database(services.admin_url, name)
