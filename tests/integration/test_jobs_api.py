"""Journey 1 over HTTP against real `kiln api` and `kiln worker` processes."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import psycopg
import pytest

from tests.support import start_api, wait_for
from workers.demo_models import digits_records, digits_split

PROBLEM = "application/problem+json"


def heldout(n=None):
    _, x_test, _, y_test = digits_split()
    if n:
        x_test, y_test = x_test[:n], y_test[:n]
    return digits_records(x_test), [int(y) for y in y_test]


def read_results(client, job_id):
    return [orjson.loads(line) for line in b"".join(client.iter_results(job_id)).splitlines()]


def test_submit_poll_and_results_are_accurate(client):
    records, labels = heldout()
    response = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records,
                                                  "metadata": {"batch": "heldout"}})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded")
    done = client.wait(job["id"], timeout_seconds=60)
    assert done["status"] == "succeeded"
    assert done["request_counts"] == {"total": len(records), "completed": len(records), "failed": 0}
    assert done["metadata"] == {"batch": "heldout"}
    assert done["started_at"] and done["finished_at"]
    results = read_results(client, job["id"])
    assert [r["index"] for r in results] == list(range(len(records)))
    predicted = [r["output"]["label"] for r in results]
    accuracy = sum(p == t for p, t in zip(predicted, labels)) / len(labels)
    assert accuracy >= 0.95
    assert all(len(r["output"]["probabilities"]) == 10 for r in results)
    assert all(abs(sum(r["output"]["probabilities"]) - 1) < 1e-3 for r in results)


def test_idempotency_key_returns_the_same_job_and_rejects_a_different_body(client):
    records, _ = heldout(3)
    key = uuid.uuid4().hex
    first = client.submit("digits", records, idempotency_key=key)
    again = client.submit("digits", records, idempotency_key=key)
    assert again["id"] == first["id"]
    response = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records[:2]},
                                headers={"Idempotency-Key": key})
    assert response.status_code == 409
    assert response.headers["Content-Type"] == PROBLEM
    listed = client.http.get("/v1/jobs", params={"limit": 200}).json()["data"]
    assert sum(1 for j in listed if j["id"] == first["id"]) == 1


def test_list_jobs_pages_newest_first_and_filters(client):
    records, _ = heldout(1)
    ids = [client.submit("digits", records)["id"] for _ in range(5)]
    for job_id in ids:
        client.wait(job_id, timeout_seconds=30)
    seen, after = [], None
    while True:  # limit + after, answering first_id, last_id and has_more
        params = {"limit": 2, "model": "digits"} | ({"after": after} if after else {})
        page = client.http.get("/v1/jobs", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        seen += [j["id"] for j in page["data"]]
        after = page["last_id"]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        assert page["next_cursor"] == page["last_id"]
    assert seen[:5] == list(reversed(ids))
    assert len(seen) == len(set(seen))
    by_cursor, cursor = [], None  # the deprecated cursor / next_cursor still page the same way
    while True:
        params = {"limit": 2, "model": "digits"} | ({"cursor": cursor} if cursor else {})
        page = client.http.get("/v1/jobs", params=params).json()
        by_cursor += [j["id"] for j in page["data"]]
        if not (cursor := page["next_cursor"]):
            break
    assert by_cursor == seen
    assert [j["id"] for j in client.jobs(model="digits", page_size=2)] == seen
    empty = client.http.get("/v1/jobs", params={"model": "nope"}).json()
    assert empty | {"data": None} == {"object": "list", "data": None, "first_id": None,
                                      "last_id": None, "has_more": False, "next_cursor": None}
    unknown = client.http.get("/v1/jobs", params={"after": str(uuid.uuid4())})
    assert unknown.status_code == 404 and unknown.headers["Content-Type"] == PROBLEM
    succeeded = client.http.get("/v1/jobs", params={"status": "succeeded", "limit": 200}).json()
    assert {j["status"] for j in succeeded["data"]} == {"succeeded"}
    assert client.http.get("/v1/jobs", params={"model": "nope"}).json()["data"] == []
    bad = client.http.get("/v1/jobs", params={"cursor": "garbage"})  # not an id: invalid
    assert bad.status_code == 422 and bad.headers["Content-Type"] == PROBLEM
    bad = client.http.get("/v1/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422


def test_other_tenants_jobs_are_not_found(client, stack, api):
    records, _ = heldout(2)
    job = client.submit("digits", records)
    client.wait(job["id"], timeout_seconds=30)
    other = httpx.Client(base_url=api.url,
                         headers={"Authorization": f"Bearer {stack.create_key()}"})
    for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/results"),
                         ("POST", f"/v1/jobs/{job['id']}/cancel")]:
        response = other.request(method, path)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"] == PROBLEM
        # another tenant's job answers exactly as a job that does not exist
        fresh = str(uuid.uuid4())
        missing = other.request(method, path.replace(job["id"], fresh))
        assert missing.status_code == 404
        seen, unseen = response.json(), orjson.loads(missing.text.replace(fresh, job["id"]))
        assert seen.pop("request_id") != unseen.pop("request_id")  # each answer its own
        assert seen == unseen
    assert all(j["id"] != job["id"] for j in other.get("/v1/jobs").json()["data"])


def test_requests_without_a_valid_key_are_401(api, stack):
    for headers in ({}, {"Authorization": "Bearer kiln_nope"}, {"Authorization": "Basic x"}):
        response = httpx.post(f"{api.url}/v1/jobs", json={"model": "digits", "inputs": []},
                              headers=headers)
        assert response.status_code == 401
        assert response.headers["Content-Type"] == PROBLEM
        assert response.json()["status"] == 401
    key = stack.create_key()
    prefix = "_".join(key.split("_", 2)[:2])
    assert httpx.get(f"{api.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    stack.kiln("keys", "revoke", prefix)
    assert "revoked" in stack.kiln("keys", "list").stdout
    # revocation applies once the API's key cache entry expires (KILN_TUNING__CACHE_SECONDS, 5 s)
    wait_for(lambda: httpx.get(f"{api.url}/v1/models",
                               headers={"Authorization": f"Bearer {key}"}).status_code == 401,
             timeout=15, interval=0.5, message="the revoked key to be refused")


@pytest.mark.parametrize("body, status, detail_part", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": "no-such-model", "inputs": [{"p0": 1}]}, 404, "no-such-model"),
    ({"model": "digits", "inputs": []}, 422, "at least 1"),
    ({"model": "digits"}, 422, "inputs"),
    ({"model": "digits", "inputs": [{"p0": 1}], "priority": 1000}, 422, "priority"),
    ({"model": "digits", "inputs": [{"p0": 1}], "surprise": 1}, 422, "surprise"),
])
def test_bad_requests_get_problem_json(client, body, status, detail_part):
    if isinstance(body, bytes):
        response = client.http.post("/v1/jobs", content=body,
                                    headers={"Content-Type": "application/json"})
    else:
        response = client.http.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status and problem["type"].startswith("/problems/")
    assert detail_part in problem["detail"]


def test_absurdly_nested_metadata_is_a_422_not_a_500(client):
    records, _ = heldout(1)
    body = ('{"model": "digits", "inputs": ' + orjson.dumps(records).decode() + ', "metadata": '
            + '{"a": ' * 600 + "1" + "}" * 600 + "}")
    response = client.http.post("/v1/jobs", content=body,
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.headers["Content-Type"] == PROBLEM
    assert "cannot be stored" in response.json()["detail"]


def test_values_postgres_cannot_store_are_a_422_not_a_500(client):
    """JSONB refuses \\u0000 in a string; that is the caller's input, found when it is written."""
    records, _ = heldout(1)
    for extra in ({"metadata": {"note": "a\u0000b"}}, {"webhook_url": "https://example.com/\u0000"}):
        response = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records, **extra})
        assert response.status_code == 422, response.text
        assert response.headers["Content-Type"] == PROBLEM
    ok = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records,
                                            "metadata": {"note": "fine"}})
    assert ok.status_code == 202  # the writer goes on after a refused row


def test_concurrent_submits_with_one_idempotency_key_make_one_job(client):
    """Concurrent requests share group-commit batches: the key still picks one winner and every
    other request gets that job back."""
    from concurrent.futures import ThreadPoolExecutor

    records, _ = heldout(2)
    key = uuid.uuid4().hex

    def submit(_):
        return client.http.post("/v1/jobs", json={"model": "digits", "inputs": records},
                                headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(submit, range(24)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1


def test_bad_records_are_422_naming_index_and_field(client):
    records, _ = heldout(3)
    records[2] = dict(records[2])
    del records[2]["p17"]
    response = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records})
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0] == {"index": 2, "field": "p17", "code": "missing_field",
                                    "message": problem["errors"][0]["message"]}
    records[2]["p17"] = "seven"
    response = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "p17"
    assert response.json()["errors"][0]["code"] == "not_numeric"


def test_unknown_jobs_are_404(client):
    for job_id in (str(uuid.uuid4()), "not-a-uuid"):
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/results"):
            response = client.http.get(path)
            assert response.status_code == 404
            assert response.headers["Content-Type"] == PROBLEM


def test_oversized_requests_are_413(make_stack):
    small = make_stack(KILN_MAX_REQUEST_BYTES="20000", KILN_MAX_INLINE_INPUTS="3")
    small.add_digits()
    api = start_api(small.env, small.logdir)
    try:
        http = httpx.Client(base_url=api.url,
                            headers={"Authorization": f"Bearer {small.create_key()}"})
        records, _ = heldout(4)
        too_many = http.post("/v1/jobs", json={"model": "digits", "inputs": records})
        assert too_many.status_code == 413 and "limit of 3" in too_many.json()["detail"]
        huge = http.post("/v1/jobs", content=b'{"model": "digits", "inputs": [' + b" " * 30000 + b"]}",
                         headers={"Content-Type": "application/json"})
        assert huge.status_code == 413
        assert huge.headers["Content-Type"] == PROBLEM
    finally:
        api.stop()


def test_health_readiness_openapi_and_docs(api):
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz").json()
    assert ready["checks"] == {"postgres": "ok", "redis": "ok"}
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/{job_id}/results", "/v1/models"} <= set(spec["paths"])
    assert "bearer" in spec["components"]["securitySchemes"]
    docs = httpx.get(f"{api.url}/docs", follow_redirects=True)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_models_list_digits_with_its_accuracy(client):
    models = {m["name"]: m for m in client.models()}
    digits = models["digits"]
    assert digits["metrics"]["heldout_accuracy"] >= 0.95
    assert digits["signature"]["columns"][:2] == ["p0", "p1"]
    assert digits["builtin"] is True and digits["version"] >= 1


def test_a_burst_of_polls_reuses_pooled_connections(stack, client):
    """Each API request thread keeps a pooled Postgres connection: a burst of concurrent polls
    opens no new database sessions once the pools are warm (a pool smaller than the thread count
    used to close and reopen connections, a backend fork every few requests). The API's
    connections are told apart from the worker's by their application_name."""
    job = client.submit("digits", heldout(1)[0])

    def burst() -> None:
        def poll(_):
            with httpx.Client(base_url=client.http.base_url,
                              headers=client.http.headers) as http:
                for _ in range(40):
                    assert http.get(f"/v1/jobs/{job['id']}").status_code == 200

        with ThreadPoolExecutor(16) as pool:  # more connections than API threads in all
            list(pool.map(poll, range(16)))

    with psycopg.connect(stack.settings.database_url, autocommit=True) as conn:
        def api_backends() -> set[int]:
            rows = conn.execute("SELECT pid FROM pg_stat_activity "
                                "WHERE application_name = 'kiln-api' "
                                "AND datname = current_database()").fetchall()
            return {pid for (pid,) in rows}

        burst()  # fills the pools
        warm = api_backends()
        assert warm, "the API's connections carry application_name kiln-api"
        seen: set[int] = set()
        done = threading.Event()

        def sample() -> None:  # a connection opened and closed within the burst is seen here
            with psycopg.connect(stack.settings.database_url, autocommit=True) as watcher:
                while not done.is_set():
                    seen.update(pid for (pid,) in watcher.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = 'kiln-api' "
                        "AND datname = current_database()").fetchall())
                    time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            burst()
        finally:
            done.set()
            sampler.join()
        seen |= api_backends()
        assert len(seen - warm) <= 2, f"{len(seen - warm)} new API connections in a warm burst"
