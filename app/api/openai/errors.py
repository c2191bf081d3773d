"""Errors in the dialect's shape, `{"error": {"message", "type", "param", "code"}}`, with the
status Kiln's own problem would have (app.api.problems decides it), except that a permanent
409 is a 400 here: the official client retries 409s."""

from __future__ import annotations

import orjson
import psycopg
from sqlalchemy.exc import DBAPIError, StatementError
from werkzeug.exceptions import HTTPException

from app.api import problems
from app.api.responses import Response, json_response
from app.errors import KilnError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error", 410: "invalid_request_error",
         413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}
HANDLERS = ((KilnError, problems.from_kiln_error), (HTTPException, problems.from_http_exception),
            (DBAPIError, problems.from_database_down), (psycopg.Error, problems.from_driver_error),
            (StatementError, problems.from_statement_error))


def error_response(status: int, message: str, code: str | None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": TYPES.get(status, "server_error"),
                      "param": param, "code": code}}
    return json_response(body, status, headers)


def from_exception(error: Exception) -> Response:
    """Any error raised under /openai/v1, as Kiln would judge it, in the dialect's shape."""
    handler = next((h for kind, h in HANDLERS if isinstance(error, kind)),
                   problems.from_unexpected)
    problem = handler(error)
    body = orjson.loads(problem.get_data())
    status = 400 if problem.status_code == 409 else problem.status_code
    code = body.get("type", "").rsplit("/", 1)[-1] or None
    param = getattr(error, "param", None)
    if param is None and isinstance(error, KilnError):
        param = next((e.get("field") for e in error.extra.get("errors") or []
                      if isinstance(e, dict)), None)
    headers = {k: v for k, v in problem.headers.items() if k == "Retry-After"}
    return error_response(status, body.get("detail") or body.get("title", ""), code, param,
                          headers)
