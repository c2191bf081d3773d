"""The `kiln` client commands as a user types them."""

import os
from pathlib import Path

import orjson
import pytest

from workers.demo_models import digits_records, digits_split


def test_submit_wait_status_and_results_through_the_cli(stack, api, worker, tmp_path):
    env = dict(stack.env, KILN_API_URL=api.url, KILN_API_KEY=stack.create_key())
    _, x_test, _, y_test = digits_split()
    records = tmp_path / "records.jsonl"
    records.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in digits_records(x_test[:50])))

    from tests.support import run_kiln
    submitted = run_kiln(env, "submit", "--model", "digits", "--input", str(records), "--wait")
    job = orjson.loads(submitted.stdout)
    assert job["status"] == "succeeded"
    assert job["request_counts"]["completed"] == 50
    assert "rows" in submitted.stderr  # the progress bar

    status = orjson.loads(run_kiln(env, "status", job["id"]).stdout)
    assert status["id"] == job["id"] and status["status"] == "succeeded"
    assert orjson.loads(run_kiln(env, "wait", job["id"]).stdout)["status"] == "succeeded"

    out = tmp_path / "results.jsonl"
    run_kiln(env, "results", job["id"], "-o", str(out))
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["index"] for line in lines] == list(range(50))
    correct = sum(line["output"]["label"] == int(y) for line, y in zip(lines, y_test[:50]))
    assert correct >= 47

    stdout = run_kiln(env, "results", job["id"]).stdout.splitlines()
    assert len(stdout) == 50

    job_id = run_kiln(env, "submit", "--model", "digits", "--input", str(records)).stdout.strip()
    assert len(job_id) == 36

    models = run_kiln(env, "models", "list").stdout
    assert "digits" in models and "heldout_accuracy" in models


def test_cli_reports_api_errors_without_a_traceback(stack, api, tmp_path):
    env = dict(stack.env, KILN_API_URL=api.url, KILN_API_KEY="kiln_wrong")
    from tests.support import run_kiln
    result = run_kiln(env, "status", "00000000-0000-0000-0000-000000000000", check=False)
    assert result.returncode != 0
    assert "401" in result.stderr and "Traceback" not in result.stderr
    env.pop("KILN_API_KEY")
    result = run_kiln(env, "status", "x", check=False)
    assert result.returncode != 0 and "KILN_API_KEY" in result.stderr


def test_upload_wait_and_download_through_the_cli(stack, api, worker, tmp_path):
    import csv
    import io

    from tests.integration.test_files import digits_rows, to_csv
    from tests.support import run_kiln

    env = dict(stack.env, KILN_API_URL=api.url, KILN_API_KEY=stack.create_key())
    rows = digits_rows(600)
    rows[7]["p3"] = "bad"
    source = tmp_path / "digits.csv"
    source.write_bytes(to_csv(rows))
    out = tmp_path / "scored.parquet"
    result = run_kiln(env, "upload", str(source), "--model", "digits", "--keep-columns", "truth",
                      "--output-format", "parquet", "--wait", "-o", str(out))
    job = orjson.loads(result.stdout)
    assert job["status"] == "succeeded"
    assert job["request_counts"] == {"total": 600, "completed": 599, "failed": 1}
    assert "upload" in result.stderr and "rows" in result.stderr  # both progress bars

    import pyarrow.parquet as pq
    table = pq.read_table(out).to_pylist()
    assert len(table) == 599 and table[0]["custom_id"] == "img-00000"
    assert sum(r["label"] == r["truth"] for r in table) / len(table) >= 0.95

    errors = tmp_path / "errors.csv"
    run_kiln(env, "errors", job["id"], "-o", str(errors))
    failed = list(csv.DictReader(io.StringIO(errors.read_text())))
    assert [r["custom_id"] for r in failed] == ["img-00007"]
    assert "p3" in failed[0]["error_message"]

    as_csv = run_kiln(env, "results", job["id"], "--format", "csv").stdout
    assert as_csv.splitlines()[0].startswith('"row_index"') or "row_index" in as_csv.splitlines()[0]
    assert len(as_csv.splitlines()) == 600  # header + 599 rows

    job_id = run_kiln(env, "upload", str(source), "--model", "digits").stdout.strip()
    assert len(job_id) == 36


def test_a_gpu_worker_refuses_to_start_without_cuda(stack):
    import onnxruntime

    from tests.support import run_kiln, start_worker

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        worker = start_worker(stack.env, stack.logdir, "-Q", "gpu")  # with CUDA it does start
        try:
            assert worker.process.poll() is None and b" ready." in worker.log.read_bytes()
        finally:
            worker.stop()
        return
    result = run_kiln(stack.env, "worker", "-Q", "gpu", check=False, timeout=60)
    assert result.returncode != 0
    assert "CUDAExecutionProvider" in result.stderr and "Traceback" not in result.stderr


def process_tree_threads(pid: int) -> dict[int, int]:
    """Every thread of `pid` and of its descendants: {thread id: process id}."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the command name (field 2) may hold spaces and parentheses: split after it
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass  # exited meanwhile
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    threads = {}
    for process in tree:
        for task in Path(f"/proc/{process}/task").glob("[0-9]*"):
            threads[int(task.name)] = process
    return threads


def policies(threads) -> dict[int, int]:
    """{thread id: scheduling policy} of `threads` still running."""
    found = {}
    for thread in threads:
        try:
            found[thread] = os.sched_getscheduler(thread)
        except (ProcessLookupError, PermissionError):
            pass  # the thread ended meanwhile (its id may even belong to another user's now)
    return found


def test_api_and_worker_run_every_thread_under_sched_batch(stack, client, api, worker):
    """KILN_TUNING__CPU_POLICY (default batch): every process and thread `kiln api` and `kiln worker`
    start is SCHED_BATCH, so a woken thread never preempts the GIL holder of its process;
    `normal` keeps the OS default."""
    from tests.support import start_api

    if not hasattr(os, "SCHED_BATCH"):
        pytest.fail("this test needs Linux scheduling policies")
    _, x_test, _, _ = digits_split()
    job = client.wait(client.submit("digits", digits_records(x_test[:3]))["id"])
    assert job["status"] == "succeeded"  # the request, writer and scoring threads all exist now
    for process in (api, worker):
        threads = process_tree_threads(process.process.pid)
        found = policies(threads)
        # granian's or Celery's processes, and their threads (ONNX Runtime's, the writer's, …)
        assert len(set(threads.values())) > 1
        assert len(found) > 5, found
        assert set(found.values()) == {os.SCHED_BATCH}, (process.name, found)

    normal = start_api(dict(stack.env, KILN_TUNING__CPU_POLICY="normal"), stack.logdir)
    try:
        found = policies(process_tree_threads(normal.process.pid))
        assert len(found) > 5 and set(found.values()) == {os.SCHED_OTHER}, found
    finally:
        normal.stop()


def test_add_demo_registers_from_its_cached_build_the_second_time(make_stack, tmp_path):
    """`kiln models add-demo` builds once per cache (XDG_CACHE_HOME), then registers the cached
    ONNX file, the same bytes (--rebuild: tests/unit/test_demo_cache.py)."""
    from app.orm import Model

    iso = make_stack(XDG_CACHE_HOME=str(tmp_path / "cache"))
    first = iso.kiln("models", "add-demo", "digits").stdout
    second = iso.kiln("models", "add-demo", "digits").stdout
    assert "digits v1 registered from a new build" in first
    assert "digits v2 registered from the cached build" in second
    assert len(list((tmp_path / "cache" / "kiln" / "demo-models").glob("digits-*.onnx"))) == 1
    with iso.sessions() as session:
        digests = [m.sha256 for m in session.query(Model).filter(Model.name == "digits")
                   .order_by(Model.version)]
    assert digests[0] == digests[1], "the cached build is the built model, byte for byte"
