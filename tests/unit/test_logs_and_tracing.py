"""app.logs and app.tracing without processes: the JSON formatter's fields and masking, the
OTEL_* switch, and spans recorded by the SDK's in-memory exporter."""

from __future__ import annotations

import io
import logging
import uuid

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


def test_the_default_format_is_text_on_a_terminal_and_json_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolved_format(None, Terminal()) == "text"
    assert logs.resolved_format(None, io.StringIO()) == "json"
    assert logs.resolved_format("text", io.StringIO()) == "text"
    assert logs.resolved_format("json", Terminal()) == "json"


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


@pytest.fixture
def memory(monkeypatch) -> InMemorySpanExporter:
    """Tracing on, into the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_active", True)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("kiln"))
    return exporter


def submitted(name: str) -> str:
    """The context a job submitted inside a request span `name` stores."""
    with tracing.span(name, trace.SpanKind.SERVER):
        return tracing.stored_context()


def test_a_job_span_continues_the_stored_context_whoever_published_it(memory):
    stored = submitted("POST /v1/jobs")
    assert orjson.loads(stored)["traceparent"].startswith("00-")
    with tracing.span("kiln.run_chunk of another job"):
        other = tracing.inject({})  # e.g. dispatch_next publishing this job's chunk
    with tracing.span_in_trace("kiln.publish run_job"):  # the reconciler: no trace, no span
        republished = tracing.inject({})
    assert republished == {}
    for carrier in (republished, other):
        with tracing.continued(carrier, "kiln.run_job", trace.SpanKind.CONSUMER,
                               stored=lambda: stored):
            pass
    spans = memory.get_finished_spans()
    request = next(s for s in spans if s.name == "POST /v1/jobs")
    runs = [s for s in spans if s.name == "kiln.run_job"]
    assert [s.context.trace_id for s in runs] == [request.context.trace_id] * 2
    assert all(s.parent.span_id == request.context.span_id for s in runs)
    assert not runs[0].links
    assert [link.context.trace_id for link in runs[1].links] == [
        next(s for s in spans if s.name == "kiln.run_chunk of another job").context.trace_id]
    assert "kiln.publish run_job" not in {s.name for s in spans}


def test_one_model_call_over_several_jobs_links_each_jobs_trace(memory):
    from workers.inline import job_rows, score
    from workers.runtime.metered import MeteredModel
    from app.store.jobs import ClaimedJob

    class Echo:
        def run(self, batch):
            return [{"echo": record} for record in batch]

    contexts = [submitted(f"POST /v1/jobs {i}") for i in range(3)]
    jobs = [ClaimedJob(uuid.uuid4(), uuid.uuid4(), 1, uuid.uuid4(), [{"x": i}, {"x": -i}], 2,
                       trace_context=stored) for i, stored in enumerate([*contexts, None])]
    with tracing.span("kiln.run_job"):
        outputs = score(MeteredModel(Echo(), "echo"), job_rows(jobs))
    assert len(outputs) == 8
    spans = memory.get_finished_spans()
    model_run = next(s for s in spans if s.name == "kiln.model.run")
    job_traces = {s.context.trace_id for s in spans if s.name.startswith("POST /v1/jobs")}
    assert len(job_traces) == 3 and model_run.context.trace_id not in job_traces
    assert {link.context.trace_id for link in model_run.links} == job_traces
    assert len(model_run.links) == 3  # one per job, not per row
    assert model_run.attributes["rows"] == 8


def test_tracing_off_stores_and_links_nothing():
    assert tracing.stored_context() is None and tracing.batch_links() == ()
    with tracing.linking(["{}"]), tracing.span_in_trace("x") as nothing:
        assert nothing is None
