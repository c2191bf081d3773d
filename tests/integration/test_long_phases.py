"""Phases longer than their lease: validating, chunks and finalize each hold a heartbeat.

The worker runs on a slow disk (`tests.slowdisk`: file storage at ~1.5 MB/s in the worker's
processes), so that with a 1 s lease a small file's validation, chunks and finalize each take
longer than a lease, as a 15M-row file does on a fast disk or a large one on S3.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from sqlalchemy import select

from app.client import KilnClient
from app.orm import File, Job, JobChunk
from tests.integration.test_files import digits_rows, download, parse, submit, to_csv, to_jsonl, upload
from tests.integration.test_metrics import scrape, value
from tests.support import free_port, start_api_and_worker, wait_for

LEASE_SECONDS = 1.0
STALL_SECONDS = 6.0  # well above the slow disk's longest step between checkpoints (~2 s)
HUNG_SECONDS = 20.0  # how long the stalled part's write hangs
HELD = re.compile(rb"(validating|finalizing|chunk) (\S+) held its lease for ([\d.]+) s "
                  rb"\((\d+) renewals\)")


@pytest.fixture(scope="module")
def slow_stack(services, tmp_path_factory):
    from tests import support
    from tests.conftest import build_stack

    stack, name = build_stack(services, tmp_path_factory.mktemp("slowdisk"),
                              KILN_LEASE_SECONDS=str(LEASE_SECONDS), KILN_TUNING__HEARTBEAT_SECONDS="0.25",
                              KILN_RECONCILE_INTERVAL_SECONDS="0.5", KILN_TUNING__CHUNK_ROWS="4000",
                              KILN_STALL_SECONDS=str(STALL_SECONDS),
                              KILN_WORKER_METRICS_PORT=str(free_port()))
    stack.add_digits()
    trigger = tmp_path_factory.mktemp("stall") / "stall-next-part"
    api, worker = start_api_and_worker(stack.env, stack.logdir,
                                       worker_env={"SLOWDISK_BYTES_PER_SECOND": "1500000",
                                                   "SLOWDISK_STALL_TRIGGER": str(trigger),
                                                   "SLOWDISK_STALL_SECONDS": str(HUNG_SECONDS)},
                                       module="tests.slowdisk")
    client = KilnClient(api.url, stack.create_key())
    worker.stall_trigger = trigger
    yield stack, client, worker
    client.close()
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


def held_leases(worker, job_id: str) -> dict[str, list[float]]:
    """Seconds each phase of the job held its lease, from the worker's log."""
    held: dict[str, list[float]] = {}
    for phase, name, seconds, _ in HELD.findall(worker.log.read_bytes()):
        if name.decode().startswith(job_id):
            held.setdefault(phase.decode(), []).append(float(seconds))
    return held


def test_phases_longer_than_the_lease_keep_it_and_nothing_is_requeued(slow_stack):
    stack, client, worker = slow_stack
    rows = digits_rows(16000)
    job = submit(client, upload(client, "big.csv", to_csv(rows))["id"])
    done = client.wait(job["id"], timeout_seconds=240)
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": 16000, "completed": 16000, "failed": 0}
    out = parse("csv", download(client, job["id"]))
    assert [r["custom_id"] for r in out] == [r["custom_id"] for r in rows]

    held = wait_for(lambda: (h := held_leases(worker, job["id"])).get("finalizing") and h,
                    timeout=10, message="the finalize log line")
    assert len(held["validating"]) == 1 and held["validating"][0] > LEASE_SECONDS, held
    assert len(held["chunk"]) == 4 and max(held["chunk"]) > LEASE_SECONDS, held
    assert len(held["finalizing"]) == 1 and held["finalizing"][0] > 2 * LEASE_SECONDS, held
    with stack.sessions() as session:  # one claim per phase: the reconciler took nothing back
        assert session.get(Job, job["id"]).attempt == 2  # validating, then finalizing
        attempts = session.scalars(select(JobChunk.attempt).where(JobChunk.job_id == job["id"]))
        assert list(attempts) == [1, 1, 1, 1]
    assert b"lost its lease" not in worker.log.read_bytes()


def test_a_worker_killed_in_finalize_is_replaced_and_the_joined_results_are_kept(slow_stack):
    stack, client, worker = slow_stack
    rows = digits_rows(9000)
    for row in rows[1::2]:
        row["p10"] = "oops"  # half the rows fail, so that the errors file takes a while too
    job = submit(client, upload(client, "half-bad.jsonl", to_jsonl(rows))["id"])
    joined = f"finalizing {job['id']}: joined results".encode()
    wait_for(lambda: joined in worker.log.read_bytes(), timeout=180, interval=0.02,
             message="the results file joined")
    killed = worker.children()
    for child in killed:
        child.send_signal(signal.SIGKILL)
    started = time.monotonic()
    done = client.wait(job["id"], timeout_seconds=120)
    assert done["status"] == "succeeded", done
    assert time.monotonic() - started > LEASE_SECONDS  # taken back only once the lease expired
    assert done["request_counts"] == {"total": 9000, "completed": 4500, "failed": 4500}
    out = parse("jsonl", download(client, job["id"]))
    assert [r["row_index"] for r in out] == list(range(0, 9000, 2))
    errors = parse("jsonl", download(client, job["id"], "errors"))
    assert [e["row_index"] for e in errors] == list(range(1, 9000, 2))
    with stack.sessions() as session:
        record = session.get(Job, job["id"])
        assert record.attempt == 3  # validating, the killed finalize, the one that finished
        output = session.get(File, record.output_file_id)
        error_file = session.get(File, record.error_file_id)
        # the killed attempt had recorded its results file: the next one kept it, joined only
        # the errors, and one file of each kind was registered
        assert output.uri.endswith("/results.a2.jsonl") and output.row_count == 4500
        assert error_file.uri.endswith("/errors.a3.jsonl") and error_file.row_count == 4500
        registered = session.scalars(select(File.purpose).where(
            File.filename.like(f"{job['id']}-%"))).all()
        assert sorted(registered) == ["errors", "output"]


def test_a_stalled_chunk_lets_its_lease_go_and_another_attempt_finishes_the_job(slow_stack):
    """A chunk whose write hangs (its heartbeat thread still alive) stops renewing after
    KILN_STALL_SECONDS: another attempt scores it, and the job ends long before the hang does.
    The stalled attempt, once it wakes, writes nothing the job counts."""
    stack, client, worker = slow_stack
    rows = digits_rows(8000)
    worker.stall_trigger.touch()
    started = time.monotonic()
    job = submit(client, upload(client, "stalls.csv", to_csv(rows))["id"])
    done = client.wait(job["id"], timeout_seconds=120)
    took = time.monotonic() - started
    assert done["status"] == "succeeded", done
    assert not worker.stall_trigger.exists()  # a part's open took the trigger: one chunk hung
    assert took < HUNG_SECONDS, f"the job waited out the hang ({took:.1f} s)"
    assert done["request_counts"] == {"total": 8000, "completed": 8000, "failed": 0}
    stalled = re.findall(rf"chunk {job['id']}/(\d+) stalled: no progress for ([\d.]+) s".encode(),
                         worker.log.read_bytes())
    assert len(stalled) == 1, stalled
    index, idle = int(stalled[0][0]), float(stalled[0][1])
    assert STALL_SECONDS <= idle < STALL_SECONDS + 2, idle  # logged to 0.1 s: 6.04 reads 6.0
    with stack.sessions() as session:
        attempts = dict(session.execute(select(JobChunk.index, JobChunk.attempt)
                                        .where(JobChunk.job_id == job["id"])).all())
    assert attempts == {i: (2 if i == index else 1) for i in range(2)}, attempts
    metrics_url = f"http://127.0.0.1:{stack.env['KILN_WORKER_METRICS_PORT']}/metrics"
    assert value(scrape(metrics_url), "kiln_phases_stalled_total", phase="chunk") == 1

    # the hung attempt wakes, finds its lease gone, and stops: still one result per input
    woke = f"chunk {job['id']}/{index} lost its lease".encode()
    wait_for(lambda: woke in worker.log.read_bytes(), timeout=HUNG_SECONDS + 30,
             message="the stalled attempt to wake and stop")
    assert client.job(job["id"])["request_counts"] == done["request_counts"]
    out = parse("csv", download(client, job["id"]))
    assert [r["custom_id"] for r in out] == [r["custom_id"] for r in rows]
