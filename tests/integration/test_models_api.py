"""Model registration, versions and aliases, variants and tenancy, over HTTP and the CLI,
against a real API and worker on an isolated stack."""

import time
import uuid

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto

from app.client import KilnClient
from app.orm import Job
from tests import support
from tests.conftest import build_stack
from tests.models import COLUMNS, PROCESSING, SIGNATURE, slow_classifier
from tests.torch_models import COLUMNS as TORCH_COLUMNS
from workers.demo_models import digits_records, digits_split

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def kiln(services, tmp_path_factory):
    """An isolated stack (digits registered, a 1 s API cache) with its own API and worker."""
    stack, name = build_stack(services, tmp_path_factory.mktemp("models"), KILN_TUNING__CACHE_SECONDS="1")
    stack.kiln("models", "add-demo", "digits")
    api, worker = support.start_api_and_worker(stack.env, stack.logdir, "-c", "1")
    stack.env["KILN_API_URL"] = api.url
    yield stack
    worker.stop()
    api.stop()
    support.drop_database(services.admin_url, name)


@pytest.fixture
def client(kiln):
    with_key = KilnClient(kiln.env["KILN_API_URL"], kiln.create_key())
    yield with_key
    with_key.close()


def register(client, name, artifact, signature=SIGNATURE, processing=PROCESSING):
    return client.http.post("/v1/models", data={
        "name": name, "signature": orjson.dumps(signature).decode(),
        "processing": orjson.dumps(processing).decode()},
        files={"file": ("model.onnx", artifact, "application/octet-stream")})


def heldout(n=None):
    _, x_test, _, y_test = digits_split()
    return digits_records(x_test[:n]), [int(y) for y in y_test[:n]]


def run_job(client, model, records, **extra):
    response = client.http.post("/v1/jobs", json={"model": model, "inputs": records, **extra})
    assert response.status_code == 202, response.text
    done = client.wait(response.json()["id"], timeout_seconds=60)
    assert done["status"] == "succeeded", done
    lines = [orjson.loads(x) for x in b"".join(client.iter_results(done["id"])).splitlines()]
    return done, [line["output"] for line in lines]


def listed(client, name):
    return [m for m in client.models() if m["name"] == name]


def test_register_a_user_model_and_score_a_job_with_it(client):
    name = f"tiny-{uuid.uuid4().hex[:6]}"
    response = register(client, name, slow_classifier(hidden=16, layers=1))
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["name"], model["version"], model["variant"], model["builtin"]) == \
        (name, 1, "fp32", False)
    assert model["provenance"]["graph"]["inputs"] == {"X": "float32[?,64]"}
    assert [m["aliases"] for m in listed(client, name)] == [["latest"]]
    one = client.http.get(response.headers["Location"])
    assert one.status_code == 200 and [m["id"] for m in one.json()["data"]] == [model["id"]]
    assert client.http.get("/v1/models/no-such-model").status_code == 404

    records, _ = heldout(20)
    job, outputs = run_job(client, name, records)
    assert (job["model"], job["model_version"], job["variant"]) == (name, 1, "fp32")
    assert len(outputs) == 20 and all(len(o["probabilities"]) == 10 for o in outputs)


def test_versions_and_aliases_choose_what_a_job_gets(client, kiln):
    name = f"versioned-{uuid.uuid4().hex[:6]}"
    for seed in (1, 2):
        assert register(client, name, slow_classifier(hidden=16, layers=1, seed=seed)) \
            .status_code == 201
    response = client.http.post(f"/v1/models/{name}/aliases", json={"alias": "prod", "version": 1})
    assert response.status_code == 200, response.text
    assert response.json()["aliases"] == ["prod"]
    assert {m["version"]: m["aliases"] for m in listed(client, name)} == \
        {2: ["latest"], 1: ["prod"]}

    records, _ = heldout(5)
    assert run_job(client, f"{name}@prod", records)[0]["model_version"] == 1
    assert run_job(client, name, records)[0]["model_version"] == 2
    assert run_job(client, f"{name}@latest", records)[0]["model_version"] == 2
    assert run_job(client, f"{name}@1", records)[0]["model_version"] == 1

    # Moving the alias (with `kiln models alias`) moves the jobs, once the API's model cache
    # entry expires.
    moved = support.run_kiln({**kiln.env, "KILN_API_KEY": client.http.headers["Authorization"][7:]},
                             "models", "alias", name, "prod", "2")
    assert moved.stdout.strip() == f"{name}@prod -> v2"
    time.sleep(1.2)
    assert run_job(client, f"{name}@prod", records)[0]["model_version"] == 2
    assert {m["version"]: m["aliases"] for m in listed(client, name)} == \
        {2: ["latest", "prod"], 1: []}

    for model, status in ((f"{name}@nope", 404), (f"{name}@7", 404), (f"{name}@", 422)):
        response = client.http.post("/v1/jobs", json={"model": model, "inputs": records})
        assert response.status_code == status, (model, response.text)
    for body, status in (({"alias": "prod", "version": 9}, 404), ({"alias": "latest", "version": 1}, 422),
                         ({"alias": "7", "version": 1}, 422)):
        response = client.http.post(f"/v1/models/{name}/aliases", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["Content-Type"] == PROBLEM
    assert client.http.post("/v1/models/digits/aliases",
                            json={"alias": "prod", "version": 1}).status_code == 409


def external_data_model() -> bytes:
    model = onnx.load_from_string(slow_classifier(hidden=16, layers=1))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="/etc/passwd")
    return model.SerializeToString()


@pytest.mark.parametrize("artifact, signature, processing, says", [
    (slow_classifier(hidden=16, layers=1), {**SIGNATURE, "columns": COLUMNS[:60]}, PROCESSING,
     ["64 features", "60 columns"]),
    (slow_classifier(hidden=16, layers=1), SIGNATURE, {**PROCESSING, "probability_output": "p"},
     ["output 'p' is missing"]),
    (b"\x89PNG not a model at all", SIGNATURE, PROCESSING, ["not an ONNX model"]),
    (external_data_model(), SIGNATURE, PROCESSING, ["external data"]),
    (slow_classifier(hidden=16, layers=1), SIGNATURE, {"kind": "regressor"}, ["processing.kind"]),
    (slow_classifier(hidden=16, layers=1), SIGNATURE, {**PROCESSING, "max_batch_wait_ms": -1},
     ["max_batch_wait_ms"]),
    (slow_classifier(hidden=16, layers=1), SIGNATURE, {**PROCESSING, "max_batch_wait_ms": "5"},
     ["max_batch_wait_ms"]),
])
def test_a_model_that_does_not_load_or_match_is_a_422_saying_why(client, artifact, signature,
                                                                  processing, says):
    name = f"bad-{uuid.uuid4().hex[:6]}"
    response = register(client, name, artifact, signature, processing)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == PROBLEM
    assert all(text in response.json()["detail"] for text in says), response.json()
    assert listed(client, name) == []


def test_a_models_own_batch_wait_travels_with_its_jobs(kiln, client):
    """A model's `max_batch_wait_ms` is recorded on each of its jobs, where the API's coalescer
    reads it (tests/unit/test_coalescer.py covers what the window does)."""
    name = f"eager-{uuid.uuid4().hex[:6]}"
    artifact = slow_classifier(hidden=16, layers=1)
    assert register(client, name, artifact,
                    processing={**PROCESSING, "max_batch_wait_ms": 0}).status_code == 201
    records = [dict.fromkeys(COLUMNS, 0.5)]
    ids = [client.submit(name, records)["id"] for _ in range(4)]
    assert all(client.wait(i, timeout_seconds=60)["status"] == "succeeded" for i in ids)
    with kiln.sessions() as session:
        options = [session.get(Job, uuid.UUID(i)).options for i in ids]
    assert all(o["max_batch_wait_ms"] == 0 for o in options), options


def test_bad_form_fields_are_422(client):
    artifact = slow_classifier(hidden=16, layers=1)
    response = register(client, "../escape", artifact)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "name"
    response = client.http.post("/v1/models", data={"name": "x", "signature": "{not json"},
                                files={"file": ("m.onnx", artifact)})
    assert response.status_code == 422 and "signature" in response.json()["detail"]


def test_a_signature_too_deep_to_store_is_a_422_not_a_500(client):
    deep = (orjson.dumps(SIGNATURE).decode()[:-1] + ', "notes": ' + '{"a": ' * 600 + "1"
            + "}" * 600 + "}")
    response = client.http.post("/v1/models", data={
        "name": "deep", "signature": deep, "processing": orjson.dumps(PROCESSING).decode()},
        files={"file": ("model.onnx", slow_classifier(8, 1), "application/octet-stream")})
    assert response.status_code == 422, response.text
    assert "cannot be stored" in response.json()["detail"]


def test_another_tenant_can_neither_see_nor_use_your_model(kiln, client):
    name = f"private-{uuid.uuid4().hex[:6]}"
    assert register(client, name, slow_classifier(hidden=16, layers=1)).status_code == 201
    other = KilnClient(kiln.env["KILN_API_URL"], kiln.create_key())
    try:
        assert listed(other, name) == []
        assert other.http.get(f"/v1/models/{name}").status_code == 404
        records, _ = heldout(2)
        for model in (name, f"{name}@1"):
            response = other.http.post("/v1/jobs", json={"model": model, "inputs": records})
            assert response.status_code == 404
        assert other.http.post(f"/v1/models/{name}/aliases",
                               json={"alias": "prod", "version": 1}).status_code == 404
        # A tenant's own model shadows a built-in one of the same name, for that tenant only.
        assert register(other, "digits", slow_classifier(hidden=16, layers=1)).status_code == 201
        assert sorted(m["builtin"] for m in listed(other, "digits")) == [False, True]
        assert [m["builtin"] for m in listed(client, "digits")] == [True]
    finally:
        other.close()


def test_optimised_variants_are_measured_and_chosen_per_job(kiln, client):
    result = kiln.kiln("models", "optimize", "digits", "--variant", "int8", "--variant", "graph",
                       timeout=300)
    assert "int8 registered" in result.stdout and "graph registered" in result.stdout
    rows = {m["variant"]: m for m in listed(client, "digits")}
    assert set(rows) == {"fp32", "int8", "graph"}
    assert {m["version"] for m in rows.values()} == {1}
    assert [v for v, m in rows.items() if m["default"]] == ["fp32"]
    for variant in ("int8", "graph"):
        metrics = rows[variant]["metrics"]
        assert metrics["label_agreement"] >= 0.95, metrics
        assert abs(metrics["accuracy_delta"]) <= 0.03 and metrics["speedup"] > 0, metrics
        assert metrics["sample"] == "load_digits held-out split"
        assert rows[variant]["provenance"]["derived_from"] == rows["fp32"]["id"]
        assert rows[variant]["aliases"] == ["latest"]
    assert rows["int8"]["metrics"]["bytes"] < rows["int8"]["metrics"]["bytes_fp32"]

    records, labels = heldout(100)
    job, outputs = run_job(client, "digits", records, variant="int8")
    assert (job["model_version"], job["variant"]) == (1, "int8")
    accuracy = np.mean([o["label"] == y for o, y in zip(outputs, labels)])
    assert accuracy >= 0.95
    assert run_job(client, "digits", records[:3])[0]["variant"] == "fp32"
    response = client.http.post("/v1/jobs", json={"model": "digits", "inputs": records[:3],
                                                  "variant": "fp16"})
    assert response.status_code == 404 and "int8" in response.json()["detail"]

    again = kiln.kiln("models", "optimize", "digits", "--variant", "int8", check=False)
    assert again.returncode != 0 and "already has" in again.stderr


def test_make_default_changes_what_jobs_without_a_variant_get(kiln):
    tenant, name = f"t-{uuid.uuid4().hex[:8]}", f"defaulted-{uuid.uuid4().hex[:6]}"
    client = KilnClient(kiln.env["KILN_API_URL"], kiln.create_key(tenant))
    try:
        assert register(client, name, slow_classifier(hidden=32, layers=2)).status_code == 201
        kiln.kiln("models", "optimize", name, "--tenant", tenant, "--variant", "int8",
                  "--make-default")
        rows = {m["variant"]: m for m in listed(client, name)}
        assert rows["int8"]["default"] and not rows["fp32"]["default"]
        assert rows["int8"]["metrics"]["sample"] == "load_digits held-out split"  # p0…p63
        records, _ = heldout(5)
        assert run_job(client, name, records)[0]["variant"] == "int8"
        assert run_job(client, name, records, variant="fp32")[0]["variant"] == "fp32"
    finally:
        client.close()


def test_kiln_models_add_from_onnx_and_from_torch(kiln, tmp_path):
    import torch

    from tests.torch_models import tiny_classifier

    env = dict(kiln.env, KILN_API_KEY=kiln.create_key())
    onnx_file = tmp_path / "tiny.onnx"
    onnx_file.write_bytes(slow_classifier(hidden=16, layers=1))
    signature = tmp_path / "signature.json"
    signature.write_bytes(orjson.dumps(SIGNATURE))
    added = support.run_kiln(env, "models", "add", "cli-tiny", "--onnx", str(onnx_file),
                             "--signature", f"@{signature}")
    assert orjson.loads(added.stdout)["version"] == 1
    wrong = support.run_kiln(env, "models", "add", "cli-tiny", "--onnx", str(onnx_file),
                             "--signature", orjson.dumps({**SIGNATURE, "columns": COLUMNS[:3]})
                             .decode(), check=False)
    assert wrong.returncode != 0 and "3 columns" in wrong.stderr and "Traceback" not in wrong.stderr

    rows = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    example = tmp_path / "example.json"
    example.write_bytes(orjson.dumps([dict(zip(TORCH_COLUMNS, map(float, r))) for r in rows]))
    exported = support.run_kiln(
        env, "models", "add", "torch-tiny", "--torch", "tests.torch_models:tiny_classifier",
        "--example-input", str(example),
        "--signature", orjson.dumps({"kind": "tabular", "columns": TORCH_COLUMNS}).decode(),
        timeout=180)
    model = orjson.loads(exported.stdout)
    assert model["metrics"]["onnx_max_abs_diff"] < 1e-5
    assert model["metrics"]["label_agreement"] == 1.0
    assert model["provenance"]["source"] == "pytorch"
    assert model["signature"]["input_name"] == "input"

    client = KilnClient(kiln.env["KILN_API_URL"], env["KILN_API_KEY"])
    try:
        records = [dict(zip(TORCH_COLUMNS, map(float, r))) for r in rows]
        _, outputs = run_job(client, "torch-tiny", records)
    finally:
        client.close()
    with torch.no_grad():
        expected = torch.softmax(tiny_classifier()(torch.from_numpy(rows)), dim=1).numpy()
    assert [o["label"] for o in outputs] == expected.argmax(axis=1).tolist()
    assert np.abs(np.array([o["probabilities"] for o in outputs]) - expected).max() < 1e-5
