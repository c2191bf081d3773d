"""`GET /v1/jobs/{id}?wait=N`: one held request instead of polling, woken by job endings
published over Redis (app/queueing/endings.py), on a real API and worker.

The stack's API re-reads a held job only every 60 s (`KILN_TUNING__WAIT_RECHECK_SECONDS`), so an
answer well before that can only come from an ending message: from the API's own cancel, or
from a worker process that scored the job.
"""

import threading
import time
import uuid

import httpx
import psycopg
import pytest

from tests.conftest import api_only_stack
from tests.support import start_worker
from workers.demo_models import digits_records, digits_split

RECORDS = digits_records(digits_split()[1][:2])
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def held(services, tmp_path_factory):
    """An API (one process, one held request at a time) and no worker: jobs stay queued until a
    test starts one."""
    yield from api_only_stack(services, tmp_path_factory.mktemp("wait"),
                              KILN_MAX_WAITING_REQUESTS="1",
                              KILN_TUNING__WAIT_RECHECK_SECONDS="60")


def http(stack, key=None) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, timeout=90,
                        headers={"Authorization": f"Bearer {key or stack.create_key()}"})


def submit(client: httpx.Client) -> str:
    response = client.post("/v1/jobs", json={"model": "digits", "inputs": RECORDS})
    assert response.status_code == 202, response.text
    return response.json()["id"]


class Held(threading.Thread):
    """A `?wait` request in the background: its answer and when it came."""

    def __init__(self, client: httpx.Client, job_id: str, seconds: float):
        super().__init__(daemon=True)
        self.client, self.job_id, self.seconds = client, job_id, seconds
        self.started = time.monotonic()
        self.start()

    def run(self) -> None:
        self.response = self.client.get(f"/v1/jobs/{self.job_id}", params={"wait": self.seconds})
        self.answered = time.monotonic()

    def result(self, timeout: float = 60) -> tuple[dict, float]:
        self.join(timeout)
        assert not self.is_alive(), "the held request never answered"
        assert self.response.status_code == 200, self.response.text
        return self.response.json(), self.answered - self.started


def api_backends_in_use(stack) -> int:
    """The API's Postgres sessions inside a query or a transaction (not idle in its pool): this
    stack's, not another xdist worker's API on the same server."""
    with psycopg.connect(stack.settings.database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                            "'kiln-api' AND state <> 'idle' AND datname = current_database()"
                            ).fetchone()[0]


def test_a_held_request_answers_after_its_seconds_holding_no_connection(held):
    client = http(held)
    job_id = submit(client)
    waiting = Held(client, job_id, 3)
    time.sleep(1.5)
    assert waiting.is_alive()
    assert api_backends_in_use(held) == 0  # the wait holds a thread, not a database session
    job, seconds = waiting.result()
    assert job["status"] == "queued" and job["id"] == job_id
    assert 3 <= seconds < 15


def test_a_cancel_wakes_the_held_request(held):
    client = http(held)
    job_id = submit(client)
    waiting = Held(client, job_id, 25)
    time.sleep(1.0)
    assert waiting.is_alive()
    cancelled_at = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    job, _ = waiting.result()
    assert job["status"] == "cancelled"
    assert waiting.answered - cancelled_at < 10  # not the 25 s wait, nor the 60 s re-read


def test_a_worker_scoring_the_job_wakes_the_held_request(held):
    client = http(held)
    job_id = submit(client)
    waiting = Held(client, job_id, 30)
    worker = start_worker(held.env, held.logdir)
    try:
        ready_at = time.monotonic()
        job, _ = waiting.result()
        assert job["status"] == "succeeded"
        assert job["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        # the worker finds the queued job within the queued grace (2 s) and scores it at once
        assert waiting.answered - ready_at < 15
    finally:
        worker.stop()


def test_a_request_beyond_the_held_limit_is_answered_at_once(held):
    client = http(held)
    first, second = submit(client), submit(client)
    holding = Held(client, first, 4)
    time.sleep(1.0)
    assert holding.is_alive()
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{second}", params={"wait": 4})
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert time.monotonic() - started < 2.5  # KILN_MAX_WAITING_REQUESTS=1: not held
    job, seconds = holding.result()
    assert job["status"] == "queued" and seconds >= 4


def test_wait_is_tenant_scoped_and_bounded(held):
    client = http(held)
    job_id = submit(client)
    other = http(held)
    started = time.monotonic()
    response = other.get(f"/v1/jobs/{job_id}", params={"wait": 5})
    assert response.status_code == 404 and response.headers["Content-Type"] == PROBLEM
    assert time.monotonic() - started < 2.5  # another tenant's job is not waited for
    assert other.get(f"/v1/jobs/{uuid.uuid4()}", params={"wait": 5}).status_code == 404
    for bad in ("31", "-1", "soon"):
        response = client.get(f"/v1/jobs/{job_id}", params={"wait": bad})
        assert response.status_code == 422, bad
        assert response.headers["Content-Type"] == PROBLEM
        assert "wait" in response.text
