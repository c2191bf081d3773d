"""Each request's origin: its id (the client's `X-Request-Id`, or a new one), echoed in the
answer, and the client's address, bound for the audit log and the log lines (`app.origin`)."""

from __future__ import annotations

import re

from flask import Flask, g, request

from app import origin, tracing
from app.api.responses import Response

HEADER = "X-Request-Id"
# A client's id is kept when it is short and plain (it lands in logs and the audit log).
ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def bind_origin() -> None:
    given = request.headers.get(HEADER, "")
    request_id = given if ACCEPTED.fullmatch(given) else origin.new_request_id()
    g.origin_token = origin.set_origin(request_id=request_id, client_ip=request.remote_addr,
                                       actor=None, tenant_id=None)
    if tracing.active():
        start_request_span(request_id)


def start_request_span(request_id: str) -> None:
    """The request's server span, continuing the client's `traceparent` when it sends one."""
    from opentelemetry import context, propagate, trace

    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    carrier = {name.lower(): value for name, value in request.headers.items()}
    span = tracing.tracer().start_span(
        f"{request.method} {route}", context=propagate.extract(carrier),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route,
                    "kiln.request_id": request_id})
    g.trace_span = span
    g.trace_token = context.attach(trace.set_span_in_context(span))


def echo_request_id(response: Response) -> Response:
    request_id = origin.current().request_id
    if request_id:
        response.headers[HEADER] = request_id
    span = g.get("trace_span")
    if span is not None:
        span.set_attribute("http.response.status_code", response.status_code)
        if origin.current().tenant_id:
            span.set_attribute("kiln.tenant_id", origin.current().tenant_id)
    return response


def unbind_origin(_exc: BaseException | None = None) -> None:
    token = g.pop("origin_token", None)
    if token is not None:
        origin.reset(token)
    span = g.pop("trace_span", None)
    if span is not None:
        from opentelemetry import context

        span.end()
        context.detach(g.pop("trace_token"))


def init_app(app: Flask) -> None:
    """First of the request hooks, so that every other one (and its errors) has the id."""
    app.before_request_funcs.setdefault(None, []).insert(0, bind_origin)
    app.after_request(echo_request_id)
    app.teardown_request(unbind_origin)
