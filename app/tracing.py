"""OpenTelemetry traces, off unless the standard variables ask for them.

`OTEL_TRACES_EXPORTER` (`otlp`, `console`, or both, comma-separated; `none` is off) or
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turn them on; the other
OTEL_* variables (service name, headers, batch delays, sampler) are the SDK's. The SDK and the
OTLP exporter are the `otel` extra (`pip install 'kiln[otel]'`).

Off, nothing here runs but a check of one module flag: no span objects, no context work.
On, one trace follows a job: the API request (continuing a client's `traceparent`), the
publish of its Celery message (which carries the trace context in its headers), the worker's
task, each model call and the database statements in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind

_active = False


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


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any):
    """A span as a context manager while tracing is on; a no-op context otherwise."""
    if not _active:
        return nullcontext()
    return tracer().start_as_current_span(
        name, kind=kind, attributes={k: v for k, v in attributes.items() if v is not None})


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (`traceparent`, `tracestate`) to `headers`."""
    if _active:
        propagate.inject(headers)
    return headers


@contextmanager
def continued(carrier: Mapping[str, str], name: str, kind: SpanKind,
              **attributes: Any) -> Iterator[None]:
    """A span that continues the trace whose context `carrier` holds (message headers)."""
    if not _active:
        yield
        return
    token = context.attach(propagate.extract(dict(carrier)))
    try:
        with span(name, kind, **attributes):
            yield
    finally:
        context.detach(token)


def instrument_engine(engine: Any) -> None:
    """A client span for each statement the engine runs (while tracing is on)."""
    if not _active:
        return
    from sqlalchemy import event

    def before(_conn, _cursor, statement, _params, execution, _many):
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
