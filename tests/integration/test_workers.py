"""Workers on real Redis and Postgres: shared batches, cancel, lost messages, SIGKILL."""

import math
import re
import signal
import time
import uuid
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
from sqlalchemy import func, select, text

from app.client import KilnClient
from app.orm import Job, JobResult
from app.services.auth import Caller
from app.services.commands import SubmitJob
from app.services.jobs import submit_job
from app.services.models import register_model
from app.storage import Storage
from tests import models as test_models
from tests.support import start_api, start_api_and_worker, start_worker, wait_for


REPUBLISHED = re.compile(r"reconciler: \d+ given up, \d+ requeued, [1-9]\d* republished")


def slow_records(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [{c: float(v) for c, v in zip(test_models.COLUMNS, row)}
            for row in rng.integers(0, 17, size=(n, 64))]


def register_slow_model(stack, name: str, hidden: int = 1024, layers: int = 8) -> None:
    with stack.sessions.begin() as session:
        register_model(session, Storage(stack.settings.resolved_storage_url), name=name,
                       artifact=test_models.slow_classifier(hidden, layers),
                       signature=test_models.SIGNATURE, processing=test_models.PROCESSING,
                       metrics={})


@contextmanager
def slow_model_stack(make_stack, hidden: int = 1024, worker_env: dict | None = None, **env):
    """An isolated stack with a slow model, an API and a worker; yields what tests use."""
    iso = make_stack(**env)
    name = f"slow-{uuid.uuid4().hex[:6]}"
    register_slow_model(iso, name, hidden=hidden)
    api, worker = start_api_and_worker(iso.env, iso.logdir, worker_env=worker_env)
    try:
        yield iso, name, KilnClient(api.url, iso.create_key()), worker
    finally:
        worker.stop()
        api.stop()


def unpublished_job(stack, key: str, model: str, records) -> str:
    """A job recorded in Postgres and never published to Redis: only the reconciler's pass,
    once the job is past its grace, sends it to a worker."""
    from app.services.auth import authenticate

    with stack.sessions.begin() as session:
        caller: Caller = authenticate(session, f"Bearer {key}")
        job, _ = submit_job(session, caller, SubmitJob(model=model, inputs=records))
        return str(job.id)


def job_status(stack, job_id: str) -> str:
    with stack.sessions() as session:
        return session.get(Job, uuid.UUID(job_id)).status


def result_rows(stack, job_id):
    with stack.sessions() as session:
        return session.execute(select(JobResult.index, func.count()).where(
            JobResult.job_id == uuid.UUID(job_id)).group_by(JobResult.index)).all()


def test_small_jobs_share_model_batches_and_keep_their_own_results(client, worker):
    from workers.demo_models import digits_records, digits_split

    _, x_test, _, y_test = digits_split()
    records = digits_records(x_test[:120])

    def submit(i):
        return client.submit("digits", [records[i]], metadata={"i": i})["id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(120)))
    for i, job_id in enumerate(ids):
        job = client.wait(job_id, timeout_seconds=60)
        assert job["status"] == "succeeded" and job["metadata"] == {"i": i}
        lines = b"".join(client.iter_results(job_id)).splitlines()
        assert len(lines) == 1
    labels = [int(b"".join(client.iter_results(j)).split(b'"label":')[1].split(b",")[0]) for j in ids]
    assert np.mean(np.array(labels) == y_test[:120]) >= 0.95
    shared = [line for line in worker.log.read_text().splitlines()
              if "scored" in line and "job(s)" in line and " of 1 job(s)" not in line]
    assert shared, "expected at least one model batch that served several jobs"


def test_cancel_a_queued_job_is_immediate(make_stack):
    iso = make_stack()
    iso.add_digits()
    api = start_api(iso.env, iso.logdir)
    try:
        client = KilnClient(api.url, iso.create_key())
        job = client.submit("digits", slow_records(2))
        assert job["status"] == "queued"  # no worker is running on this stack
        cancelled = client.cancel(job["id"])
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
        # a witness on another model (a drain of digits cannot take it): once the reconciler
        # has republished it, a pass has run past the grace of the older, cancelled job too
        witness_model = f"witness-{uuid.uuid4().hex[:6]}"
        register_slow_model(iso, witness_model, hidden=16, layers=1)
        witness = unpublished_job(iso, client.http.headers["Authorization"].split()[1],
                                  witness_model, slow_records(1))
        worker = start_worker(iso.env, iso.logdir)
        try:
            wait_for(lambda: job_status(iso, witness) == "succeeded", timeout=60,
                     message="the reconciler's republish of the witness")
            assert client.job(job["id"])["status"] == "cancelled"
            assert result_rows(iso, job["id"]) == []
        finally:
            worker.stop()
        again = client.http.post(f"/v1/jobs/{job['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
    finally:
        api.stop()


def test_cancel_a_running_job_stops_at_a_batch_boundary_and_keeps_results(make_stack):
    with slow_model_stack(make_stack, KILN_TUNING__BATCH_SIZE="64", KILN_WORKER_CONCURRENCY="1") as (iso, name, client, _):
        job = client.submit(name, slow_records(6000))
        wait_for(lambda: client.job(job["id"])["request_counts"]["completed"] > 0, timeout=60,
                 message="the first batch")
        assert client.cancel(job["id"])["status"] in ("cancelling", "cancelled")
        done = client.wait(job["id"], timeout_seconds=60)
        assert done["status"] == "cancelled"
        counts = done["request_counts"]
        assert 0 < counts["completed"] < counts["total"]
        rows = result_rows(iso, job["id"])
        assert len(rows) == counts["completed"] + counts["failed"]
        assert all(n == 1 for _, n in rows)
        assert [i for i, _ in sorted(rows)] == list(range(len(rows)))


def test_a_lost_message_is_republished_by_the_reconciler(make_stack):
    iso = make_stack()
    iso.add_digits()
    job_id = unpublished_job(iso, iso.create_key("lost-tenant"), "digits", slow_records(3))
    worker = start_worker(iso.env, iso.logdir)
    try:
        wait_for(lambda: job_status(iso, job_id) == "succeeded", timeout=30,
                 message="the republished job")
        assert len(result_rows(iso, job_id)) == 3
    finally:
        worker.stop()


def test_sigkilled_worker_child_loses_nothing_and_duplicates_nothing(make_stack):
    with slow_model_stack(make_stack, KILN_TUNING__BATCH_SIZE="64", KILN_WORKER_CONCURRENCY="1") as (iso, name, client, worker):
        total = 3000
        job = client.submit(name, slow_records(total))
        wait_for(lambda: client.job(job["id"])["request_counts"]["completed"] > 0, timeout=60,
                 message="the first batch")
        children = worker.children()
        assert children, "the worker has a prefork child"
        for child in children:
            child.send_signal(signal.SIGKILL)
        done = client.wait(job["id"], timeout_seconds=120)
        assert done["status"] == "succeeded", done
        assert done["attempt"] >= 2
        assert done["request_counts"] == {"total": total, "completed": total, "failed": 0}
        rows = result_rows(iso, job["id"])
        assert sorted(i for i, _ in rows) == list(range(total))
        assert all(n == 1 for _, n in rows)
        lines = b"".join(client.iter_results(job["id"])).splitlines()
        assert len(lines) == total


def test_a_job_that_keeps_killing_its_worker_fails_with_a_reason(make_stack):
    with slow_model_stack(make_stack, KILN_TUNING__BATCH_SIZE="64", KILN_WORKER_CONCURRENCY="1", KILN_MAX_ATTEMPTS="2") as (_, name, client, worker):
        job = client.submit(name, slow_records(10000))
        for attempt in (1, 2):
            wait_for(lambda: client.job(job["id"])["attempt"] == attempt  # noqa: B023 - waited for here
                     and client.job(job["id"])["request_counts"]["completed"] > 0,
                     timeout=60, message=f"attempt {attempt} running")
            for child in worker.children():
                child.send_signal(signal.SIGKILL)
        done = client.wait(job["id"], timeout_seconds=60)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "worker_crashed"
        assert "2 times" in done["error"]["message"]


def test_a_claim_scored_in_its_own_transaction_writes_nothing_if_killed_and_is_leased_next(
        make_stack):
    """A small first-try claim is scored inside the transaction that locked it: the job reads
    queued, its row locked, while it is scored. A worker killed then writes nothing, and the
    job's next try (a redelivered message) is leased, so it counts toward KILN_MAX_ATTEMPTS."""
    with slow_model_stack(make_stack, KILN_TUNING__BATCH_SIZE="3000", KILN_TUNING__SINGLE_TRANSACTION_ROWS="3000",
                          KILN_WORKER_CONCURRENCY="1") as (iso, name, client, worker):
        total = 3000
        job = client.submit(name, slow_records(total))
        job_id = uuid.UUID(job["id"])

        def scored_while_queued() -> bool:
            with iso.sessions.begin() as session:
                status = session.scalar(select(Job.status).where(Job.id == job_id))
                free = session.execute(text("SELECT id FROM jobs WHERE id = :id "
                                            "FOR UPDATE SKIP LOCKED"), {"id": job_id}).first()
            return status == "queued" and free is None

        wait_for(scored_while_queued, timeout=60, interval=0.02, message="the locked claim")
        for child in worker.children():
            child.send_signal(signal.SIGKILL)
        wait_for(lambda: client.job(job["id"])["status"] == "running", timeout=60, interval=0.02,
                 message="the leased retry")
        done = client.wait(job["id"], timeout_seconds=120)
        assert done["status"] == "succeeded", done
        assert done["attempt"] == 1  # the killed try left no trace; the lease counted
        assert done["request_counts"] == {"total": total, "completed": total, "failed": 0}
        with iso.sessions() as session:
            attempts = session.execute(select(JobResult.attempt, func.count()).where(
                JobResult.job_id == job_id).group_by(JobResult.attempt)).all()
        assert attempts == [(1, total)]
        rows = result_rows(iso, job["id"])
        assert sorted(i for i, _ in rows) == list(range(total)) and all(n == 1 for _, n in rows)


def test_sigterm_stops_a_worker_gracefully_and_nothing_is_half_written(make_stack):
    """SIGTERM as docker-compose.yml and deploy/k8s send it, remapped to Celery's cold shutdown
    (REMAP_SIGTERM=SIGQUIT): the task gets KILN_SOFT_SHUTDOWN_SECONDS, not the time it needs."""
    # 10,000 rows at hidden=2048 take 5-10 s of model time on a 2-core machine, well past a 1 s
    # limit (6,000 rows at 1024 with a 3 s limit finished before the cut on an idle machine)
    with slow_model_stack(make_stack, hidden=2048, worker_env={"REMAP_SIGTERM": "SIGQUIT"},
                          KILN_TUNING__BATCH_SIZE="64", KILN_WORKER_CONCURRENCY="1",
                          KILN_SOFT_SHUTDOWN_SECONDS="1",
                          # a loaded 2-core machine can delay a 2 s lease's heartbeat: this test
                          # is about the shutdown, not about leases
                          KILN_LEASE_SECONDS="6", KILN_MAX_ATTEMPTS="6"
                          ) as (iso, name, client, worker):
        total = 10_000
        job = client.submit(name, slow_records(total))
        wait_for(lambda: client.job(job["id"])["request_counts"]["completed"] > 0, timeout=60,
                 message="the first batch")
        at_signal = client.job(job["id"])["request_counts"]
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(timeout=30)
        stopped_after = time.monotonic() - started
        assert stopped_after < 20, "the worker outlived its soft shutdown limit"
        cut = client.job(job["id"])
        print(f"at the signal {at_signal}; stopped after {stopped_after:.1f} s; then {cut}")
        assert cut["status"] == "running", "the task finished: the soft shutdown did not apply"
        assert 0 < cut["request_counts"]["completed"] < total
        replacement = start_worker(iso.env, iso.logdir)
        try:
            done = client.wait(job["id"], timeout_seconds=120)
        finally:
            replacement.stop()
        assert done["status"] == "succeeded", (done["error"], done["attempt"], done["request_counts"])
        assert done["request_counts"] == {"total": total, "completed": total, "failed": 0}
        rows = result_rows(iso, job["id"])
        assert sorted(i for i, _ in rows) == list(range(total)) and all(n == 1 for _, n in rows)


def test_jobs_that_need_a_gpu_go_to_the_gpu_queue_and_cpu_workers_leave_them(make_stack):
    import redis

    gpu_queue = f"gpu-{uuid.uuid4().hex[:8]}"
    iso = make_stack(KILN_GPU_QUEUE=gpu_queue)
    iso.add_digits()
    api, worker = start_api_and_worker(iso.env, iso.logdir)  # a CPU worker only
    try:
        client = KilnClient(api.url, iso.create_key())
        record = slow_records(1)
        gpu_job = client.http.post("/v1/jobs", json={"model": "digits", "inputs": record,
                                                     "require_gpu": True}).json()
        assert gpu_job["queue"] == gpu_queue
        cpu_job = client.submit("digits", record)
        assert cpu_job["queue"] == iso.settings.queue
        assert client.wait(cpu_job["id"], timeout_seconds=30)["status"] == "succeeded"
        # past the grace, the reconciler re-publishes the GPU job (the only one queued), to the
        # GPU queue again: its second message there
        broker = redis.Redis.from_url(iso.settings.redis_url)
        wait_for(lambda: REPUBLISHED.search(worker.log.read_text()), timeout=30,
                 message="the reconciler's republish")
        assert client.job(gpu_job["id"])["status"] == "queued"
        assert broker.llen(gpu_queue) >= 2
        # the other two routes the README names: the model's processing.requires_gpu, and an
        # fp16 variant (`kiln models optimize --variant fp16` registers one without CUDA)
        with iso.sessions.begin() as session:
            register_model(session, Storage(iso.settings.resolved_storage_url), name="gpu-only",
                           artifact=test_models.slow_classifier(16, 1),
                           signature=test_models.SIGNATURE, metrics={},
                           processing={**test_models.PROCESSING, "requires_gpu": True})
        assert client.submit("gpu-only", record)["queue"] == gpu_queue
        assert "fp16" in iso.kiln("models", "optimize", "digits", "--variant", "fp16").stdout
        fp16 = client.http.post("/v1/jobs", json={"model": "digits", "inputs": record,
                                                  "variant": "fp16"})
        assert fp16.status_code == 202 and fp16.json()["queue"] == gpu_queue, fp16.text
        assert client.submit("digits", record)["queue"] == iso.settings.queue  # fp32 stays
        broker.delete(gpu_queue)
    finally:
        worker.stop()
        api.stop()


def test_inline_batches_honour_the_models_max_batch_size(make_stack):
    iso = make_stack(KILN_WORKER_CONCURRENCY="1")  # KILN_TUNING__BATCH_SIZE stays 1024
    name = f"eights-{uuid.uuid4().hex[:6]}"
    with iso.sessions.begin() as session:
        register_model(session, Storage(iso.settings.resolved_storage_url), name=name,
                       artifact=test_models.slow_classifier(hidden=64, layers=2),
                       signature=test_models.SIGNATURE,
                       processing={**test_models.PROCESSING, "max_batch_size": 8}, metrics={})
    api = start_api(iso.env, iso.logdir)
    try:
        client = KilnClient(api.url, iso.create_key())
        jobs = [client.submit(name, slow_records(20, seed=i))["id"] for i in range(3)]
        worker = start_worker(iso.env, iso.logdir)  # started late: one claim finds several jobs
        try:
            for job_id in jobs:
                assert client.wait(job_id, timeout_seconds=60)["status"] == "succeeded"
        finally:
            worker.stop()
        scored = [tuple(int(n) for n in found) for found in re.findall(
            r"scored (\d+) rows of (\d+) job\(s\) in (\d+) batch", worker.log.read_text())]
        assert sum(rows for rows, _, _ in scored) >= 60
        assert max(rows for rows, _, _ in scored) > 8
        assert all(batches >= math.ceil(rows / 8) for rows, _, batches in scored), scored
    finally:
        api.stop()



def test_a_higher_priority_job_starts_before_lower_ones_queued_earlier(make_stack):
    """Jobs at priorities 0, 0, 5 queued while no worker runs, one job per claim: the message's
    own job starts first, then the drain takes the high-priority job before the other low one
    (a started job must not keep its rank and fill the next claims with nothing)."""
    iso = make_stack(KILN_TUNING__MAX_JOBS_PER_CLAIM="1", KILN_WORKER_CONCURRENCY="1")
    iso.add_digits()
    api = start_api(iso.env, iso.logdir)
    try:
        client = KilnClient(api.url, iso.create_key())
        first, low, high = (client.submit("digits", slow_records(1, seed=i), priority=p)["id"]
                            for i, p in enumerate((0, 0, 5)))
        worker = start_worker(iso.env, iso.logdir)
        try:
            done = {job_id: client.wait(job_id, timeout_seconds=60, poll_seconds=0.1)
                    for job_id in (first, low, high)}
        finally:
            worker.stop()
        assert {job["status"] for job in done.values()} == {"succeeded"}
        started = {job_id: datetime.fromisoformat(job["started_at"])
                   for job_id, job in done.items()}
        assert started[first] <= started[high] < started[low], started
    finally:
        api.stop()
