"""The drain flag: no messages while a worker drains a model, and no job left waiting for one."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.client import KilnClient
from app.orm import Job
from app.queueing import DrainFlags
from tests import support
from workers.demo_models import digits_records, digits_split


@pytest.fixture(scope="module")
def records():
    _, x_test, _, _ = digits_split()
    return digits_records(x_test[:300])


def test_flags_set_clear_and_expire_in_redis(services):
    flags = DrainFlags(services.redis_url, ttl_seconds=0.3)
    model, queue = uuid.uuid4(), f"q-{uuid.uuid4().hex[:6]}"
    assert not flags.active(model, queue)
    flags.mark(model, queue)
    assert flags.active(model, queue) and not flags.active(model, "another-queue")
    flags.clear(model, queue)
    assert not flags.active(model, queue)
    flags.mark(model, queue)
    time.sleep(0.5)
    assert not flags.active(model, queue), "a flag left by a killed worker must expire"


def test_an_unreachable_redis_reads_as_not_draining():
    port = support.free_port()
    assert DrainFlags(f"redis://127.0.0.1:{port}/0").active(uuid.uuid4(), "q") is False


def test_no_message_is_published_while_a_worker_drains_the_model(make_stack, records):
    stack = make_stack(KILN_QUEUED_GRACE_SECONDS="600")
    stack.kiln("models", "add-demo", "digits")
    api = support.start_api(stack.env, stack.logdir)
    try:
        with KilnClient(api.url, stack.create_key()) as client:
            first = client.submit("digits", [records[0]])
            with stack.sessions() as session:
                job = session.get(Job, uuid.UUID(first["id"]))
                model_id, queue = job.model_id, job.options["queue"]
            DrainFlags(stack.settings.redis_url, ttl_seconds=30).mark(model_id, queue)
            time.sleep(0.05)  # past the coalescing window of the first job's message
            second = client.submit("digits", [records[1]])
        worker = support.start_worker(stack.env, stack.logdir)
        try:  # only the first job's message exists; its drain claims the second job too
            support.wait_for(lambda: re.search(r"scored \d+ rows", worker.log.read_text()),
                             timeout=60, message="a drain")
            received = re.findall(r"Task kiln.run_job\[[^\]]+\] received", worker.log.read_text())
            assert len(received) == 1, received
        finally:
            worker.stop()
        with stack.sessions() as session:
            statuses = {str(j.id): j.status for j in session.query(Job).all()}
        assert statuses == {first["id"]: "succeeded", second["id"]: "succeeded"}
    finally:
        api.stop()


def test_a_burst_of_jobs_all_finish_without_the_reconciler(make_stack, records):
    """With the reconciler's grace at ten minutes, a job whose message the drain flag wrongly
    suppressed would sit queued until the test times out."""
    stack = make_stack(KILN_QUEUED_GRACE_SECONDS="600", KILN_RECONCILE_INTERVAL_SECONDS="600")
    stack.kiln("models", "add-demo", "digits")
    api = support.start_api(stack.env, stack.logdir)
    worker = support.start_worker(stack.env, stack.logdir)
    try:
        with KilnClient(api.url, stack.create_key()) as client:
            for wave in range(3):  # bursts with idle gaps: drains start, end and restart
                with ThreadPoolExecutor(8) as pool:
                    ids = list(pool.map(lambda i: client.submit("digits", [records[i]])["id"],
                                        range(100 * wave, 100 * wave + 100)))
                for job_id in ids:
                    assert client.wait(job_id, timeout_seconds=30)["status"] == "succeeded"
                time.sleep(1.5)  # longer than the flag's TTL
        log = worker.log.read_text()
        received = len(re.findall(r"Task kiln.run_job\[[^\]]+\] received", log))
        assert received < 150, f"{received} messages for 300 jobs"
    finally:
        worker.stop()
        api.stop()
