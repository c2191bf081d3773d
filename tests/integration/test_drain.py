"""The drain flag: no messages while a worker drains a model, and no job left waiting for one."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.client import KilnClient
from app.orm import Job
from app.queueing.drains import DrainFlags
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


def test_small_job_flags_cover_small_jobs_only_and_expire_in_redis(services):
    flags = DrainFlags(services.redis_url, ttl_seconds=0.3)
    model, queue = uuid.uuid4(), f"q-{uuid.uuid4().hex[:6]}"
    assert not flags.covers(model, queue, 1)
    flags.mark_small(model, queue, 128)
    assert flags.covers(model, queue, 1) and flags.covers(model, queue, 128)
    assert not flags.covers(model, queue, 129), "a larger job needs its message"
    assert not flags.covers(model, "another-queue", 1) and not flags.active(model, queue)
    flags.mark(model, queue)  # a drain covers every job, whatever its size
    assert flags.covers(model, queue, 10**6)
    flags.clear(model, queue)
    flags.clear_small(model, queue)
    assert not flags.covers(model, queue, 1)
    flags.mark_small(model, queue, 128)
    time.sleep(0.5)
    assert not flags.covers(model, queue, 1), "a flag left by a killed worker must expire"


def test_an_unreachable_redis_reads_as_not_draining():
    port = support.free_port()
    assert DrainFlags(f"redis://127.0.0.1:{port}/0").active(uuid.uuid4(), "q") is False
    assert DrainFlags(f"redis://127.0.0.1:{port}/0").covers(uuid.uuid4(), "q", 1) is False


def test_no_message_is_published_while_a_worker_drains_the_model(make_stack, records):
    stack = make_stack(KILN_QUEUED_GRACE_SECONDS="600")
    stack.add_digits()
    api = support.start_api(stack.env, stack.logdir)
    try:
        with KilnClient(api.url, stack.create_key()) as client:
            first = client.submit("digits", [records[0]])
            with stack.sessions() as session:
                job = session.get(Job, uuid.UUID(first["id"]))
                model_id, queue = job.model_id, job.options["queue"]
            flags = DrainFlags(stack.settings.redis_url, ttl_seconds=30)
            flags.mark(model_id, queue)
            time.sleep(0.05)  # past the coalescing window of the first job's message
            second = client.submit("digits", [records[1]])
            flags.clear(model_id, queue)  # that (pretend) drain is over
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
    stack.add_digits()
    api, worker = support.start_api_and_worker(stack.env, stack.logdir)
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
        # each wave starts a drain with a message; a flag that never held would give 300 (the
        # margin is for a loaded machine, where drains end and restart more often)
        assert 3 <= received < 200, f"{received} messages for 300 jobs"
    finally:
        worker.stop()
        api.stop()


def test_one_process_drains_a_model_unless_it_asks_for_help(make_stack, records):
    """A message for a model that another process is draining is done at once (the drainer
    takes its job); a drainer's call for help is not turned away."""
    from app.queueing.publisher import Publisher
    from app.services.auth import authenticate
    from app.services.commands import SubmitJob
    from app.services.jobs import submit_job

    stack = make_stack(KILN_QUEUED_GRACE_SECONDS="600", KILN_RECONCILE_INTERVAL_SECONDS="600")
    stack.add_digits()
    key = stack.create_key("drain-tenant")
    with stack.sessions.begin() as session:  # recorded, not published
        job, _ = submit_job(session, authenticate(session, f"Bearer {key}"),
                            SubmitJob(model="digits", inputs=[records[0]]))
    flags = DrainFlags(stack.settings.redis_url, ttl_seconds=60)
    flags.mark(job.model_id, job.options["queue"])  # as if another process were draining
    publisher = Publisher(stack.settings)
    worker = support.start_worker(stack.env, stack.logdir)
    try:
        def status() -> str:
            with stack.sessions() as session:
                return session.get(Job, job.id).status

        def finished_tasks() -> int:
            return len(re.findall(r"Task kiln.run_job\[[^\]]+\] succeeded", worker.log.read_text()))

        publisher.publish_jobs([job.id], job.options["queue"])
        support.wait_for(lambda: finished_tasks() == 1, timeout=30, message="the first task")
        assert status() == "queued"  # turned away: no second drainer
        publisher.publish_jobs([job.id], job.options["queue"], helper=True)
        support.wait_for(lambda: status() == "succeeded", timeout=30, message="the helper")
    finally:
        worker.stop()
        flags.clear(job.model_id, job.options["queue"])


def test_a_drainer_with_full_claims_asks_for_help(make_stack, records):
    stack = make_stack(KILN_TUNING__MAX_JOBS_PER_CLAIM="4", KILN_WORKER_CONCURRENCY="2",
                       KILN_QUEUED_GRACE_SECONDS="600", KILN_RECONCILE_INTERVAL_SECONDS="600")
    stack.add_digits()
    api = support.start_api(stack.env, stack.logdir)
    try:
        with KilnClient(api.url, stack.create_key()) as client:
            with ThreadPoolExecutor(8) as pool:  # queued before any worker runs
                ids = list(pool.map(lambda i: client.submit("digits", [records[i]])["id"],
                                    range(60)))
            worker = support.start_worker(stack.env, stack.logdir)
            try:
                for job_id in ids:
                    assert client.wait(job_id, timeout_seconds=60)["status"] == "succeeded"
                # the helper message is not turned away; it may be taken up only after the
                # first drainer has finished everything
                def helped() -> str | None:
                    text = worker.log.read_text()
                    return text if "helping to drain model" in text else None

                log = support.wait_for(helped, timeout=30,
                                       message="the helper message to be taken up")
            finally:
                worker.stop()
        assert "asking another process to help drain" in log
        claims = [int(n) for n in re.findall(r"scored \d+ rows of (\d+) job", log)]
        assert sum(claims) == 60 and max(claims) <= 4
    finally:
        api.stop()
