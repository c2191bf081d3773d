"""Journey 2: upload a file, watch progress, download results joined to the input."""

import csv
import gzip
import io
import uuid

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.client import KilnClient
from tests.support import start_api, start_api_and_worker
from workers.demo_models import DIGITS_COLUMNS, digits_split

PROBLEM = "application/problem+json"


def digits_rows(n: int, start: int = 0):
    x_train, x_test, y_train, y_test = digits_split()
    import numpy as np
    x = np.concatenate([x_test, x_train])
    y = np.concatenate([y_test, y_train])
    rows = []
    for i in range(start, start + n):
        j = i % len(x)
        row = {"custom_id": f"img-{i:05d}", "truth": int(y[j])}
        row.update({c: int(v) for c, v in zip(DIGITS_COLUMNS, x[j])})
        rows.append(row)
    return rows


def to_csv(rows, gz=False) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = out.getvalue().encode()
    return gzip.compress(data) if gz else data


def to_jsonl(rows, gz=False) -> bytes:
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    return gzip.compress(data) if gz else data


def to_parquet(rows) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def parse(fmt: str, data: bytes) -> list[dict]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode())))
    if fmt == "jsonl":
        return [orjson.loads(line) for line in data.splitlines()]
    return pq.read_table(io.BytesIO(data)).to_pylist()


@pytest.fixture(scope="module")
def file_stack(services, tmp_path_factory):
    from tests.conftest import build_stack
    from tests import support

    stack, name = build_stack(services, tmp_path_factory.mktemp("files"),
                              KILN_TUNING__CHUNK_ROWS="400", KILN_TUNING__BATCH_SIZE="128")
    stack.add_digits()
    api, worker = start_api_and_worker(stack.env, stack.logdir)
    yield stack, api, worker
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


@pytest.fixture
def kiln(file_stack):
    stack, api, _ = file_stack
    client = KilnClient(api.url, stack.create_key())
    yield client
    client.close()


def upload(kiln, name: str, data: bytes, **fields) -> dict:
    response = kiln.http.post("/v1/files", files={"file": (name, data)}, data=fields)
    assert response.status_code == 201, response.text
    return response.json()


def submit(kiln, file_id: str, **options) -> dict:
    response = kiln.http.post("/v1/jobs", json={"model": "digits", "input_file": file_id, **options})
    assert response.status_code == 202, response.text
    return response.json()


def download(kiln, job_id: str, what="results", fmt=None) -> bytes:
    params = {"format": fmt} if fmt else {}
    response = kiln.http.get(f"/v1/jobs/{job_id}/{what}", params=params)
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize("name, encode, out_fmt", [
    ("digits.csv", to_csv, None),
    ("digits.jsonl", to_jsonl, None),
    ("digits.parquet", to_parquet, None),
    ("digits.csv.gz", lambda rows: to_csv(rows, gz=True), "parquet"),
    ("digits.jsonl.gz", lambda rows: to_jsonl(rows, gz=True), "csv"),
])
def test_each_format_round_trips_with_ids_kept_columns_and_order(kiln, name, encode, out_fmt):
    rows = digits_rows(1000)
    data = encode(rows)
    meta = upload(kiln, name, data)
    assert meta["bytes"] == len(data)
    import hashlib
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    job = submit(kiln, meta["id"], keep_columns=["truth"], **({"output_format": out_fmt} if out_fmt else {}))
    assert job["status"] == "validating"
    done = kiln.wait(job["id"], timeout_seconds=120)
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": 1000, "completed": 1000, "failed": 0}
    assert done["rows_per_second"] > 0 and done["eta_seconds"] == 0
    fmt = out_fmt or name.split(".")[1]
    assert done["output_format"] == fmt
    out = parse(fmt, download(kiln, job["id"]))
    assert [r["custom_id"] for r in out] == [r["custom_id"] for r in rows]
    assert [int(r["row_index"]) for r in out] == list(range(1000))
    labels = [int(r["output"]["label"] if fmt == "jsonl" else r["label"]) for r in out]
    truth = [int(r["truth"]) for r in out]
    assert truth == [r["truth"] for r in rows]
    assert sum(a == b for a, b in zip(labels, truth)) / len(truth) >= 0.95
    if fmt != "jsonl":
        assert {f"prob_{i}" for i in range(10)} <= set(out[0])
    for other in ("csv", "jsonl", "parquet"):
        converted = parse(other, download(kiln, job["id"], fmt=other))
        assert [r["custom_id"] for r in converted] == [r["custom_id"] for r in rows]
    assert download(kiln, job["id"], "errors", fmt="jsonl") == b""
    stored = kiln.http.get(f"/v1/files/{done['output_file']}").json()
    assert stored["row_count"] == 1000 and stored["purpose"] == "output"


def test_id_column_and_row_index_without_ids(kiln):
    rows = [{k: v for k, v in r.items() if k != "custom_id"} | {"sku": f"S{i}"}
            for i, r in enumerate(digits_rows(50))]
    meta = upload(kiln, "x.jsonl", to_jsonl(rows))
    job = submit(kiln, meta["id"], id_column="sku")
    assert kiln.wait(job["id"], timeout_seconds=60)["status"] == "succeeded"
    out = parse("jsonl", download(kiln, job["id"]))
    assert [r["sku"] for r in out] == [f"S{i}" for i in range(50)]
    no_ids = upload(kiln, "plain.csv", to_csv([{k: v for k, v in r.items() if k != "sku"} for r in rows]))
    job = submit(kiln, no_ids["id"])
    assert kiln.wait(job["id"], timeout_seconds=60)["status"] == "succeeded"
    out = parse("csv", download(kiln, job["id"]))
    assert [int(r["row_index"]) for r in out] == list(range(50))
    assert "custom_id" not in out[0]


def test_a_file_missing_a_column_fails_in_validating(kiln):
    rows = [{k: v for k, v in r.items() if k != "p5"} for r in digits_rows(20)]
    job = submit(kiln, upload(kiln, "bad.csv", to_csv(rows))["id"])
    done = kiln.wait(job["id"], timeout_seconds=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_file" and "p5" in done["error"]["message"]
    assert done["request_counts"]["completed"] == 0


def test_bad_rows_fail_alone_and_can_be_retried(kiln):
    rows = digits_rows(300)
    rows[3]["p10"] = "oops"
    rows[150]["p0"] = ""
    data = bytearray(to_jsonl(rows))
    lines = data.split(b"\n")
    lines[200] = b'{"custom_id": "img-00200", "p0": 1, not json'
    meta = upload(kiln, "mixed.jsonl", b"\n".join(lines))
    job = submit(kiln, meta["id"], max_failed_fraction=0.5)
    done = kiln.wait(job["id"], timeout_seconds=60)
    assert done["status"] == "succeeded"
    assert done["request_counts"] == {"total": 300, "completed": 297, "failed": 3}
    errors = parse("jsonl", download(kiln, job["id"], "errors"))
    assert [e["row_index"] for e in errors] == [3, 150, 200]
    assert errors[0]["custom_id"] == "img-00003" and "p10" in errors[0]["error_message"]
    assert {e["error_code"] for e in errors} >= {"unparsable_row"}
    out = parse("jsonl", download(kiln, job["id"]))
    assert len(out) == 297 and 3 not in {r["row_index"] for r in out}
    assert 4 in {r["row_index"] for r in out}  # its batch neighbours were scored

    child = kiln.http.post(f"/v1/jobs/{job['id']}/retry")
    assert child.status_code == 202, child.text
    child = child.json()
    assert child["parent_id"] == job["id"]
    retried = kiln.wait(child["id"], timeout_seconds=60)
    assert retried["request_counts"]["total"] == 3
    assert retried["request_counts"]["failed"] == 3  # the same bad data fails again
    again = parse("jsonl", download(kiln, child["id"], "errors"))
    assert [e.get("custom_id") for e in again][:2] == ["img-00003", "img-00150"]


def test_too_many_failed_rows_fail_the_job(kiln):
    rows = digits_rows(10)
    for r in rows[:6]:
        r["p1"] = "x"
    job = submit(kiln, upload(kiln, "m.csv", to_csv(rows))["id"], max_failed_fraction=0.5)
    done = kiln.wait(job["id"], timeout_seconds=60)
    assert done["status"] == "failed" and done["error"]["code"] == "too_many_failed_rows"
    assert len(parse("csv", download(kiln, job["id"], "errors"))) == 6
    child = kiln.http.post(f"/v1/jobs/{job['id']}/retry").json()
    retried = kiln.wait(child["id"], timeout_seconds=60)
    assert retried["request_counts"] == {"total": 6, "completed": 0, "failed": 6}
    assert [r["custom_id"] for r in parse("csv", download(kiln, child["id"], "errors"))] == \
        [f"img-{i:05d}" for i in range(6)]


def test_retry_of_a_parquet_job_takes_only_its_failed_rows(kiln):
    rows = digits_rows(40)
    rows[5]["p2"] = None
    rows[30]["p9"] = None
    job = submit(kiln, upload(kiln, "p.parquet", to_parquet(rows))["id"])
    assert kiln.wait(job["id"], timeout_seconds=60)["request_counts"]["failed"] == 2
    child = kiln.http.post(f"/v1/jobs/{job['id']}/retry").json()
    retried = kiln.wait(child["id"], timeout_seconds=60)
    assert retried["request_counts"]["total"] == 2
    assert retried["queue"] == job["queue"] is not None, "a retry runs where its parent ran"
    errors = parse("parquet", download(kiln, child["id"], "errors"))
    assert [e["custom_id"] for e in errors] == ["img-00005", "img-00030"]


def test_files_are_tenant_scoped_and_deletable(kiln, file_stack):
    stack, api, _ = file_stack
    meta = upload(kiln, "d.csv", to_csv(digits_rows(5)))
    other = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {stack.create_key()}"})
    for path in (f"/v1/files/{meta['id']}", f"/v1/files/{meta['id']}/content"):
        response = other.get(path)
        assert response.status_code == 404 and response.headers["Content-Type"] == PROBLEM
    assert other.delete(f"/v1/files/{meta['id']}").status_code == 404
    job = other.post("/v1/jobs", json={"model": "digits", "input_file": meta["id"]})
    assert job.status_code == 404
    listed = kiln.http.get("/v1/files").json()["data"]
    assert meta["id"] in [f["id"] for f in listed]
    assert other.get("/v1/files").json()["data"] == []
    content = kiln.http.get(f"/v1/files/{meta['id']}/content")
    assert content.content == to_csv(digits_rows(5))
    assert kiln.http.delete(f"/v1/files/{meta['id']}").status_code == 204
    assert kiln.http.get(f"/v1/files/{meta['id']}").status_code == 404


def test_an_explicit_format_overrides_the_file_name(kiln):
    meta = upload(kiln, "export.txt", to_csv(digits_rows(20), gz=True), format="csv.gz")
    assert (meta["format"], meta["compression"]) == ("csv", "gzip")
    job = submit(kiln, meta["id"], output_format="jsonl")
    assert kiln.wait(job["id"], timeout_seconds=60)["request_counts"]["completed"] == 20


def test_upload_errors(kiln, make_stack):
    bad = kiln.http.post("/v1/files", files={"file": ("notes.txt", b"hello")})
    assert bad.status_code == 422 and bad.headers["Content-Type"] == PROBLEM
    missing = kiln.http.post("/v1/files", data={"purpose": "input"})
    assert missing.status_code == 422
    nameless = kiln.http.post("/v1/files", files={"file": ("", b"")}, data={"format": "csv"})
    assert nameless.status_code == 422 and nameless.headers["Content-Type"] == PROBLEM
    assert nameless.json()["errors"][0]["code"] == "not_a_file"
    # a form field sent twice is refused, not read as its first value (schemathesis sent one
    # as an array and got a 201)
    for field, values in (("expires_after_seconds", ["1", "2"]), ("purpose", ["input", "batch"])):
        twice = kiln.http.post("/v1/files", files=[("file", ("a.csv", to_csv(digits_rows(2)))),
                                                   *[(field, (None, v)) for v in values]])
        assert twice.status_code == 422 and twice.headers["Content-Type"] == PROBLEM, twice.text
        assert [e["field"] for e in twice.json()["errors"]] == [field]
    two_files = kiln.http.post("/v1/files", files=[("file", ("a.csv", to_csv(digits_rows(2)))),
                                                   ("file", ("b.csv", to_csv(digits_rows(2))))])
    assert two_files.status_code == 422 and two_files.json()["errors"][0]["field"] == "file"
    assert kiln.http.get("/v1/files").json()["data"] == []
    both = kiln.http.post("/v1/jobs", json={"model": "digits", "inputs": [{}], "input_file": "x"})
    assert both.status_code == 422
    unknown = kiln.http.post("/v1/jobs", json={"model": "digits", "input_file": str(uuid.uuid4())})
    assert unknown.status_code == 404

    small = make_stack(KILN_MAX_UPLOAD_BYTES="10000")
    api = start_api(small.env, small.logdir)
    try:
        http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {small.create_key()}"})
        big = http.post("/v1/files", files={"file": ("big.csv", b"a,b\n" + b"1,2\n" * 5000)})
        assert big.status_code == 413 and big.headers["Content-Type"] == PROBLEM
        assert http.get("/v1/files").json()["data"] == []
        stored = list((small.logdir / "storage").rglob("*")) if (small.logdir / "storage").exists() else []
        assert [p for p in stored if p.is_file()] == []
    finally:
        api.stop()


def test_a_large_upload_is_stored_by_a_rename_with_its_hash_and_nothing_left_behind(kiln, file_stack):
    """Above 1 MiB an upload spools into the storage's own folder, hashed as it is parsed, and
    is then moved into place (app/storage.py HashedSpool): the stored bytes, size and SHA-256
    are the upload's, and no spool file stays behind, for a stored upload or a refused one."""
    import hashlib

    stack, _, _ = file_stack
    spool = stack.logdir / "storage" / ".spool"
    data = to_csv(digits_rows(15000))
    assert len(data) > 2 * 1024 * 1024
    meta = upload(kiln, "big.csv", data)
    assert meta["bytes"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    stored = kiln.http.get(f"/v1/files/{meta['id']}/content")
    assert stored.status_code == 200 and stored.content == data
    assert spool.is_dir() and list(spool.iterdir()) == []
    # a large multipart body that is not a file upload the endpoint takes: refused, not kept
    refused = kiln.http.post("/v1/files", files={"file": ("big.csv", data)},
                             data={"purpose": "nonsense"})
    assert refused.status_code == 422
    assert list(spool.iterdir()) == []
    job = submit(kiln, meta["id"])
    done = kiln.wait(job["id"], timeout_seconds=120)
    assert done["status"] == "succeeded" and done["request_counts"]["completed"] == 15000


def arrow_loaded(api) -> bool:
    """Whether any process of a `kiln api` (granian's and its workers) has pyarrow's library
    mapped."""
    import psutil

    root = psutil.Process(api.process.pid)
    return any("libarrow" in mapped.path for process in [root, *root.children(recursive=True)]
               for mapped in process.memory_maps())


def test_a_stored_results_file_is_served_without_loading_pyarrow(kiln, file_stack):
    """Downloading a finished job's results in its own format copies the joined file's bytes:
    an API process that serves only those never loads pyarrow (about 60 MiB each). Asking for
    another format converts the parts, and loads it."""
    stack, _, _ = file_stack
    job = submit(kiln, upload(kiln, "d.csv", to_csv(digits_rows(30)))["id"], output_format="csv")
    assert kiln.wait(job["id"], timeout_seconds=60)["status"] == "succeeded"
    api = start_api(stack.env, stack.logdir)
    try:
        fresh = KilnClient(api.url, kiln.http.headers["Authorization"].split()[-1])
        assert not arrow_loaded(api)
        stored = fresh.http.get(f"/v1/jobs/{job['id']}/results")
        assert stored.status_code == 200 and len(parse("csv", stored.content)) == 30
        assert not arrow_loaded(api), "serving the stored CSV loaded pyarrow"
        converted = fresh.http.get(f"/v1/jobs/{job['id']}/results", params={"format": "jsonl"})
        assert converted.status_code == 200 and len(parse("jsonl", converted.content)) == 30
        assert arrow_loaded(api), "converting to JSONL goes through pyarrow"
    finally:
        api.stop()


def test_a_csv_results_file_is_joined_by_reference_and_reads_whole(kiln, file_stack):
    """Finalize stores a CSV job's results as its header plus the chunks' CSV twins, by
    reference (app/storage.py `put_joined`): no byte is copied. The file then reads as the whole,
    through the job's results and through /v1/files; its size and SHA-256 are those bytes';
    deleting the job removes it and the twins. (Seeking into one, as a chunk reading it as its
    input would: tests/unit/test_storage.py.)"""
    import hashlib

    from app.storage import JOINED

    stack, _, _ = file_stack
    rows = digits_rows(1500)  # chunks of 400 rows: four twins
    job = submit(kiln, upload(kiln, "d.csv", to_csv(rows))["id"], output_format="csv")
    done = kiln.wait(job["id"], timeout_seconds=60)
    assert done["status"] == "succeeded", done
    data = download(kiln, job["id"])
    assert [r["custom_id"] for r in parse("csv", data)] == [r["custom_id"] for r in rows]
    meta = kiln.http.get(f"/v1/files/{done['output_file']}").json()
    assert meta["bytes"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert kiln.http.get(f"/v1/files/{done['output_file']}/content").content == data
    joined = list((stack.logdir / "storage" / "jobs" / job["id"]).glob(f"results.*{JOINED}"))
    assert len(joined) == 1 and joined[0].stat().st_size < 2048, joined
    folder = stack.logdir / "storage" / "jobs" / job["id"]
    assert len(list(folder.rglob("*.results.csv"))) == 4  # the twins
    assert kiln.http.delete(f"/v1/jobs/{job['id']}").status_code == 200
    assert [p for p in folder.rglob("*") if p.is_file()] == []  # removed once the delete commits
