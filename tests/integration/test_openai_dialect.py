"""The OpenAI Batch dialect, driven by the real, unmodified `openai` package against a real
`kiln api` and worker: files, batches on /v1/embeddings (minilm) and /v1/predictions (digits),
cancel, expire, pages, errors in the dialect's shape, sync embeddings and signed events."""

import io
import time

import numpy as np
import openai
import orjson
import pytest

from app.client import KilnClient
from tests import support
from tests.conftest import build_stack
from workers.demo_models import DIGITS_COLUMNS, digits_split

TEXTS = ["A man is eating food.", "The stock market fell sharply on Monday.",
         "Ein Mann isst Brot. ☃", "the quick brown fox"]


@pytest.fixture(scope="module")
def dialect(services, tmp_path_factory):
    """An isolated stack with minilm and digits, an API and a worker; the official client on
    /openai/v1 and Kiln's own client on /v1, both with one tenant's key."""
    stack, name = build_stack(services, tmp_path_factory.mktemp("openai"),
                              KILN_TUNING__CHUNK_ROWS="40")
    stack.kiln("models", "add-demo", "minilm", timeout=300)
    stack.add_digits()
    api = support.start_api(stack.env, stack.logdir)
    worker = support.start_worker(stack.env, stack.logdir, "-c", "1")
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
    x_train, x_test, _, y_test = digits_split()
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
