"""The problem types Kiln answers with, and the short page each `type` URI serves.

A problem's `type` is `/problems/<code>`, relative to the API's own base URL (RFC 9457 allows a
relative reference), so it never names a domain Kiln does not own. The catalogue is built from the
error hierarchy (`app.errors`: each class's code, status, title and "Raised when…" line), plus
the few types that come from outside it (request validation, the HTTP layer, the database).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from flask import Blueprint

from app import errors
from app.api.responses import Response
from app.errors import KilnError, NotFound

PROBLEM_BASE = "/problems/"
bp = Blueprint("problem_types", __name__)


@dataclass(frozen=True)
class ProblemType:
    code: str
    status: int
    title: str
    description: str


# Types that no KilnError class raises: the HTTP layer's, request validation's, the database's.
EXTRA = (
    ProblemType("method_not_allowed", 405, "Method not allowed",
                "Raised when the path exists but not for this HTTP method; the `Allow` header "
                "lists the methods it answers."),
    ProblemType("unsupported_media_type", 415, "Unsupported media type",
                "Raised when a body is sent with a content type the operation does not read "
                "(JSON bodies are `application/json`, uploads `multipart/form-data`)."),
    ProblemType("not_acceptable", 406, "Not acceptable",
                "Raised when the `Accept` header allows none of the types the operation answers."),
    ProblemType("http_error", 400, "HTTP error",
                "Raised by the HTTP layer for a request it cannot serve; `status` and `detail` "
                "say which."),
)


def _hierarchy(root: type[KilnError]) -> list[type[KilnError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_hierarchy(sub))
    return found


def _described(cls: type[KilnError]) -> str:
    return " ".join((cls.__doc__ or cls.title).split())


def build_catalogue() -> dict[str, ProblemType]:
    """Every problem type of the API, by code (the first class to claim a code describes it)."""
    catalogue: dict[str, ProblemType] = {}
    for cls in _hierarchy(KilnError):
        if cls.__module__ == errors.__name__ and cls.code not in catalogue:
            catalogue[cls.code] = ProblemType(cls.code, cls.status, cls.title, _described(cls))
    for extra in EXTRA:
        catalogue.setdefault(extra.code, extra)
    catalogue["database_unavailable"] = ProblemType(
        "database_unavailable", 503, "Service unavailable",
        "Raised when Postgres could not be reached to serve the request; retry after the "
        "`Retry-After` seconds.")
    return catalogue


CATALOGUE = build_catalogue()
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Kiln problem types</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:3rem auto;padding:0 1rem;
line-height:1.5}}code{{background:#f3f3f3;padding:0 .2em}}</style></head>
<body>{body}<p><a href="/problems">All problem types</a> · <a href="/docs">API docs</a></p>
</body></html>"""


def type_uri(code: str) -> str:
    return PROBLEM_BASE + code


def http_code(name: str | None, status: int) -> str:
    """The problem code of a werkzeug HTTP error: one of the catalogue's, else `http_error`."""
    by_status = {e.status: e.code for e in CATALOGUE.values()
                 if e.code in ("not_found", "payload_too_large", "bad_request")}
    code = (name or "").lower().replace(" ", "_")
    if code in CATALOGUE and CATALOGUE[code].status == status:
        return code
    return by_status.get(status, "http_error")


def _html(title: str, body: str) -> Response:
    return Response(PAGE.format(title=html.escape(title), body=body), mimetype="text/html")


@bp.get("/problems")
def problem_index() -> Response:
    rows = "".join(f'<li><a href="{type_uri(p.code)}"><code>{p.code}</code></a> ({p.status}): '
                   f"{html.escape(p.title)}</li>" for p in sorted(CATALOGUE.values(),
                                                                   key=lambda p: p.code))
    return _html("All problem types", "<h1>Kiln problem types</h1><p>Every error answer is "
                 "<code>application/problem+json</code> (RFC 9457); its <code>type</code> is one "
                 f"of these pages.</p><ul>{rows}</ul>")


@bp.get("/problems/<code>")
def problem_page(code: str) -> Response:
    found = CATALOGUE.get(code)
    if found is None:
        raise NotFound(f"no problem type {code!r}; see /problems")
    return _html(found.title, f"<h1>{html.escape(found.title)}</h1>"
                 f"<p>Type <code>{type_uri(found.code)}</code>, HTTP status "
                 f"<strong>{found.status}</strong>.</p><p>{html.escape(found.description)}</p>"
                 "<p>The answer's <code>detail</code> says what happened in this case, and "
                 "<code>instance</code> names the request's path.</p>")
