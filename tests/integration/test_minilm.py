"""The minilm demo model end to end: built and registered by the real CLI, served by a real worker."""

import numpy as np
import orjson
import pytest
from sqlalchemy import text

from app.client import KilnClient
from tests import support
from tests.conftest import build_stack

PROBLEM = "application/problem+json"
LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # ~360 word pieces
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply on Monday.",
    LONG_TEXT,
    "Ein Mann isst Brot. ☃",
]


@pytest.fixture(scope="module")
def minilm(services, tmp_path_factory):
    """An isolated stack with minilm registered through `kiln models add-demo`, an API and a worker."""
    # a text file of under two chunks per worker process is split, down to 2 rows here
    stack, name = build_stack(services, tmp_path_factory.mktemp("minilm"),
                              KILN_TUNING__MIN_CHUNK_ROWS="2")
    added = stack.kiln("models", "add-demo", "minilm", timeout=300)
    api, worker = support.start_api_and_worker(stack.env, stack.logdir, "-c", "1")
    client = KilnClient(api.url, stack.create_key())
    yield client, added.stdout, stack
    client.close()
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


def embed(client, texts):
    job = client.submit("minilm", [{"text": t} for t in texts])
    finished = client.wait(job["id"], timeout_seconds=60)
    assert finished["status"] == "succeeded", finished
    lines = [orjson.loads(line) for line in b"".join(client.iter_results(job["id"])).splitlines()]
    assert [line["index"] for line in lines] == list(range(len(texts)))
    return [line["output"] for line in lines]


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_are_unit_384_vectors_with_truncation_flagged(minilm):
    client, *_ = minilm
    outputs = embed(client, SENTENCES)
    vectors = np.array([o["embedding"] for o in outputs])
    assert vectors.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert [o["truncated"] for o in outputs] == [False, False, False, True, False]


def test_similar_sentences_are_closer_than_unrelated_ones(minilm):
    client, *_ = minilm
    eating, bread, stocks = (np.array(o["embedding"]) for o in embed(client, SENTENCES[:3]))
    assert cosine(eating, bread) > cosine(eating, stocks) + 0.3
    assert cosine(eating, bread) > cosine(bread, stocks) + 0.3


def test_models_list_minilm_with_its_export_check(minilm):
    client, added, _ = minilm
    assert "minilm v1 registered" in added
    found = {m["name"]: m for m in client.models()}
    model = found["minilm"]
    assert model["signature"]["kind"] == "text" and model["signature"]["dim"] == 384
    assert model["metrics"]["onnx_max_abs_diff"] < 1e-5
    assert model["metrics"]["reference_max_abs_diff"] < 1e-5
    assert model["metrics"]["max_tokens"] == 256


def test_a_record_without_text_is_a_422_problem(minilm):
    client, *_ = minilm
    response = client.http.post("/v1/jobs", json={"model": "minilm",
                                                  "inputs": [{"text": "fine"}, {"body": "no"},
                                                             {"text": 7}]})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    errors = response.json()["errors"]
    assert [(e["index"], e["field"], e["code"]) for e in errors] == [
        (1, "text", "missing_field"), (2, "text", "not_a_string")]


def test_a_small_text_file_is_embedded_with_json_encoded_vectors_in_csv(minilm):
    import csv
    import io

    client, *_ = minilm
    rows = [{"doc": f"d{i}", "text": text} for i, text in enumerate(SENTENCES)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["doc", "text"])
    writer.writeheader()
    writer.writerows(rows)
    uploaded = client.http.post("/v1/files", files={"file": ("texts.csv", buffer.getvalue())})
    assert uploaded.status_code == 201, uploaded.text
    job = client.http.post("/v1/jobs", json={"model": "minilm", "input_file": uploaded.json()["id"],
                                             "id_column": "doc"}).json()
    done = client.wait(job["id"], timeout_seconds=120)
    assert done["status"] == "succeeded", done
    assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    out = list(csv.DictReader(io.StringIO(b"".join(client.iter_results(job["id"])).decode())))
    assert [r["doc"] for r in out] == [f"d{i}" for i in range(5)]
    vectors = np.array([orjson.loads(r["embedding"]) for r in out])
    assert vectors.shape == (5, 384)
    assert [r["truncated"] for r in out] == ["false", "false", "false", "true", "false"]
    # 5 rows on one worker process (-c 1): two chunks, 3 + 2 rows, joined back in input order
    with minilm[2].sessions() as session:
        chunks = session.execute(text("SELECT start_row, end_row FROM job_chunks WHERE job_id = "
                                      ":id ORDER BY index"), {"id": job["id"]}).all()
    assert [tuple(c) for c in chunks] == [(0, 3), (3, 5)]
    inline = np.array([o["embedding"] for o in embed(client, SENTENCES)])
    assert np.allclose(vectors, inline, atol=1e-5)  # same answer inline or from a file

    missing = client.http.post("/v1/files", files={"file": ("t.jsonl", b'{"body": "no text"}\n')})
    job = client.http.post("/v1/jobs", json={"model": "minilm", "input_file": missing.json()["id"]})
    failed = client.wait(job.json()["id"], timeout_seconds=60)
    assert failed["status"] == "failed" and "text" in failed["error"]["message"]
