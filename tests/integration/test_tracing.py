"""OpenTelemetry end to end: the API and worker processes export OTLP/HTTP to a small receiver
here, and one submitted file job is one trace, from the client's `traceparent` through the
API's request, the published messages and the worker's tasks to each model call and its
webhook delivery (whose receiver gets the trace's `traceparent`); a job whose message was lost
stays in its trace when the reconciler re-publishes it."""

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests import support
from tests.integration.test_webhooks import RECORD
from tests.integration.test_webhooks import Receiver as WebhookReceiver
from workers.demo_models import DIGITS_COLUMNS

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
LOST_TRACE = "5cf92f3577b34da6a3ce929d0e0e4737"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP (protobuf) trace receiver: every span it was sent, as
    (service, trace id, span name, attributes)."""

    def __init__(self):
        self.spans: list[tuple[str, str, str, dict]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ReceiverHandler)


class ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource in request.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes
                               if a.key == "service.name")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: a.value for a in span.attributes}
                        self.server.spans.append((service, span.trace_id.hex(), span.name,
                                                  attributes))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_one_file_job_is_one_trace_across_the_api_and_the_worker(make_stack, receiver):
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    stack = make_stack(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                       OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                       KILN_WEBHOOK_ALLOW_PRIVATE="true")
    stack.add_digits()
    api = support.start_api(stack.env, stack.logdir)
    worker = None
    try:
        key = stack.create_key()
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"},
                          timeout=30) as kiln, WebhookReceiver() as hooks:
            lost_id = submit_and_lose_its_message(kiln, stack)
            worker = support.start_worker(stack.env, stack.logdir)
            # the republished message runs the lost job before the file job starts: a chunk
            # running meanwhile may score it between its batches instead (workers/small_jobs.py)
            support.wait_for(lambda: kiln.get(f"/v1/jobs/{lost_id}").json()["status"]
                             == "succeeded", timeout=60, message="the lost job")
            rows = "".join(",".join("2" for _ in DIGITS_COLUMNS) + "\n" for _ in range(30))
            data = (",".join(DIGITS_COLUMNS) + "\n" + rows).encode()
            file_id = kiln.post("/v1/files", files={"file": ("in.csv", data)}).json()["id"]
            submitted = kiln.post("/v1/jobs", json={"model": "digits", "input_file": file_id,
                                                    "webhook_url": hooks.url + "/hook"},
                                  headers={"traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            for wanted_id in (job_id, lost_id):
                support.wait_for(lambda wanted=wanted_id: kiln.get(f"/v1/jobs/{wanted}").json()[
                    "status"] in ("succeeded", "failed"), timeout=90, message="the jobs")
                assert kiln.get(f"/v1/jobs/{wanted_id}").json()["status"] == "succeeded"
            delivered = hooks.wait(1)[0]
        traceparent = {k.lower(): v for k, v in delivered.headers.items()}["traceparent"]
        assert traceparent.split("-")[1] == CLIENT_TRACE  # the receiver can continue the trace

        def job_trace():
            with receiver.lock:
                spans = [s for s in receiver.spans if s[1] == CLIENT_TRACE]
                lost = {name for service, trace, name, _ in receiver.spans
                        if trace == LOST_TRACE and service == "kiln-worker"}
            names = {(service, name) for service, _, name, _ in spans}
            wanted = {("kiln-api", "POST /v1/jobs"), ("kiln-api", "kiln.publish run_job"),
                      ("kiln-worker", "kiln.run_job"), ("kiln-worker", "kiln.run_chunk"),
                      ("kiln-worker", "kiln.model.run"), ("kiln-worker", "kiln.webhook.deliver")}
            return spans if wanted <= names and "kiln.run_job" in lost else None

        deadline = time.monotonic() + 30
        while (spans := job_trace()) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        with receiver.lock:
            seen = sorted({(service, trace[:8], name) for service, trace, name, _
                           in receiver.spans if not name.startswith("db ")})
        assert spans is not None, [s for s in seen if s[0] == "kiln-worker"] or seen
        services = {service for service, *_ in spans}
        assert services == {"kiln-api", "kiln-worker"}
        assert any(name.startswith("db ") for service, _, name, _ in spans
                   if service == "kiln-worker"), "the worker's statements are spans"
        chunk_spans = [attrs for _, _, name, attrs in spans if name == "kiln.run_chunk"]
        assert all(attrs["job_id"].string_value == job_id for attrs in chunk_spans)
        model_rows = sum(attrs["rows"].int_value for _, _, name, attrs in spans
                         if name == "kiln.model.run")
        assert model_rows >= 30
        # the other requests (upload, polls) are traces of their own
        with receiver.lock:
            assert len({trace for _, trace, *_ in receiver.spans}) > 1
    finally:
        api.stop()
        if worker is not None:
            worker.stop()


def submit_and_lose_its_message(kiln: httpx.Client, stack) -> str:
    """An inline job (in trace LOST_TRACE) whose message is taken off Redis before any worker
    runs: the worker's reconciler re-publishes it, with no trace context in the message."""
    queue = stack.env["KILN_QUEUE"]
    broker = redis.Redis.from_url(stack.env["KILN_REDIS_URL"])
    submitted = kiln.post("/v1/jobs", json={"model": "digits", "inputs": [RECORD]},
                          headers={"traceparent": f"00-{LOST_TRACE}-00f067aa0ba902b8-01"})
    assert submitted.status_code == 202, submitted.text
    support.wait_for(lambda: broker.llen(queue) >= 1, timeout=10, message="the job's message")
    broker.delete(queue)
    return submitted.json()["id"]
