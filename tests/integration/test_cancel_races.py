"""A cancel that races a chunk's end, and cancelling jobs left with no chunk running: each still
ends `cancelled` (found by a parallel suite run: a batch stayed `cancelling` until its window).

The racing states are made by hand on a finished job, in Postgres (the record), so each test is
deterministic; the API and the worker's reconciler are the real processes."""

from __future__ import annotations

import threading

import psycopg
import pytest

from app.client import KilnClient
from tests import support
from tests.conftest import build_stack
from tests.integration.test_files import digits_rows, submit, to_csv, upload
from tests.support import start_api_and_worker, wait_for


@pytest.fixture(scope="module")
def races(services, tmp_path_factory):
    """An isolated stack (chunks of 20 rows) with the digits model, an API and a worker."""
    stack, name = build_stack(services, tmp_path_factory.mktemp("races"),
                              KILN_TUNING__CHUNK_ROWS="20")
    stack.add_digits()
    api, worker = start_api_and_worker(stack.env, stack.logdir)
    client = KilnClient(api.url, stack.create_key())
    yield stack, client
    client.close()
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


def finished_job(client, rows: int) -> str:
    """A file job that ran to the end, in chunks of 20 rows."""
    source = upload(client, "race.csv", to_csv(digits_rows(rows)))
    job = submit(client, source["id"])
    assert client.wait(job["id"], timeout_seconds=60)["status"] == "succeeded"
    return job["id"]


def admin(stack) -> psycopg.Connection:
    return psycopg.connect(stack.settings.database_url.replace("postgresql+psycopg://",
                                                               "postgresql://"))


def test_a_cancel_that_races_the_last_running_chunks_commit_ends_the_job(races):
    """The cancel counts running chunks and moves the job in one locked step: the chunk that
    ends in between no longer leaves the job `cancelling` with nobody to end it."""
    stack, client = races
    job_id = finished_job(client, 20)
    with admin(stack) as conn:  # back to running, its one chunk being scored
        conn.execute("UPDATE jobs SET status = 'running', finished_at = NULL WHERE id = %s",
                     (job_id,))
        conn.execute("UPDATE job_chunks SET status = 'running', lease_expires_at = now() + "
                     "interval '1 minute' WHERE job_id = %s", (job_id,))
    with admin(stack) as chunk_commit:  # the chunk's commit, in flight (COMMIT_CHUNK's order)
        chunk_commit.execute("UPDATE job_chunks SET status = 'succeeded', lease_expires_at = "
                             "NULL WHERE job_id = %s", (job_id,))
        chunk_commit.execute("UPDATE jobs SET completed_count = completed_count WHERE id = %s",
                             (job_id,))
        answers = []
        cancel = threading.Thread(target=lambda: answers.append(client.cancel(job_id)))
        cancel.start()
        cancel.join(1.5)
        assert cancel.is_alive(), "the cancel did not wait for the chunk's commit"
    cancel.join(30)  # the chunk's commit is in: its row lock is gone
    assert answers and answers[0]["status"] == "cancelled", answers
    assert client.job(job_id)["status"] == "cancelled"


@pytest.mark.parametrize("chunk", ["queued", "running, its worker dead"])
def test_a_cancelling_job_with_no_chunk_running_is_ended_by_the_reconciler(races, chunk):
    """No chunk of a cancelling job starts, and a chunk whose worker died runs no more: the
    reconciler's pass ends such a job `cancelled`, with its chunks."""
    stack, client = races
    job_id = finished_job(client, 40)
    left = "'queued', lease_expires_at = NULL" if chunk == "queued" else \
        "'running', lease_expires_at = now() - interval '1 second'"
    with admin(stack) as conn:
        conn.execute("UPDATE jobs SET status = 'cancelling', finished_at = NULL, "
                     "published_at = now() - interval '1 minute' WHERE id = %s", (job_id,))
        conn.execute(f"UPDATE job_chunks SET status = {left} WHERE job_id = %s AND index = 1",
                     (job_id,))
    wait_for(lambda: client.job(job_id)["status"] == "cancelled", timeout=30,
             message="the reconciler to end the cancelling job")
    with admin(stack) as conn:
        statuses = dict(conn.execute("SELECT index, status FROM job_chunks WHERE job_id = %s",
                                     (job_id,)).fetchall())
    assert statuses == {0: "succeeded", 1: "cancelled"}
