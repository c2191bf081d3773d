"""Bulk file jobs on their fast path: a gzip input decoded once into a staging copy the chunks
read at their offsets, and tabular chunks scored as Arrow tables into Arrow parts, with the
guarantees of any file job (bad rows fail alone, output in input order)."""

import csv
import gzip
import io
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from app.client import KilnClient
from tests import support
from tests.countingdisk import bytes_read
from tests.integration.test_files import digits_rows, to_csv
from tests.support import start_api_and_worker

ROWS, CHUNK_ROWS = 30_000, 2_500


@pytest.fixture(scope="module")
def counted_stack(services, tmp_path_factory):
    from tests.conftest import build_stack

    stack, name = build_stack(services, tmp_path_factory.mktemp("bulk"),
                              KILN_TUNING__CHUNK_ROWS=str(CHUNK_ROWS),
                              KILN_TUNING__FILE_BATCH_ROWS="1000")
    stack.add_digits()
    log = str(stack.logdir / f"reads-{uuid.uuid4().hex[:6]}.tsv")
    api, worker = start_api_and_worker(stack.env, stack.logdir, timeout=120,
                                       worker_env={"COUNTINGDISK_LOG": log},
                                       module="tests.countingdisk")
    client = KilnClient(api.url, stack.create_key())
    yield stack, client, log
    client.close()
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


def test_a_gzip_file_is_decoded_once_and_its_rows_come_back_in_order(counted_stack):
    stack, client, log = counted_stack
    rows = digits_rows(ROWS)
    rows[7_777]["p3"] = "oops"  # fails alone, in the middle of a chunk's Arrow batch
    decoded = to_csv(rows)
    packed = gzip.compress(decoded)
    uploaded = client.http.post("/v1/files", files={"file": ("big.csv.gz", packed)})
    assert uploaded.status_code == 201, uploaded.text
    job = client.http.post("/v1/jobs", json={"model": "digits", "output_format": "csv",
                                             "input_file": uploaded.json()["id"]}).json()
    done = client.wait(job["id"], timeout_seconds=240)
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": ROWS, "completed": ROWS - 1, "failed": 1}

    out = list(csv.DictReader(io.StringIO(b"".join(client.iter_results(job["id"])).decode())))
    expected = [i for i in range(ROWS) if i != 7_777]
    assert [int(r["row_index"]) for r in out] == expected
    assert [r["custom_id"] for r in out] == [rows[i]["custom_id"] for i in expected]
    assert sum(int(r["label"]) == rows[int(r["row_index"])]["truth"] for r in out) / len(out) > 0.95
    assert abs(sum(float(out[0][f"prob_{k}"]) for k in range(10)) - 1) < 1e-4
    errors = b"".join(client.iter_results(job["id"], kind="errors")).decode()
    assert "7777" in errors and "p3" in errors

    with stack.sessions() as session:
        source = session.execute(text("SELECT uri FROM files WHERE id = :id"),
                                 {"id": uploaded.json()["id"]}).scalar_one()
        staged, parts = session.execute(text(
            "SELECT options->>'decoded_uri', array_agg(c.output_uri) FROM jobs j "
            "JOIN job_chunks c ON c.job_id = j.id WHERE j.id = :id GROUP BY j.id"),
            {"id": job["id"]}).one()
    assert len(parts) == ROWS // CHUNK_ROWS and all(p.endswith(".arrow") for p in parts)
    read = bytes_read(log)
    compressed = read[path_of(source)]
    staged_read = read[path_of(staged)]
    # Planning decompresses the file once; the header (a few reads of the first block) is all
    # that is read again. Decompressing from the start for each chunk would read ~6x the file.
    assert len(packed) <= compressed < 1.5 * len(packed), (compressed, len(packed))
    # Each chunk reads its own byte range of the staging copy (and the header line) once.
    assert len(decoded) <= staged_read < 1.05 * len(decoded), (staged_read, len(decoded))
    assert not Path(path_of(staged)).exists()  # the staging copy goes when the job is joined


def path_of(uri: str) -> str:
    return uri.removeprefix("file://")
