"""The `kiln` client commands as a user types them."""

import orjson

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
