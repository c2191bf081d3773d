"""The audit log through the real entry points: the API's changes, the operator's commands,
the tenant's view, the append-only trigger and its one retention path."""

import getpass
import uuid

import httpx
import orjson
import psycopg
import pytest
from sqlalchemy import text

from tests import support
from tests.conftest import build_stack
from workers.demo_models import DIGITS_COLUMNS

DIGITS = dict.fromkeys(DIGITS_COLUMNS, 0)


@pytest.fixture(scope="module")
def audited(services, tmp_path_factory):
    stack, name = build_stack(services, tmp_path_factory.mktemp("audit"),
                              KILN_WEBHOOK_ALLOW_PRIVATE="true")
    stack.add_digits()
    api = support.start_api(stack.env, stack.logdir)
    yield stack, api
    api.stop()
    support.drop_database(services.admin_url, name)


def http(api, key: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=30)


def events(kiln: httpx.Client, **params) -> list[dict]:
    answer = kiln.get("/v1/audit", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def csv_bytes(rows: int) -> bytes:
    header = ",".join(DIGITS)
    return (header + "\n" + "\n".join(",".join("0" for _ in DIGITS) for _ in range(rows))
            + "\n").encode()


def test_each_change_through_the_api_is_recorded_with_actor_request_and_address(audited):
    stack, api = audited
    key = stack.create_key()
    prefix = key[:13]  # kiln_ and 8 hex digits
    with http(api, key) as kiln:
        submitted = kiln.post("/v1/jobs", json={"model": "digits", "inputs": [DIGITS]},
                              headers={"X-Request-Id": "req-submit-1"})
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["X-Request-Id"] == "req-submit-1"
        job_id = submitted.json()["id"]
        assert kiln.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        upload = kiln.post("/v1/files", files={"file": ("in.csv", csv_bytes(3))})
        assert upload.status_code == 201, upload.text
        file_id = upload.json()["id"]
        hook = kiln.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook?token=s3cret"})
        assert hook.status_code == 201, hook.text
        hook_id = hook.json()["id"]
        assert kiln.post(f"/v1/webhooks/{hook_id}/rotate-secret").status_code == 200
        assert kiln.delete(f"/v1/webhooks/{hook_id}").status_code == 204
        assert kiln.delete(f"/v1/files/{file_id}").status_code == 204

        everything = events(kiln, limit=50)
        # the tenant and its key were made in-process (no request, no operator): `system`
        assert [(e["action"], e["actor"]) for e in everything[-2:]] == [
            ("key.create", "system"), ("tenant.create", "system")]
        found = everything[:-2]
        actions = [e["action"] for e in found]
        assert actions == ["file.delete", "webhook.delete", "webhook.rotate_secret",
                           "webhook.create", "file.upload", "job.cancel", "job.submit"]
        assert all(e["actor"] == prefix for e in found)
        assert all(e["client_ip"] == "127.0.0.1" for e in found)
        submit = found[-1]
        assert submit["target_id"] == job_id and submit["request_id"] == "req-submit-1"
        assert submit["details"] == {"model": "digits", "kind": "inline", "rows": 1}
        assert found[-2]["details"] == {"was": "queued", "now": "cancelled"}
        assert len({e["request_id"] for e in found}) == len(found)  # each its own request
        assert "s3cret" not in str(found)  # the URL's query never lands in the log
        assert found[3]["details"]["host"] == "127.0.0.1"

        # filters, and the list shape with its cursor
        assert [e["target_id"] for e in events(kiln, action="job.cancel")] == [job_id]
        assert {e["action"] for e in events(kiln, target_id=job_id)} == {"job.submit",
                                                                         "job.cancel"}
        page = kiln.get("/v1/audit", params={"limit": 3}).json()
        assert page["has_more"] is True and len(page["data"]) == 3
        assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"],
                                                       page["data"][-1]["id"])
        rest = kiln.get("/v1/audit", params={"limit": 50, "after": page["last_id"]}).json()
        assert [e["action"] for e in rest["data"]] == [e["action"] for e in everything[3:]]
        assert not rest["has_more"]
        assert events(kiln, since="2999-01-01T00:00:00Z") == []
        bad = kiln.get("/v1/audit", params={"limit": 0})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith(
            "application/problem+json")
        assert bad.json()["request_id"] == bad.headers["X-Request-Id"]
        # `after` is a bigint id: the largest one is a valid page, past it the schema refuses
        # it (schemathesis found 2**90 read by Postgres as "bigint out of range")
        assert kiln.get("/v1/audit", params={"after": 2**63 - 1}).status_code == 200
        past = kiln.get("/v1/audit", params={"after": 2**63})
        assert past.status_code == 422 and "after" in past.text and "bigint" not in past.text

    with http(api, stack.create_key()) as other:  # another tenant sees none of it
        assert sorted(e["action"] for e in events(other)) == ["key.create", "tenant.create"]
        assert events(other, target_id=job_id) == []


def test_a_refused_change_leaves_no_event(audited):
    """The event is in the change's transaction: a 409 rolls both back."""
    stack, api = audited
    with http(api, stack.create_key()) as kiln:
        file_id = kiln.post("/v1/files", files={"file": ("in.csv", csv_bytes(2))}).json()["id"]
        job = kiln.post("/v1/jobs", json={"model": "digits", "input_file": file_id})
        assert job.status_code == 202, job.text
        refused = kiln.delete(f"/v1/files/{file_id}")  # the input of an unfinished job
        assert refused.status_code == 409
        assert [e["action"] for e in events(kiln)][:2] == ["job.submit", "file.upload"]
        assert kiln.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 200
        assert events(kiln)[0]["action"] == "job.cancel"


def test_operator_commands_are_recorded_as_cli_user_and_listed_by_kiln_audit(audited):
    stack, _api = audited
    tenant = f"ops-{uuid.uuid4().hex[:6]}"
    stack.kiln("tenants", "create", tenant)
    stack.kiln("tenants", "limits", tenant, "--max-active-jobs", "7")
    key = stack.kiln("keys", "create", "--tenant", tenant).stdout.strip().splitlines()[-1]
    prefix = key[:13]  # kiln_ and 8 hex digits
    stack.kiln("keys", "revoke", prefix)

    listed = stack.kiln("audit", "--tenant", tenant, "--json").stdout.splitlines()
    rows = [orjson.loads(line) for line in listed]
    assert [r["action"] for r in rows] == ["key.revoke", "key.create", "tenant.limits",
                                           "tenant.create"]
    assert {r["actor"] for r in rows} == {f"cli:{getpass.getuser()}"}
    assert rows[2]["details"] == {"max_active_jobs": 7}
    assert key not in "\n".join(listed)  # the key itself is never recorded
    only = stack.kiln("audit", "--tenant", tenant, "--action", "key.create", "--since", "1h")
    assert len(only.stdout.splitlines()) == 1 and "key.create" in only.stdout
    assert stack.kiln("audit", "--since", "soon", check=False).returncode == 2


def test_the_log_is_append_only_but_for_the_retention_sweep(audited):
    stack, _api = audited
    stack.create_key()  # at least one event (tenant.create, key.create)
    for statement in ("UPDATE audit_events SET actor = 'someone-else'",
                      "DELETE FROM audit_events", "TRUNCATE audit_events"):
        with stack.sessions() as session, pytest.raises(Exception) as refused:
            session.execute(text(statement))
        assert isinstance(refused.value.orig, psycopg.errors.InsufficientPrivilege)
        assert "append-only" in str(refused.value)
    with stack.sessions.begin() as session:  # an event from long ago (inserts are allowed)
        session.execute(text("INSERT INTO audit_events (at, actor, action, target_type) "
                             "VALUES (now() - interval '400 days', 'system', 'old', 'test')"))
        before = session.scalar(text("SELECT count(*) FROM audit_events"))
    assert "removed 1 " in stack.kiln("audit", "prune", "--older-than-days", "365").stdout
    with stack.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM audit_events")) == before - 1
        assert session.scalar(text("SELECT count(*) FROM audit_events WHERE action = 'old'")) == 0
