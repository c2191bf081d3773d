"""Each request's origin: its id (the client's `X-Request-Id`, or a new one), echoed in the
answer, and the client's address, bound for the audit log and the log lines (`app.origin`)."""

from __future__ import annotations

import re

from flask import Flask, g, request

from app import origin
from app.api.responses import Response

HEADER = "X-Request-Id"
# A client's id is kept when it is short and plain (it lands in logs and the audit log).
ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def bind_origin() -> None:
    given = request.headers.get(HEADER, "")
    request_id = given if ACCEPTED.fullmatch(given) else origin.new_request_id()
    g.origin_token = origin.set_origin(request_id=request_id, client_ip=request.remote_addr,
                                       actor=None, tenant_id=None)


def echo_request_id(response: Response) -> Response:
    request_id = origin.current().request_id
    if request_id:
        response.headers[HEADER] = request_id
    return response


def unbind_origin(_exc: BaseException | None = None) -> None:
    token = g.pop("origin_token", None)
    if token is not None:
        origin.reset(token)


def init_app(app: Flask) -> None:
    """First of the request hooks, so that every other one (and its errors) has the id."""
    app.before_request_funcs.setdefault(None, []).insert(0, bind_origin)
    app.after_request(echo_request_id)
    app.teardown_request(unbind_origin)
