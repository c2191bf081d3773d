"""The OpenAPI document says what the server does: every error is a documented problem+json
answer, lists page one way, and problem types are pages this server serves."""

from __future__ import annotations

import json

import pytest

from app.api import create_app
from app.api.problem_types import CATALOGUE
from app.errors import KilnError
from app.settings import Settings

UNREACHABLE = {"database_url": "postgresql://kiln@127.0.0.1:1/none",
               "redis_url": "redis://127.0.0.1:1/0"}
LISTS = ["/v1/jobs", "/v1/files", "/v1/webhooks", "/v1/jobs/{job_id}/webhooks", "/v1/models",
         "/v1/models/{name}"]


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(**UNREACHABLE))


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/openapi.json").get_json()


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_every_error_answer_is_a_documented_problem(spec):
    for method, path, operation in operations(spec):
        statuses = operation["responses"]
        if path.startswith("/v1/"):
            assert {"401", "500", "503"} <= set(statuses), (method, path)
        if "{" in path:
            assert "404" in statuses, (method, path)
        for status, response in statuses.items():
            if status[0] in "45":
                assert response["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, status)
                assert "/problems/" in response["description"]
    assert "ValidationErrorModel" not in spec["components"]["schemas"]
    assert "kiln.dev" not in json.dumps(spec)


def test_lists_page_one_way_and_the_old_cursor_is_deprecated(spec):
    for path in LISTS:
        operation = spec["paths"][path]["get"]
        params = {p["name"]: p for p in operation["parameters"]}
        assert params["limit"]["schema"]["maximum"] == 200, path
        assert params["after"]["schema"]["anyOf"][0]["format"] == "uuid", path
        page = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][page.rsplit("/", 1)[1]]
        assert {"object", "data", "first_id", "last_id", "has_more"} <= set(schema["properties"])
        assert schema["additionalProperties"] is False
    jobs = {p["name"]: p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert jobs["cursor"]["deprecated"] is True
    assert spec["components"]["schemas"]["JobList"]["properties"]["next_cursor"]["deprecated"]


def test_constraints_the_server_checks_are_in_the_schema(spec):
    schemas = spec["components"]["schemas"]
    submit = schemas["SubmitJob"]
    assert [branch["required"] for branch in submit["oneOf"]] == [["inputs"], ["input_file"]]
    assert submit["properties"]["inputs"]["maxItems"] == Settings(**UNREACHABLE).max_inline_inputs
    assert submit["properties"]["webhook_url"]["pattern"].startswith("^https://")
    assert schemas["SetAlias"]["properties"]["alias"]["not"] == {"enum": ["latest"]}
    assert schemas["UploadForm"]["properties"]["format"]["enum"][:3] == ["csv", "jsonl", "parquet"]
    upload = spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]
    disposition = upload["encoding"]["file"]["headers"]["Content-Disposition"]
    assert 'filename="input.csv"' in disposition["schema"]["example"]
    assert schemas["Problem"]["additionalProperties"] is True  # RFC 9457 extension members
    assert schemas["JobOut"]["additionalProperties"] is False
    links = spec["paths"]["/v1/jobs"]["post"]["responses"]["202"]["links"]
    assert links["JobResults"] == {"operationId": "job_results",
                                   "parameters": {"path.job_id": "$response.body#/id"}}


def test_problem_types_are_pages_served_here(app):
    client = app.test_client()
    for cls in (KilnError, *KilnError.__subclasses__()):
        if cls.__module__ == "app.errors":  # the API's errors (not, say, the supervisor's)
            assert cls.code in CATALOGUE
    page = client.get("/problems/quota_exceeded")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b"Quota exceeded" in page.data and b"429" in page.data
    assert b'href="/problems/not_found"' in client.get("/problems").data
    missing = client.get("/problems/no_such_thing")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert missing.get_json()["type"] == "/problems/not_found"


def test_the_base_url_leads_to_the_dashboard_and_a_wrong_method_says_what_is_allowed(app):
    client = app.test_client()
    root = client.get("/")
    assert root.status_code == 302 and root.headers["Location"] == "/ui/"
    wrong = client.post("/healthz")
    assert wrong.status_code == 405 and wrong.mimetype == "application/problem+json"
    assert wrong.get_json()["type"] == "/problems/method_not_allowed"
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}
