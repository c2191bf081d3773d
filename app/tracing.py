"""OpenTelemetry traces, off unless the standard variables ask for them.

`OTEL_TRACES_EXPORTER` (`otlp`, `console`, or both, comma-separated; `none` is off) or
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turn them on; the other
OTEL_* variables (service name, headers, batch delays, sampler) are the SDK's. The SDK and the
OTLP exporter are the `otel` extra (`pip install 'kiln[otel]'`).

Off, nothing here runs but a check of one module flag: no span objects, no context work.
On, one trace follows a job: the API request (continuing a client's `traceparent`), whose
context the job row keeps (`jobs.trace_context`, see `stored_context`), the publish of its Celery
message (which carries the trace context in its headers), the worker's task (under the job's
stored context, so a message the reconciler re-publishes, which carries none, stays in the
job's trace), each model call and the database statements in between, and each webhook
delivery (whose `traceparent` header the receiver may continue). A model call that scores
several jobs' rows links to each job's trace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import orjson
from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind

_active = False
CARRIED = ("traceparent", "tracestate")
# The links of the model calls made inside `linking` (the jobs whose rows a batch scores).
_batch_links: ContextVar[tuple[Link, ...]] = ContextVar("kiln_batch_links", default=())


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return bool(exporters or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def active() -> bool:
    return _active


def configure(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Install the SDK's tracer provider for this process when the environment asks for
    traces; returns whether it did. Call it in each process that makes spans (after a fork)."""
    global _active
    if _active or not requested(environ):
        return _active
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for exporter in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter.strip().lower(),
                                                                 environ)))
    trace.set_tracer_provider(provider)
    _active = True
    return True


def _exporter(name: str, environ: Mapping[str, str]):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: Kiln knows otlp, console and none")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                           environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs "
                             "`pip install opentelemetry-exporter-otlp-proto-grpc`") from None
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def flush(timeout_millis: int = 5000) -> None:
    """Send the spans still buffered (before a process exits)."""
    if _active:
        trace.get_tracer_provider().force_flush(timeout_millis)


def tracer() -> trace.Tracer:
    return trace.get_tracer("kiln")


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, links: Sequence[Link] = (),
         **attributes: Any):
    """A span as a context manager while tracing is on; a no-op context otherwise."""
    if not _active:
        return nullcontext()
    return tracer().start_as_current_span(
        name, kind=kind, links=list(links) or None,
        attributes={k: v for k, v in attributes.items() if v is not None})


def span_in_trace(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any):
    """`span`, but only inside a trace already begun: a background pass (the reconciler, the
    coalescer's flush) starts no trace of its own, so its messages carry no context and the
    worker continues the job's stored one."""
    if not _active or not trace.get_current_span().get_span_context().is_valid:
        return nullcontext()
    return span(name, kind, **attributes)


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (while tracing is on)."""
    if _active:
        trace.get_current_span().set_attributes(
            {k: v for k, v in attributes.items() if v is not None})


def stored_context() -> str | None:
    """The current span's context as a job row keeps it (`jobs.trace_context`): JSON of its
    `traceparent` (and `tracestate`); None while tracing is off or outside any trace."""
    if not _active:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    kept = {name: carrier[name] for name in CARRIED if name in carrier}
    return orjson.dumps(kept).decode() if "traceparent" in kept else None


def stored_carrier(stored: str | None) -> dict[str, str]:
    """A `stored_context` back as a carrier (`traceparent`, `tracestate`); {} when none."""
    if not stored:
        return {}
    try:
        value = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {name: value[name] for name in CARRIED if isinstance(value.get(name), str)}


def _span_context(carrier: Mapping[str, str]) -> SpanContext | None:
    found = trace.get_current_span(propagate.extract(dict(carrier))).get_span_context()
    return found if found.is_valid else None


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (`traceparent`, `tracestate`) to `headers`."""
    if _active:
        propagate.inject(headers)
    return headers


@contextmanager
def continued(carrier: Mapping[str, str], name: str, kind: SpanKind,
              stored: Callable[[], str | None] | None = None,
              **attributes: Any) -> Iterator[None]:
    """A span in the trace of the job whose message `carrier` holds (message headers).

    `stored()` (called only while tracing is on) gives the job's stored context: the span
    continues it, unless the message comes from the same trace (then the publish span is the
    parent). A message from another trace, or none, is the job's all the same: the other trace
    (another job's work that published it) is linked.
    """
    if not _active:
        yield
        return
    parent, links = job_parent(dict(carrier), stored() if stored is not None else None)
    token = context.attach(propagate.extract(parent))
    try:
        with span(name, kind, links=links, **attributes):
            yield
    finally:
        context.detach(token)


def job_parent(message: dict[str, str], stored: str | None) -> tuple[dict[str, str], list[Link]]:
    """The carrier a job's span continues, and the links it gets (see `continued`)."""
    job = stored_carrier(stored)
    job_span = _span_context(job) if job else None
    message_span = _span_context(message) if message else None
    if job_span is None or (message_span is not None
                            and message_span.trace_id == job_span.trace_id):
        return message, []
    return job, [Link(message_span)] if message_span is not None else []


def linking(stored: Iterable[str | None]):
    """Inside, each model call's span (`batch_links`) links to every trace of `stored` (the
    stored contexts of the jobs whose rows it scores); a no-op context while tracing is off."""
    if not _active:
        return nullcontext()
    return _linking(stored)


@contextmanager
def _linking(stored: Iterable[str | None]) -> Iterator[None]:
    links, seen = [], set()
    for value in stored:
        if value and value not in seen:
            seen.add(value)
            if (found := _span_context(stored_carrier(value))) is not None:
                links.append(Link(found))
    token = _batch_links.set(tuple(links))
    try:
        yield
    finally:
        _batch_links.reset(token)


def batch_links() -> tuple[Link, ...]:
    """The links `linking` set for the model calls made here; () outside it."""
    return _batch_links.get() if _active else ()


def instrument_engine(engine: Any) -> None:
    """A client span for each statement the engine runs inside a trace (while tracing is on):
    a background pass's statements (the reconciler's, the webhook dispatcher's polls) are none."""
    if not _active:
        return
    from sqlalchemy import event

    def before(_conn, _cursor, statement, _params, execution, _many):
        if not trace.get_current_span().get_span_context().is_valid:
            return
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        span = tracer().start_span(f"db {verb}", kind=SpanKind.CLIENT, attributes={
            "db.system.name": "postgresql", "db.query.text": statement[:1000]})
        execution._kiln_span = span

    def after(_conn, _cursor, _statement, _params, execution, _many):
        span = getattr(execution, "_kiln_span", None)
        if span is not None:
            span.end()

    def failed(exception_context):
        execution = exception_context.execution_context
        span = getattr(execution, "_kiln_span", None) if execution is not None else None
        if span is not None:
            span.record_exception(exception_context.original_exception)
            span.set_status(trace.Status(trace.StatusCode.ERROR))
            span.end()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)
