"""Chaos: a job that got a 202 always ends, with exactly one result or error per input row.

On its own embedded Postgres and Redis, the test submits a mix of inline and file jobs with
webhooks to a local receiver, and meanwhile SIGKILLs worker children and parents, restarts Redis
and Postgres and SIGKILLs the API. It then checks, and prints as a table:

1. every job that got a 202 reaches a terminal state (here: succeeded) within a bound;
2. every input row has exactly one result or one error row: none lost, none duplicated;
3. every terminal job's event arrived at the receiver, all signatures valid, one `webhook-id`
   per event however often it was retried;
4. no job or chunk stays `running` with an expired lease longer than the reconciler's period;
5. the API answered 5xx only while Postgres was down, never afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from app.services.models import register_model
from app.storage import Storage
from tests import models as test_models
from tests.chaos.checks import LeaseWatch, query, render_table, tally_rows
from tests.chaos.receiver import WebhookReceiver
from tests.chaos.stack import ChaosStack
from tests.chaos.traffic import HttpLog, plan_jobs, probe, submit
from tests.support import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

RECONCILE_SECONDS = 0.5
SETTINGS = {
    "KILN_LEASE_SECONDS": "2", "KILN_RECONCILE_INTERVAL_SECONDS": str(RECONCILE_SECONDS),
    "KILN_QUEUED_GRACE_SECONDS": "2", "KILN_TUNING__CHUNK_ROWS": "400", "KILN_TUNING__BATCH_SIZE": "32",
    "KILN_MAX_ATTEMPTS": "10", "KILN_WORKER_CONCURRENCY": "2", "KILN_API_WORKERS": "2",
    "KILN_SOFT_SHUTDOWN_SECONDS": "1", "KILN_LOG_LEVEL": "INFO",
    "KILN_SECRET_KEY": "chaos-test-secret-key", "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
    "KILN_WEBHOOK_TIMEOUT_SECONDS": "2",
    "KILN_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0,1,1,2,2,2,3,3,3,3",
}
TENANTS = ["alpha", "beta", "gamma"]
INLINE_JOBS, FILE_JOBS = 200, 40
SUBMIT_SPREAD_SECONDS = 55.0
SUBMITTERS = 4
GIVE_UP_SUBMITTING_SECONDS = 90.0
TERMINAL_BOUND_SECONDS = 90.0     # from a job's creation to its terminal state
LEASE_SLACK_SECONDS = 4.5         # scheduling slack on a loaded 2-core machine (bound 5.0 s)
POSTGRES_GRACE_SECONDS = 2.0      # 5xx allowed this long after Postgres is back
WEBHOOK_BOUND_SECONDS = 60.0      # after the last job ended (a killed dispatcher's lease is 32 s)

# Seconds after the first submission, and the fault injected then.
SCHEDULE = [
    (2.0, "child"), (4.5, "child"), (7.0, "redis"), (12.0, "child"), (15.0, "child"),
    (18.0, "postgres"), (24.0, "child"), (27.0, "parent 0"), (33.0, "api"), (38.0, "child"),
    (41.0, "child"), (44.0, "parent 1"), (47.0, "child"), (50.0, "child"), (53.0, "child"),
]
TERMINAL = ("succeeded", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def chaos_stack(request):
    # Not under pytest's tmp folder: pytest keeps /tmp/pytest-of-USER at mode 700, which the
    # `pgserver` user (Postgres as root) cannot traverse.
    home = Path(tempfile.mkdtemp(prefix="kiln-chaos-"))
    stack = ChaosStack(home, **SETTINGS)
    try:
        yield stack.start()
    finally:
        stack.stop()
        if not request.session.testsfailed and not os.environ.get("KILN_CHAOS_KEEP"):
            shutil.rmtree(home, ignore_errors=True)  # kept when a test failed, for its logs


def inject(stack: ChaosStack, fault: str) -> None:
    if fault == "child":
        stack.kill_worker_child()
    elif fault.startswith("parent"):
        stack.kill_worker_parent(int(fault.split()[1]))
    elif fault == "api":
        stack.kill_api()
    elif fault == "redis":
        stack.restart_redis(down_seconds=2.0)
    elif fault == "postgres":
        stack.restart_postgres(down_seconds=3.0)


def run_schedule(stack: ChaosStack, started: float, errors: list[BaseException]) -> None:
    try:
        for at, fault in SCHEDULE:
            time.sleep(max(0.0, started + at - time.monotonic()))
            inject(stack, fault)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def wait_terminal(stack: ChaosStack, job_ids: list[str], patience_seconds: float) -> dict:
    """Poll Postgres until every job is terminal; returns id -> (status, attempt, age)."""
    deadline = time.monotonic() + patience_seconds
    statement = text("""
        SELECT id::text AS id, status, attempt,
               extract(epoch FROM coalesce(finished_at, now()) - created_at) AS age
        FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))""")
    while True:
        rows = {r.id: r for r in query(stack, statement, {"ids": job_ids})}
        if all(r.status in TERMINAL for r in rows.values()) and len(rows) == len(job_ids):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def wait_webhooks(receiver: WebhookReceiver, expected: dict[tuple[str, str], str],
                  patience_seconds: float) -> set[tuple[str, str]]:
    deadline = time.monotonic() + patience_seconds
    while True:
        got = {(d.job_id, d.event) for d in receiver.accepted() if d.valid}
        missing = set(expected) - got
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def test_every_accepted_job_ends_with_exactly_one_result_per_input(chaos_stack, capsys):
    stack = chaos_stack
    receiver = WebhookReceiver().start()
    log = HttpLog()
    clients = {t: httpx.Client(base_url=stack.api.url, timeout=30,
                               headers={"Authorization": f"Bearer {stack.create_key(t)}"})
               for t in TENANTS}
    for tenant, http in clients.items():
        rotated = http.post("/v1/webhooks/job-secret/rotate")
        assert rotated.status_code == 200, rotated.text
        receiver.secrets[tenant] = rotated.json()["secret"]
    planned = plan_jobs(TENANTS, receiver.url, inline=INLINE_JOBS, files=FILE_JOBS,
                        spread_seconds=SUBMIT_SPREAD_SECONDS)

    watch = LeaseWatch(stack)
    watch.start()
    stopping = threading.Event()
    prober = threading.Thread(target=probe, args=(log, clients[TENANTS[0]], stopping, 0.2),
                              daemon=True)
    prober.start()
    started = stack.t0 = time.monotonic()
    chaos_errors: list[BaseException] = []
    chaos = threading.Thread(target=run_schedule, args=(stack, started, chaos_errors), daemon=True)
    chaos.start()

    def paced(job):
        time.sleep(max(0.0, started + job.at_seconds - time.monotonic()))
        return submit(log, clients[job.tenant], job, give_up_seconds=GIVE_UP_SUBMITTING_SECONDS)

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        submissions = list(pool.map(paced, planned))
    chaos.join()
    submitted_by = time.monotonic() - started
    accepted = [s for s in submissions if s.job_id]
    ids = [s.job_id for s in accepted]
    jobs = wait_terminal(stack, ids, TERMINAL_BOUND_SECONDS)
    drained_by = time.monotonic() - started
    expected_events = {(r.id, f"job.{r.status}"): r.status for r in jobs.values()
                       if r.status in TERMINAL}
    missing_events = wait_webhooks(receiver, expected_events, WEBHOOK_BOUND_SECONDS)
    webhooks_by = time.monotonic() - started
    time.sleep(2 * RECONCILE_SECONDS + LEASE_SLACK_SECONDS)
    stopping.set()
    watch.stopping.set()
    prober.join()
    watch.join()

    # after the chaos: what the API says about each job, and the rows it stored
    api_status = {}
    for s in accepted:
        answer = log.send(clients[s.planned.tenant], "GET", f"/v1/jobs/{s.job_id}")
        api_status[s.job_id] = answer.json()["status"] if answer is not None and \
            answer.status_code == 200 else f"answered {answer.status_code if answer else None}"
    rows = tally_rows(stack, log, clients, accepted)
    db_jobs = query(stack, text("SELECT count(*) FROM jobs"))[0][0]
    stale_at_end = query(stack, text("SELECT count(*) FROM jobs WHERE status NOT IN "
                                     "('succeeded', 'failed', 'cancelled', 'expired')"))[0][0]
    chunks_rerun, max_chunk_attempt = query(stack, text(
        "SELECT count(*) FILTER (WHERE attempt > 1), coalesce(max(attempt), 0) FROM job_chunks"))[0]
    inline_rerun = query(stack, text(
        "SELECT count(*) FROM jobs WHERE kind = 'inline' AND attempt > 1"))[0][0]
    receiver.stop()
    for http in clients.values():
        http.close()

    # 1. terminal within the bound, all succeeded
    not_terminal = [i for i in ids if i not in jobs or jobs[i].status not in TERMINAL]
    not_succeeded = {i: jobs[i].status for i in ids if i in jobs and jobs[i].status != "succeeded"}
    slowest = max((float(r.age) for r in jobs.values()), default=0.0)
    api_disagrees = {i: st for i, st in api_status.items() if i in jobs and st != jobs[i].status}
    # 3. webhooks
    deliveries = receiver.deliveries
    invalid = [d for d in deliveries if not d.valid]
    ids_per_event = receiver.ids_by_event()
    several_ids = {k: sorted(v) for k, v in ids_per_event.items() if len(v) > 1}
    unexpected_events = sorted(set(ids_per_event) - set(expected_events))
    retried = sum(1 for d in deliveries if d.answered == 503)
    redelivered = len([d for d in deliveries if d.answered < 300]) - len(
        {d.webhook_id for d in deliveries if d.answered < 300})
    # 4. leases
    lease_bound = RECONCILE_SECONDS + LEASE_SLACK_SECONDS
    overdue = watch.over(lease_bound)
    # 5. 5xx only while Postgres was down
    postgres = stack.outage("postgres")
    calls = log.snapshot()
    window = (postgres.down_at, (postgres.up_at or time.monotonic()) + POSTGRES_GRACE_SECONDS) \
        if postgres else (0.0, 0.0)
    in_window = [c for c in calls if c.ended >= window[0] and c.started <= window[1]]
    five_in = [c for c in in_window if c.status and c.status >= 500]
    five_out = [c for c in calls if c.status and c.status >= 500 and c not in five_in]
    no_answer = [c for c in calls if c.status is None]
    not_503 = [c for c in five_in if c.status != 503]
    exited = stack.exited_on_their_own()
    orphans_left = len(stack.orphans_left())
    # Celery reconnects by itself after Redis comes back: each worker alive then took a task
    marks = stack.logs_at_redis_restart
    recovered = stack.took_tasks_since_redis_restart()

    inline = sum(1 for p in planned if p.kind == "inline")
    restarts = Counter(o.what for o in stack.outages)
    table = render_table(f"Kiln chaos run: submitted by {submitted_by:.0f}s, all terminal by "
                         f"{drained_by:.0f}s, webhooks by {webhooks_by:.0f}s", [
        ("jobs", "submitted (inline / file)", f"{len(planned)} ({inline} / {len(planned) - inline})", None),
        ("jobs", "got a 202 (after retries)", f"{len(accepted)}", len(accepted) == len(planned)),
        ("jobs", "in the database", f"{db_jobs}", db_jobs == len(accepted)),
        ("1 jobs", "terminal", f"{len(ids) - len(not_terminal)}", not not_terminal),
        ("1 jobs", "succeeded", f"{len(ids) - len(not_terminal) - len(not_succeeded)}", not not_succeeded),
        ("1 jobs", f"slowest to terminal (bound {TERMINAL_BOUND_SECONDS:.0f}s)", f"{slowest:.1f}s",
         slowest <= TERMINAL_BOUND_SECONDS),
        ("1 jobs", "API status differs from DB", f"{len(api_disagrees)}", not api_disagrees),
        ("1 jobs", "inline jobs / chunks run more than once", f"{inline_rerun} / {chunks_rerun}",
         None),
        ("1 jobs", "max job / chunk attempt",
         f"{max((r.attempt for r in jobs.values()), default=0)} / {max_chunk_attempt}", None),
        ("2 rows", "expected", f"{rows.expected}", None),
        ("2 rows", "results / errors", f"{rows.results} / {rows.errors}", None),
        ("2 rows", "errors planted (bad rows)", f"{rows.planted_errors}", rows.unexpected_errors == 0),
        ("2 rows", "lost", f"{rows.lost}", rows.lost == 0),
        ("2 rows", "duplicated", f"{rows.duplicates}", rows.duplicates == 0),
        ("faults", "SIGKILL worker child (busy)", f"{stack.kills['worker child']} ({stack.busy_kills})", None),
        ("faults", "SIGKILL worker parent", f"{stack.kills['worker parent']}", None),
        ("faults", "orphaned children (of killed parents) left", f"{orphans_left}", None),
        ("faults", "SIGKILL api", f"{stack.kills['api']}", None),
        ("faults", "restart redis / postgres", f"{restarts['redis']} / {restarts['postgres']}",
         None),
        ("faults", "worker processes that exited by themselves", f"{len(exited)}", not exited),
        ("faults", "workers taking tasks after redis restart", f"{len(recovered)}/{len(marks)}",
         len(recovered) == len(marks) > 0),
        ("3 webhooks", "deliveries received (503 on purpose)", f"{len(deliveries)} ({retried})", None),
        ("3 webhooks", "redelivered after a 2xx", f"{redelivered}", None),
        ("3 webhooks", "terminal jobs without a delivery", f"{len(missing_events)}", not missing_events),
        ("3 webhooks", "invalid signatures", f"{len(invalid)}", not invalid),
        ("3 webhooks", "events with >1 webhook-id", f"{len(several_ids)}", not several_ids),
        ("3 webhooks", "events not matching the job", f"{len(unexpected_events)}", not unexpected_events),
        ("4 leases", f"worst overdue running lease (bound {lease_bound:.1f}s)",
         f"{watch.worst[0]:.2f}s", not overdue),
        ("4 leases", "expired leases seen (jobs and chunks)", f"{len(watch.late)}", None),
        ("4 leases", "samples / jobs not ended at the end", f"{watch.samples} / {stale_at_end}",
         stale_at_end == 0),
        ("5 http", "requests / without an answer", f"{len(calls)} / {len(no_answer)}", None),
        ("5 http", "5xx while postgres was down (+grace)", f"{len(five_in)} of {len(in_window)}", None),
        ("5 http", "of which not 503 (a 500 is a bug)", f"{len(not_503)}", not not_503),
        ("5 http", "5xx at any other time", f"{len(five_out)}", not five_out),
    ])
    timeline = "\n".join(f"  {t:6.1f}s  {what}" for t, what in stack.timeline)
    if watch.worst[1]:
        timeline += f"\nworst overdue lease: {watch.worst[1]}, {watch.worst[0]:.2f}s"
    with capsys.disabled():
        print(f"\n{table}\nfaults:\n{timeline}\nlogs: {stack.logdir}")

    assert not chaos_errors, chaos_errors
    assert stack.kills["worker child"] + stack.kills["worker parent"] >= 10
    assert [s.failure for s in submissions if s.failure] == []
    assert db_jobs == len(accepted), "a retried submission created a second job"
    assert not not_terminal, f"jobs not terminal within {TERMINAL_BOUND_SECONDS}s: {not_terminal}"
    assert not not_succeeded, f"jobs that did not succeed: {not_succeeded}"
    assert slowest <= TERMINAL_BOUND_SECONDS
    assert not api_disagrees, api_disagrees
    assert not rows.problems, rows.problems[:20]
    assert not exited, f"worker processes exited by themselves: {exited}; see {stack.logdir}"
    assert len(recovered) == len(marks) > 0, "a worker took no task after Redis came back"
    assert not missing_events, f"no webhook received for {sorted(missing_events)[:10]}"
    assert not invalid, invalid[:5]
    assert not several_ids, several_ids
    assert not unexpected_events, unexpected_events
    watch.check_sampled()
    assert not overdue, f"running with a lease expired over {lease_bound}s: {overdue}"
    assert stale_at_end == 0
    assert not five_out, five_out[:20]
    assert not not_503, f"the API answered 5xx other than 503 while Postgres was down: {not_503[:20]}"


def test_a_worker_in_the_middle_of_a_task_survives_a_redis_restart(chaos_stack):
    """The case the chaos run found by chance, made certain: a worker holding an unacknowledged
    message (a long job running, a free slot polling Redis) when Redis restarts. With celery and
    kombu 5.7 as they are, it exited ("Unrecoverable error: AttributeError 'NoneType' object has
    no attribute 'hostname'"); `workers.celery_app.survive_broker_restarts` keeps it alive."""
    stack = chaos_stack
    with stack.sessions.begin() as session:
        register_model(session, Storage(stack.settings.resolved_storage_url), name="slow",
                       artifact=test_models.slow_classifier(1024, 8),
                       signature=test_models.SIGNATURE, processing=test_models.PROCESSING,
                       metrics={})
    rng = np.random.default_rng(5)
    records = [{c: int(v) for c, v in zip(test_models.COLUMNS, row)}
               for row in rng.integers(0, 17, size=(6000, 64))]
    http = httpx.Client(base_url=stack.api.url, timeout=30,
                        headers={"Authorization": f"Bearer {stack.create_key('broker')}"})
    job = http.post("/v1/jobs", json={"model": "slow", "inputs": records}).json()
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["request_counts"]["completed"] > 0,
             timeout=60, message="the slow job's first batch")
    workers = stack.live_workers()
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    stack.restart_redis(down_seconds=1.0)
    marks = stack.logs_at_redis_restart
    wait_for(lambda: all(b"Connected to" in w.log.read_bytes()[offset:] for w, offset in marks)
             or any(w.process.poll() is not None for w in workers),
             timeout=30, message="the workers to reconnect")
    assert [w.process.pid for w in workers if w.process.poll() is not None] == [], \
        "a worker exited when Redis restarted: " + "\n".join(w.tail(20) for w in workers)
    def ended():
        found = http.get(f"/v1/jobs/{job['id']}").json()
        return found if found["status"] in TERMINAL else None

    done = wait_for(ended, timeout=120, message="the slow job to end")
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": 6000, "completed": 6000, "failed": 0}
    indexes = query(stack, text("SELECT index FROM job_results WHERE job_id = :id"),
                    {"id": job["id"]})
    assert sorted(i for (i,) in indexes) == list(range(6000))
    after = http.post("/v1/jobs", json={"model": "digits", "inputs": records[:5]}).json()
    assert wait_for(lambda: http.get(f"/v1/jobs/{after['id']}").json()["status"] == "succeeded",
                    timeout=30, message="a job submitted after the restart")
    http.close()
