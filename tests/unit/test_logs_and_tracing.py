"""app.logs and app.tracing without processes: the JSON formatter's fields and masking, the
OTEL_* switch, and spans recorded by the SDK's in-memory exporter."""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import logs, origin, tracing

KEY = "kiln_0123abcd_" + "Zx9" * 14


def formatted(formatter: logging.Formatter, message: str, *args) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("kiln.test.logs")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    logger.info(message, *args)
    return stream.getvalue()


def test_a_json_line_carries_the_request_and_the_bound_job():
    token = origin.set_origin(request_id="req-1", tenant_id="t-1", actor="kiln_0123abcd")
    try:
        with logs.bound(job_id="job-9", chunk=3):
            line = orjson.loads(formatted(logs.json_formatter(), "scored %d rows", 12))
    finally:
        origin.reset(token)
    assert line["event"] == "scored 12 rows" and line["level"] == "info"
    assert (line["request_id"], line["tenant_id"], line["job_id"], line["chunk"]) == (
        "req-1", "t-1", "job-9", 3)
    assert line["logger"] == "kiln.test.logs" and line["timestamp"].endswith("Z")
    after = orjson.loads(formatted(logs.json_formatter(), "later"))
    assert "job_id" not in after and "request_id" not in after  # unbound on leaving


@pytest.mark.parametrize("make", [logs.json_formatter, logs.text_formatter])
def test_secrets_are_masked_in_both_formats(make):
    text = formatted(make(), "got %s with secret %s and header %s", KEY,
                     "whsec_c2VjcmV0c2VjcmV0c2VjcmV0", "Authorization: Bearer abc.def-ghi")
    assert KEY not in text and "c2VjcmV0" not in text and "abc.def-ghi" not in text
    assert "kiln_0123abcd_***" in text and "whsec_***" in text and "Bearer ***" in text


def test_traces_are_off_unless_the_standard_variables_ask():
    assert not tracing.requested({})
    assert not tracing.requested({"OTEL_TRACES_EXPORTER": "none",
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.configure("kiln-test", {})  # off: nothing installed
    assert tracing.inject({}) == {}
    with tracing.span("nothing") as nothing:
        assert nothing is None


def test_a_message_continues_the_publishers_trace(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_active", True)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("kiln"))
    with tracing.span("POST /v1/jobs", trace.SpanKind.SERVER):
        headers = tracing.inject({})
    assert headers["traceparent"].startswith("00-")
    with tracing.continued(headers, "kiln.run_job", trace.SpanKind.CONSUMER, job_id="j"):
        with tracing.span("kiln.model.run", rows=64):
            pass
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/jobs", "kiln.run_job", "kiln.model.run"}
    assert len({span.context.trace_id for span in spans.values()}) == 1
    assert spans["kiln.run_job"].parent.span_id == spans["POST /v1/jobs"].context.span_id
    assert spans["kiln.model.run"].attributes["rows"] == 64
