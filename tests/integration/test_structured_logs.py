"""JSON logs through the real processes (KILN_LOG_FORMAT unset, stderr a file: the default
outside a terminal): every line of the API and the worker is one JSON object; a file job's request id reaches the worker's lines with its job id; no secret
(an API key, a webhook secret, an Authorization header) is ever written."""

import time

import httpx
import orjson
import pytest

from tests import support
from workers.demo_models import DIGITS_COLUMNS


def csv_bytes(rows: int) -> bytes:
    return (",".join(DIGITS_COLUMNS) + "\n"
            + "".join(",".join("1" for _ in DIGITS_COLUMNS) + "\n" for _ in range(rows))).encode()


def json_lines(process) -> list[dict]:
    lines = [line for line in process.log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"{process.name} wrote a line that is not JSON: {line!r}")
    return parsed


@pytest.fixture
def json_stack(make_stack):
    stack = make_stack(KILN_WEBHOOK_ALLOW_PRIVATE="true", KILN_LOG_LEVEL="DEBUG")
    stack.add_digits()
    # KILN_LOG_FORMAT unset: JSON is the default of a service whose stderr is not a terminal
    env = {name: value for name, value in stack.env.items() if name != "KILN_LOG_FORMAT"}
    api, worker = support.start_api_and_worker(env, stack.logdir)
    yield stack, api, worker
    api.stop()
    worker.stop()


def test_json_lines_carry_the_request_and_job_and_never_a_secret(json_stack):
    stack, api, worker = json_stack
    key = stack.create_key()
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": "req-logs-42"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=30) as kiln:
        hook = kiln.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/receiver"})
        assert hook.status_code == 201, hook.text
        secret = hook.json()["secret"]
        assert secret.startswith("whsec_")
        rotated = kiln.post(f"/v1/webhooks/{hook.json()['id']}/rotate-secret").json()["secret"]
        file_id = kiln.post("/v1/files", files={"file": ("in.csv", csv_bytes(40))}).json()["id"]
        submitted = kiln.post("/v1/jobs", json={"model": "digits", "input_file": file_id})
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["X-Request-Id"] == "req-logs-42"
        job_id = submitted.json()["id"]
        support.wait_for(lambda: kiln.get(f"/v1/jobs/{job_id}").json()["status"]
                         in ("succeeded", "failed"), timeout=90, message="the file job")
        assert kiln.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        unknown = kiln.get("/v1/jobs/not-a-job")
        assert unknown.json()["request_id"] == "req-logs-42"  # in the problem body too
    # an unauthenticated request with a made-up key, logged by nobody
    httpx.get(f"{api.url}/v1/jobs", headers={"Authorization": "Bearer kiln_0000abcd_planted"})
    time.sleep(1)  # the last lines reach the files

    worker_lines = json_lines(worker)
    api_lines = json_lines(api)
    assert all({"event", "level", "timestamp", "logger"} <= set(line) for line in worker_lines)
    job_lines = [line for line in worker_lines if line.get("job_id") == job_id]
    assert job_lines, "no worker line carries the job id"
    assert {line.get("request_id") for line in job_lines} == {"req-logs-42"}
    assert any("chunk" in line for line in job_lines), "chunk tasks bind their chunk"
    assert any(line.get("worker", "").startswith("kiln-") for line in job_lines)
    assert api_lines, "the API wrote nothing"

    everything = api.log.read_text() + worker.log.read_text()
    for planted in (key, secret, rotated, "kiln_0000abcd_planted", key[13:], secret[6:]):
        assert planted not in everything
