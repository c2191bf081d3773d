"""`KILN_STORAGE_URL=s3://…`: models, uploads, parts and results in S3 through fsspec/s3fs.

The S3 endpoint is moto's standalone server (a real HTTP server speaking the S3 API), started
here, since no MinIO or AWS is reachable from this machine.
"""

import subprocess
import sys
from pathlib import Path

import fsspec
import httpx
import pytest

from app.client import KilnClient
from tests import support
from tests.conftest import build_stack
from tests.integration.test_files import digits_rows, parse, to_csv

BUCKET = "kiln-test"


@pytest.fixture(scope="module")
def s3(services, tmp_path_factory):
    port = support.free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    support.wait_for(lambda: _up(endpoint), timeout=30, message="the S3 endpoint")
    aws = {"AWS_ACCESS_KEY_ID": "kiln", "AWS_SECRET_ACCESS_KEY": "kiln-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}
    fs = fsspec.filesystem("s3", key=aws["AWS_ACCESS_KEY_ID"], secret=aws["AWS_SECRET_ACCESS_KEY"],
                           client_kwargs={"endpoint_url": endpoint})
    fs.mkdir(BUCKET)
    stack, name = build_stack(services, tmp_path_factory.mktemp("s3"),
                              KILN_STORAGE_URL=f"s3://{BUCKET}/kiln", KILN_TUNING__CHUNK_ROWS="300", **aws)
    stack.kiln("models", "add-demo", "digits")
    api, worker = support.start_api_and_worker(stack.env, stack.logdir)
    yield stack, api, fs
    worker.stop()
    api.stop()
    moto.terminate()
    moto.wait(timeout=10)
    support.drop_database(services.admin_url, name)


def _up(endpoint: str) -> bool:
    try:
        return httpx.get(endpoint, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def test_files_models_and_results_live_in_s3(s3):
    stack, api, fs = s3
    assert fs.glob(f"{BUCKET}/kiln/models/builtin/digits/*/*.onnx"), "the model artifact is in S3"
    kiln = KilnClient(api.url, stack.create_key())
    rows = digits_rows(1000)
    rows[10]["p4"] = "bad"
    data = to_csv(rows, gz=True)
    meta = kiln.http.post("/v1/files", files={"file": ("d.csv.gz", data)}).json()
    stored = [p for p in fs.find(f"{BUCKET}/kiln/files") if p.endswith(meta["id"])]
    assert len(stored) == 1 and fs.size(stored[0]) == len(data)
    job = kiln.submit_file("digits", meta["id"], output_format="parquet", keep_columns=["truth"])
    done = kiln.wait(job["id"], timeout_seconds=120)
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": 1000, "completed": 999, "failed": 1}
    out = parse("parquet", b"".join(kiln.iter_results(job["id"])))
    assert [r["custom_id"] for r in out] == [r["custom_id"] for r in rows if r["custom_id"] != "img-00010"]
    assert sum(r["label"] == r["truth"] for r in out) / len(out) >= 0.95
    assert fs.glob(f"{BUCKET}/kiln/jobs/{job['id']}/parts/*"), "chunk parts are in S3"
    # a CSV results file joined by reference over S3 objects; deleting the job removes every
    # object under the job's prefix
    csv_job = kiln.submit_file("digits", meta["id"], output_format="csv")
    assert kiln.wait(csv_job["id"], timeout_seconds=120)["status"] == "succeeded"
    joined = b"".join(kiln.iter_results(csv_job["id"]))
    assert [r["custom_id"] for r in parse("csv", joined)] == [r["custom_id"] for r in out]
    assert fs.glob(f"{BUCKET}/kiln/jobs/{csv_job['id']}/results.*.joined.json")
    assert kiln.http.delete(f"/v1/jobs/{csv_job['id']}").status_code == 200
    fs.invalidate_cache()
    assert fs.find(f"{BUCKET}/kiln/jobs/{csv_job['id']}") == []
    assert kiln.http.get(f"/v1/files/{meta['id']}/content").content == data
    assert kiln.http.delete(f"/v1/files/{meta['id']}").status_code == 204
    fs.invalidate_cache()
    assert not fs.exists(stored[0])
