"""The OpenAPI document, finished in one place after flask-openapi3 generates it.

Routes declare their bodies and the errors particular to them; what every operation of a kind
can answer is added here, from what the server does for that kind:

- every `/v1` operation: 401 (no or a bad key), 500, and 503 (the database is unreachable);
- an operation with path parameters: 404; with query parameters or a body: 422;
- a JSON body: 400 (not JSON), 413 (too large), 415 (not `application/json`);
- every 4xx/5xx answer is `application/problem+json` with the one `Problem` schema, its
  description linking the problem types (`/problems/<code>`) of that status;
- response objects are closed (`additionalProperties: false`); `Problem` stays open (RFC 9457
  extension members such as `errors`);
- the `links` that lead from a created resource to what can be done with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.api.problem_types import CATALOGUE, PROBLEM_BASE
from app.api.schemas import NAMED_WEBHOOK_URL
from app.settings import Settings

REF = "#/components/schemas/"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
SERVER_ERRORS = ("500", "503")
HEADERS = {
    "Location": {"description": "The created resource.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 1}},
    "Allow": {"description": "The methods the path answers.", "schema": {"type": "string"}},
}
PROBLEM_SCHEMA = {
    "title": "Problem",
    "description": "RFC 9457 problem details. `type` is a page of this server's, "
                   f"`{PROBLEM_BASE}<code>`, that explains the problem; `/problems` lists them.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference", "pattern": "^/problems/[a-z_]+$",
                 "description": "The problem type: a page of this server's."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": ["string", "null"], "description": "The request's path."},
        "errors": {"type": "array", "description": "Invalid input: one entry per bad field.",
                   "items": {"type": "object", "properties": {
                       "field": {"type": ["string", "null"]}, "message": {"type": "string"},
                       "code": {"type": "string"}}}},
    },
    "additionalProperties": True,
    "externalDocs": {"description": "The problem types", "url": "/problems"},
}
TEXT_MEDIA = ("text/csv", "application/x-ndjson")
# Non-JSON success answers: the media types each streams.
RAW_ANSWERS = {
    ("get", "/v1/jobs/{job_id}/results"): (
        "Inline jobs: JSON lines. File jobs: rows in the input's format, or `format`.",
        ("application/x-ndjson", "text/csv", "application/vnd.apache.parquet")),
    ("get", "/v1/jobs/{job_id}/errors"): (
        "A file job's failed rows, in the input's format or `format`.",
        ("application/x-ndjson", "text/csv", "application/vnd.apache.parquet")),
    ("get", "/v1/files/{file_id}/content"): (
        "The file's bytes as uploaded.",
        ("text/csv", "application/x-ndjson", "application/vnd.apache.parquet",
         "application/gzip", "application/octet-stream")),
}


def finish(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The generated document, completed and made to say what the server does."""
    schemas = doc["components"]["schemas"]
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas.pop("ValidationErrorModel", None)
    for method, path, operation in operations(doc):
        add_generic_statuses(path, operation)
        for status, response in operation["responses"].items():
            if status[0] in "45":
                make_problem(status, response)
        answer_raw_content(method, path, operation)
        name_uploads(operation)
        if operation.get("operationId") in ("submit_job", "estimate_job"):
            operation["requestBody"]["content"][JSON]["examples"] = SUBMIT_EXAMPLES
        document_headers(operation["responses"])
    constrain_requests(schemas, settings)
    close_response_objects(doc, schemas)
    for schema in schemas.values():
        drop_impossible_defaults(schema)
    add_links(doc)
    doc["info"]["description"] += (" Errors are `application/problem+json` (RFC 9457); each "
                                   "problem `type` is a page here: see [/problems](/problems).")
    return doc


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method, path, operation


def add_generic_statuses(path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    params = operation.get("parameters", [])
    body = operation.get("requestBody", {}).get("content", {})
    generic: list[str] = []
    if path.startswith("/v1/"):
        generic += ["401", *SERVER_ERRORS]
    if any(p["in"] == "path" for p in params):
        generic.append("404")
    if any(p["in"] == "query" for p in params) or body:
        generic.append("422")
    else:  # flask-openapi3 adds a 422 to every operation; one without input cannot answer it
        responses.pop("422", None)
    if JSON in body:
        generic += ["400", "413", "415"]
    elif body:  # multipart: too large, or a body that is not multipart at all
        generic += ["413"]
    for status in generic:
        responses.setdefault(status, {})
    operation["responses"] = dict(sorted(responses.items()))


def make_problem(status: str, response: dict[str, Any]) -> None:
    codes = sorted(p.code for p in CATALOGUE.values() if str(p.status) == status)
    links = ", ".join(f"[`{c}`]({PROBLEM_BASE}{c})" for c in codes)
    response["description"] = f"Problem{': ' + links if links else ''}."
    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": REF + "Problem"}}}


def answer_raw_content(method: str, path: str, operation: dict[str, Any]) -> None:
    found = RAW_ANSWERS.get((method, path))
    if found:
        description, media = found
        operation["responses"]["200"] = {
            "description": description,
            "content": {m: {"schema": {"type": "string"} if m in TEXT_MEDIA
                            else {"type": "string", "format": "binary"}} for m in media}}


UPLOAD_ENCODING = {"file": {
    "contentType": "text/csv, application/x-ndjson, application/vnd.apache.parquet, "
                   "application/gzip, application/octet-stream",
    "headers": {"Content-Disposition": {
        "description": "The file name tells the format: `.csv`, `.jsonl` or `.parquet`, "
                       "optionally `.gz` (not for Parquet), unless `format` is sent.",
        "schema": {"type": "string",
                   "example": 'form-data; name="file"; filename="input.csv"'}}}}}


DIGITS_RECORD = {f"p{i}": float(i % 17) for i in range(64)}
SUBMIT_EXAMPLES = {
    "inline": {"summary": "Score two records with the built-in `digits` model",
               "value": {"model": "digits", "inputs": [DIGITS_RECORD, DIGITS_RECORD],
                         "metadata": {"run": "example"}}},
    "file": {"summary": "Score an uploaded file (`POST /v1/files`)",
             "value": {"model": "digits", "input_file": "3f2c1a9e-0000-4000-8000-000000000000",
                       "output_format": "jsonl"}},
}


def name_uploads(operation: dict[str, Any]) -> None:
    """A file upload's part carries a file name that tells its format."""
    media = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if media and media["schema"].get("$ref") == REF + "UploadForm":
        media["encoding"] = UPLOAD_ENCODING


def document_headers(responses: dict[str, Any]) -> None:
    for status, response in responses.items():
        wanted = {"201": ["Location"], "202": ["Location"], "429": ["Retry-After"],
                  "503": ["Retry-After"]}.get(status, [])
        if wanted:
            response.setdefault("headers", {}).update({h: HEADERS[h] for h in wanted})


def constrain_requests(schemas: dict[str, Any], settings: Settings) -> None:
    """Limits that come from settings, which the models cannot know when they are defined."""
    schemas["SubmitJob"]["properties"]["inputs"]["maxItems"] = settings.max_inline_inputs
    # The file's name tells its format (without `format`): documented where clients look for it.
    upload = schemas["UploadForm"]
    upload["description"] = ("Multipart. The `file` part's name ends in `.csv`, `.jsonl` or "
                             "`.parquet` (optionally `.gz`, not for Parquet), else send `format`.")
    for name, field in (("CreateWebhook", "url"), ("SubmitJob", "webhook_url")):
        prop = schemas[name]["properties"][field]
        if not (settings.webhook_allow_private or settings.webhook_allowed_hosts):
            prop["pattern"] = NAMED_WEBHOOK_URL  # IP literals are refused
        if not settings.webhook_allow_private:  # plain http is refused
            prop["pattern"] = prop["pattern"].replace("^https?://", "^https://", 1)


def referenced(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF):
            yield ref[len(REF):]
        for value in node.values():
            yield from referenced(value)
    elif isinstance(node, list):
        for value in node:
            yield from referenced(value)


def close_response_objects(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Every object a response is made of says it holds nothing more than its properties."""
    seen: set[str] = set()
    todo = [name for _, _, op in operations(doc) for name in referenced(op["responses"])]
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        schema = schemas[name]
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
        todo.extend(referenced(schema))


def drop_impossible_defaults(schema: Any) -> None:
    """pydantic writes `default: null` for a field that is optional but never null."""
    if isinstance(schema, dict):
        if schema.get("default", 0) is None and not allows_null(schema):
            del schema["default"]
        for value in schema.values():
            drop_impossible_defaults(value)
    elif isinstance(schema, list):
        for value in schema:
            drop_impossible_defaults(value)


def allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(allows_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def operation_ids(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(method, path): op["operationId"] for method, path, op in operations(doc)}


# (method, path) of the answer -> {link name: (method, path, parameters)}
LINKS = {
    ("post", "/v1/jobs"): {
        "GetJob": ("get", "/v1/jobs/{job_id}"), "JobResults": ("get", "/v1/jobs/{job_id}/results"),
        "JobErrors": ("get", "/v1/jobs/{job_id}/errors"),
        "CancelJob": ("post", "/v1/jobs/{job_id}/cancel"),
        "JobWebhookDeliveries": ("get", "/v1/jobs/{job_id}/webhooks"),
        "DeleteJob": ("delete", "/v1/jobs/{job_id}")},
    ("post", "/v1/jobs/{job_id}/retry"): {
        "GetJob": ("get", "/v1/jobs/{job_id}"), "JobResults": ("get", "/v1/jobs/{job_id}/results")},
    ("post", "/v1/files"): {
        "GetFile": ("get", "/v1/files/{file_id}"),
        "FileContent": ("get", "/v1/files/{file_id}/content"),
        "DeleteFile": ("delete", "/v1/files/{file_id}")},
    ("post", "/v1/webhooks"): {
        "GetWebhook": ("get", "/v1/webhooks/{webhook_id}"),
        "RotateWebhookSecret": ("post", "/v1/webhooks/{webhook_id}/rotate-secret"),
        "EnableWebhook": ("post", "/v1/webhooks/{webhook_id}/enable"),
        "DeleteWebhook": ("delete", "/v1/webhooks/{webhook_id}")},
    ("post", "/v1/models"): {
        "GetModel": ("get", "/v1/models/{name}")},
}
CREATED = {"post": ("201", "202")}


def add_links(doc: dict[str, Any]) -> None:
    """From a created resource (its id, or a model's name) to the operations on it."""
    ids = operation_ids(doc)
    for (method, path), links in LINKS.items():
        responses = doc["paths"][path][method]["responses"]
        status = next(s for s in CREATED[method] if s in responses)
        built = {}
        for name, (to_method, to_path) in links.items():
            param = to_path.rsplit("{", 1)[1].split("}")[0]
            source = "$response.body#/name" if param == "name" else "$response.body#/id"
            built[name] = {"operationId": ids[(to_method, to_path)],
                           "parameters": {f"path.{param}": source}}
        responses[status]["links"] = built


def operation_id(*, name: str, path: str, method: str) -> str:
    """An operation's id is its handler's name (`submit_job`): generated clients read well."""
    return name
