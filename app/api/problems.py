"""RFC 9457 problem+json: every error the API returns goes through here."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
from flask import Flask, request
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, StatementError
from werkzeug.exceptions import HTTPException

from app import origin
from app.api.problem_types import http_code, type_uri
from app.api.responses import Response
from app.errors import KilnError, TooManyRequests

log = logging.getLogger(__name__)

# A lost database is usually back within seconds (a failover, or `kiln up` restarting it).
DATABASE_RETRY_AFTER_SECONDS = 2


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": type_uri(code), "title": title, "status": status, "detail": detail,
            "instance": request.path, "request_id": origin.current().request_id, **extra}
    return Response(orjson.dumps(body), status=status, mimetype="application/problem+json")


def from_kiln_error(error: KilnError) -> Response:
    response = problem(error.status, error.code, error.title, error.detail, **error.extra)
    if isinstance(error, TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after_seconds)
    return response


def from_validation_error(error: ValidationError) -> Response:
    """Pydantic request validation failures become a 422 naming each bad field."""
    errors = [{"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"],
               "code": e["type"]} for e in error.errors(include_url=False, include_input=False)]
    first = errors[0] if errors else {"field": None, "message": "invalid request"}
    return problem(422, "invalid_input", "Invalid input",
                   f"{first['field']}: {first['message']}", errors=errors)


def from_http_exception(error: HTTPException) -> Response:
    """werkzeug's errors (404, 405 with its `Allow` header, 413, 415) as problems, headers kept."""
    status = error.code or 500
    response = problem(status, http_code(error.name, status), error.name,
                       error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def from_database_down(error: DBAPIError) -> Response:
    """A database error raised through SQLAlchemy: judged by the driver's error inside."""
    return from_driver_error(error.orig, invalidated=error.connection_invalidated)


def from_driver_error(error: BaseException, invalidated: bool = False) -> Response:
    """A database error, raised by psycopg itself (the submit writer's connection) or through
    SQLAlchemy: a value Postgres refuses to store (e.g. \\u0000 in a JSON string) is the
    caller's 422; a lost or unreachable database is a 503; anything else is a 500."""
    if isinstance(error, psycopg.DataError):
        return problem(422, "invalid_input", "Invalid input",
                       f"a value cannot be stored: {str(error).splitlines()[0]}")
    if invalidated or isinstance(error, (OSError, psycopg.OperationalError,
                                         psycopg.InterfaceError)):
        log.warning("database unavailable: %s", error)
        response = problem(503, "database_unavailable", "Service unavailable",
                           "the database is unreachable; retry shortly")
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    return from_unexpected(error)  # logs the exception being handled


def from_statement_error(error: StatementError) -> Response:
    """A KilnError raised while binding parameters (e.g. by the JSON serializer) keeps its type."""
    if isinstance(error.orig, KilnError):
        return from_kiln_error(error.orig)
    return from_unexpected(error)


def from_unexpected(error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "internal_error", "Internal error", "an unexpected error occurred")


def init_app(app: Flask) -> None:
    app.register_error_handler(KilnError, from_kiln_error)
    app.register_error_handler(HTTPException, from_http_exception)
    app.register_error_handler(DBAPIError, from_database_down)
    app.register_error_handler(psycopg.Error, from_driver_error)
    app.register_error_handler(StatementError, from_statement_error)
    app.register_error_handler(Exception, from_unexpected)
