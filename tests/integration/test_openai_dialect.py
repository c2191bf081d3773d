"""The OpenAI Batch dialect, driven by the real, unmodified `openai` package against a real
`kiln api` and worker: files, batches on /v1/embeddings (minilm) and /v1/predictions (digits),
cancel, expire, pages, errors in the dialect's shape, sync embeddings and signed events."""

import contextlib
import io
import re
import time
from pathlib import Path

import numpy as np
import openai
import orjson
import pytest

from app.client import KilnClient
from tests import support
from tests.conftest import build_stack
from tests.integration.test_webhooks import Receiver
from workers.demo_models import DIGITS_COLUMNS, digits_split

TEXTS = ["A man is eating food.", "The stock market fell sharply on Monday.",
         "Ein Mann isst Brot. ☃", "the quick brown fox"]


@pytest.fixture(scope="module")
def dialect(services, tmp_path_factory):
    """An isolated stack with minilm and digits, an API and a worker; the official client on
    /openai/v1 and Kiln's own client on /v1, both with one tenant's key."""
    stack, name = build_stack(services, tmp_path_factory.mktemp("openai"),
                              KILN_TUNING__CHUNK_ROWS="40", KILN_WEBHOOK_ALLOW_PRIVATE="true",
                              KILN_TUNING__CACHE_SECONDS="0.2")
    stack.kiln("models", "add-demo", "minilm", timeout=300)
    stack.add_digits()
    # a busy machine starts them slowly
    api, worker = support.start_api_and_worker(stack.env, stack.logdir, "-c", "1", timeout=180)
    key = stack.create_key()
    client = openai.OpenAI(base_url=f"{api.url}/openai/v1", api_key=key, max_retries=0)
    kiln = KilnClient(api.url, key)
    yield client, kiln, stack, api
    kiln.close()
    client.close()
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


def jsonl(lines) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n"
                    for line in lines)


def upload(client, lines, name="batch.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def wait_batch(client, batch_id, statuses=("completed", "failed", "cancelled", "expired"),
               timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def read_lines(client, file_id):
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).read().splitlines()]


def embed_line(custom_id, text, url="/v1/embeddings", model="minilm", method="POST"):
    return {"custom_id": custom_id, "method": method, "url": url,
            "body": {"model": model, "input": text}}


def kiln_embeddings(kiln, texts):
    job = kiln.submit("minilm", [{"text": t} for t in texts])
    assert kiln.wait(job["id"], timeout_seconds=60)["status"] == "succeeded"
    lines = [orjson.loads(line) for line in b"".join(kiln.iter_results(job["id"])).splitlines()]
    return np.array([line["output"]["embedding"] for line in lines])


def digit_records(n):
    _, x_test, _, y_test = digits_split()
    return [({c: int(v) for c, v in zip(DIGITS_COLUMNS, x_test[i])}, int(y_test[i]))
            for i in range(n)]


def test_an_embeddings_batch_completes_with_the_models_own_vectors(dialect):
    client, kiln, _, _ = dialect
    lines = [embed_line(f"req-{i}", text) for i, text in enumerate(TEXTS)]
    lines.append(embed_line("req-list", TEXTS[:2]))
    lines.append(embed_line("wrong-url", "x", url="/v1/chat/completions"))
    lines.append(embed_line("wrong-method", "x", method="GET"))
    lines.append({"custom_id": "bad-body", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "minilm", "input": 7}})
    source = upload(client, lines)
    assert source.object == "file" and source.purpose == "batch" and source.status == "processed"
    assert source.bytes == len(jsonl(lines)) and isinstance(source.created_at, int)

    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings",
                                  completion_window="24h", metadata={"run": "e2e"})
    assert batch.object == "batch" and batch.status in ("validating", "in_progress")
    assert batch.input_file_id == source.id and batch.metadata == {"run": "e2e"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": 8, "completed": 5, "failed": 3}
    assert all(isinstance(getattr(done, name), int)
               for name in ("created_at", "in_progress_at", "completed_at", "expires_at"))
    assert done.created_at <= done.in_progress_at <= done.completed_at

    output = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
    errors = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
    assert set(output) == {f"req-{i}" for i in range(len(TEXTS))} | {"req-list"}
    assert set(errors) == {"wrong-url", "wrong-method", "bad-body"}
    expected = kiln_embeddings(kiln, TEXTS)
    for i in range(len(TEXTS)):
        line = output[f"req-{i}"]
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "list" and body["model"] == "minilm"
        assert body["usage"]["prompt_tokens"] > 0
        [item] = body["data"]
        assert item["object"] == "embedding" and item["index"] == 0
        assert np.allclose(item["embedding"], expected[i], atol=1e-5)
    pair = output["req-list"]["response"]["body"]["data"]
    assert [item["index"] for item in pair] == [0, 1]
    assert np.allclose([item["embedding"] for item in pair], expected[:2], atol=1e-5)
    for custom_id, param in (("wrong-url", "url"), ("wrong-method", "method"),
                             ("bad-body", "body.input")):
        response = errors[custom_id]["response"]
        assert response["status_code"] == 400, errors[custom_id]
        assert response["body"]["error"]["param"] == param
        assert response["body"]["error"]["type"] == "invalid_request_error"


def test_a_predictions_batch_scores_digits_and_fails_a_bad_record_alone(dialect):
    client, kiln, _, _ = dialect
    records = digit_records(60)
    lines = [{"custom_id": f"img-{i}", "method": "POST", "url": "/v1/predictions",
              "body": {"model": "digits", "input": record}}
             for i, (record, _) in enumerate(records)]
    broken = {**records[0][0], DIGITS_COLUMNS[0]: "not a number"}
    lines.append({"custom_id": "broken", "method": "POST", "url": "/v1/predictions",
                  "body": {"model": "digits", "input": [records[1][0], broken]}})
    source = upload(client, lines)
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/predictions",
                                  completion_window="24h")
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 61
    output = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
    errors = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    labels = {cid: line["response"]["body"]["data"][0]["output"]["label"]
              for cid, line in output.items()}
    truth = {f"img-{i}": label for i, (_, label) in enumerate(records)}
    accuracy = np.mean([labels[cid] == truth[cid] for cid in labels])
    assert accuracy > 0.8
    inline = kiln.submit("digits", [record for record, _ in records[:5]])
    assert kiln.wait(inline["id"], timeout_seconds=60)["status"] == "succeeded"
    kiln_labels = [orjson.loads(line)["output"]["label"]
                   for line in b"".join(kiln.iter_results(inline["id"])).splitlines()]
    assert [labels[f"img-{i}"] for i in range(5)] == kiln_labels
    assert "broken" in errors and errors["broken"]["response"]["status_code"] == 400


def many_texts(n):
    return [embed_line(f"doc-{i:05d}", f"document number {i} about topic {i % 17}")
            for i in range(n)]


def assert_covers_every_line(client, batch, n, unfinished_code):
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert sorted(line["custom_id"] for line in output + errors) == \
        [f"doc-{i:05d}" for i in range(n)]
    assert errors, "some lines never ran"
    assert {line["error"]["code"] for line in errors} == {unfinished_code}
    assert all(line["response"] is None for line in errors)
    assert all(line["response"]["status_code"] == 200 for line in output)
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (n, len(output), len(errors))


def test_cancelling_a_large_batch_keeps_the_finished_lines(dialect):
    client, _, _, _ = dialect
    source = upload(client, many_texts(5000))
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings",
                                  completion_window="24h")
    wait_batch(client, batch.id, statuses=("in_progress",), timeout=60)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert isinstance(cancelled.cancelling_at, int)
    done = wait_batch(client, batch.id)
    assert done.status == "cancelled" and isinstance(done.cancelled_at, int)
    assert_covers_every_line(client, done, 5000, "batch_cancelled")
    with pytest.raises(openai.BadRequestError):  # a permanent condition is never a 409 here
        client.batches.create(input_file_id="not-a-file", endpoint="/v1/images",
                              completion_window="24h")


def test_a_batch_past_its_window_expires_keeping_the_finished_lines(dialect):
    client, _, _, _ = dialect
    source = upload(client, many_texts(4000))
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings",
                                  completion_window="1s")
    assert batch.expires_at - batch.created_at <= 2
    done = wait_batch(client, batch.id, timeout=60)
    assert done.status == "expired" and isinstance(done.expired_at, int), done
    assert done.expired_at >= done.expires_at - 1
    assert_covers_every_line(client, done, 4000, "batch_expired")


def test_lists_page_until_has_more_is_false(dialect):
    _, _, stack, api = dialect
    client = openai.OpenAI(base_url=f"{api.url}/openai/v1", api_key=stack.create_key(),
                           max_retries=0)
    uploaded = [upload(client, [embed_line(f"r{i}", "hello")], name=f"in-{i}.jsonl").id
                for i in range(5)]
    first = client.files.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert [f.id for f in client.files.list(limit=2)] == uploaded[::-1]  # every page, newest first
    assert [f.id for f in client.files.list(limit=2, order="asc")] == uploaded
    assert [f.id for f in client.files.list(purpose="batch_output")] == []
    created = [client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                     completion_window="24h").id for file_id in uploaded[:3]]
    assert [b.id for b in client.batches.list(limit=1)] == created[::-1]
    page = client.batches.list(limit=2)
    assert page.has_more and len(page.data) == 2
    deleted = client.files.delete(uploaded[4])
    assert deleted.deleted and deleted.id == uploaded[4] and deleted.object == "file"
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded[4])


def test_malformed_lines_fail_the_batch_with_their_line_numbers(dialect):
    client, _, _, _ = dialect
    source = upload(client, [embed_line("ok", "fine"), b"{not json", {"method": "POST"},
                             embed_line("ok", "again")])
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/embeddings",
                                  completion_window="24h")
    assert batch.status == "failed" and isinstance(batch.failed_at, int)
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"), (3, "missing_required_parameter"), (4, "duplicate_custom_id")]
    assert batch.errors.data[1].param == "custom_id"


def test_errors_come_in_the_dialects_shape(dialect):
    client, _, stack, api = dialect
    with pytest.raises(openai.NotFoundError) as unknown:
        client.batches.create(input_file_id=upload(client, [embed_line("a", "x", model="nope")]).id,
                              endpoint="/v1/embeddings", completion_window="24h")
    assert unknown.value.code == "model_not_found"
    assert unknown.value.body["type"] == "invalid_request_error"
    assert "nope" in unknown.value.body["message"]
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(input_file_id=upload(client, [embed_line("a", "x")]).id,
                              endpoint="/v1/embeddings", completion_window="soon")
    assert "completion_window" in window.value.body["message"]

    mine = upload(client, [embed_line("a", "x")])
    batch = client.batches.create(input_file_id=mine.id, endpoint="/v1/embeddings",
                                  completion_window="24h")
    other = openai.OpenAI(base_url=f"{api.url}/openai/v1", api_key=stack.create_key(),
                          max_retries=0)
    for call in (lambda: other.files.retrieve(mine.id), lambda: other.files.content(mine.id),
                 lambda: other.files.delete(mine.id), lambda: other.batches.retrieve(batch.id),
                 lambda: other.batches.cancel(batch.id),
                 lambda: other.batches.create(input_file_id=mine.id, endpoint="/v1/embeddings",
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as found:
            call()
        assert set(found.value.body) == {"message", "type", "param", "code"}
        assert found.value.code == "not_found"
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert "chat/completions" in chat.value.body["message"] and chat.value.code == "not_found"
    stranger = openai.OpenAI(base_url=f"{api.url}/openai/v1", api_key="kiln_not_a_key",
                             max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.batches.list()
    assert denied.value.body["type"] == "authentication_error"
    assert wait_batch(client, batch.id).status == "completed"


def test_embeddings_answer_synchronously_like_the_model(dialect):
    client, kiln, _, _ = dialect
    expected = kiln_embeddings(kiln, TEXTS)
    packed = client.embeddings.create(model="minilm", input=TEXTS)  # base64 on the wire
    assert packed.model == "minilm" and packed.usage.prompt_tokens > 0
    assert np.allclose([item.embedding for item in packed.data], expected, atol=1e-5)
    plain = client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    assert np.allclose(plain.data[0].embedding, expected[0], atol=1e-5)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="minilm", input=[])


def test_an_openai_format_endpoint_gets_events_the_client_unwraps(dialect):
    _, _, stack, api = dialect
    key = stack.create_key()
    client = openai.OpenAI(base_url=f"{api.url}/openai/v1", api_key=key, max_retries=0)
    kiln = KilnClient(api.url, key)
    with Receiver() as dialect_hook, Receiver() as kiln_hook:
        created = kiln.http.post("/v1/webhooks", json={"url": dialect_hook.url + "/openai",
                                                       "event_format": "openai"})
        assert created.status_code == 201, created.text
        assert created.json()["event_format"] == "openai"
        assert created.json()["events"] == ["job.succeeded", "job.failed", "job.cancelled",
                                            "job.expired"]
        kiln.http.post("/v1/webhooks", json={"url": kiln_hook.url + "/kiln"}).raise_for_status()
        inline = kiln.submit("minilm", [{"text": "not a batch"}])  # a Kiln job: no batch event
        kiln.wait(inline["id"], timeout_seconds=60)
        batch = client.batches.create(input_file_id=upload(client, [embed_line("a", "x")]).id,
                                      endpoint="/v1/embeddings", completion_window="24h")
        assert wait_batch(client, batch.id).status == "completed"
        [got] = dialect_hook.wait(1)
        event = client.webhooks.unwrap(got.body, got.headers, secret=created.json()["secret"])
        assert (event.object, event.type, event.data.id) == ("event", "batch.completed", batch.id)
        headers = {name.lower(): value for name, value in got.headers.items()}
        assert isinstance(event.created_at, int) and event.id == headers["webhook-id"]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(got.body + b" ", got.headers, secret=created.json()["secret"])
        kiln_events = [r.payload["type"] for r in kiln_hook.wait(2)]
        assert kiln_events == ["job.succeeded", "job.succeeded"]  # Kiln's format, both jobs
        time.sleep(1)
        assert len(dialect_hook.requests) == 1
    kiln.close()


def test_the_readme_example_runs_as_written(dialect):
    _, _, stack, api = dialect
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## OpenAI client", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'base_url="http://localhost:8000/openai/v1", api_key="kiln_…"' in example
    example = example.replace("http://localhost:8000", api.url).replace(
        '"kiln_…"', repr(stack.create_key()))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(example, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["doc-0", "doc-1"]
    assert len(lines) == 3


def test_a_tenants_limits_apply_to_batches_as_429s(dialect):
    _, _, stack, api = dialect
    name = f"t-{time.monotonic_ns()}"
    stack.kiln("tenants", "create", name)
    key = stack.create_key(name)
    client = openai.OpenAI(base_url=f"{api.url}/openai/v1", api_key=key, max_retries=0)
    stack.kiln("tenants", "limits", name, "--max-active-jobs=1")
    time.sleep(0.5)  # the API's cache of limits
    first = client.batches.create(input_file_id=upload(client, many_texts(5000)).id,
                                  endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(input_file_id=upload(client, many_texts(2)).id,
                              endpoint="/v1/embeddings", completion_window="24h")
    assert refused.value.code == "quota_exceeded"
    assert refused.value.response.headers["retry-after"].isdigit()
    assert [b.id for b in client.batches.list()] == [first.id]  # nothing of the refused one
    with KilnClient(api.url, key) as kiln:  # and no converted rows file left behind
        rows_files = kiln.http.get("/v1/files", params={"purpose": "batch_rows"}).json()["data"]
    assert len(rows_files) == 1
    assert client.batches.cancel(first.id).status in ("cancelling", "cancelled")
