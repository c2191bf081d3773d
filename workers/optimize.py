"""Optimised variants of a registered model, measured against fp32 before they are registered.

- `graph`: ONNX Runtime's offline graph optimisation (fusions and constant folding done once and
  saved, so that a worker's session starts faster); built for the CPU provider.
- `int8`: dynamic quantisation, per-channel int8 weights, for CPU.
- `fp16`: float16 weights and activations (inputs and outputs stay float32), for GPU.

Each variant becomes a `models` row with the same name and version and its own `variant`; its
metrics hold the speed-up and the accuracy difference against fp32 on a sample.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Conflict, InvalidInput, NotFound, describe_error
from app.orm import Model, Tenant
from app.services.models import owned_model, register_model, set_default_variant
from app.storage import Storage
from workers.runtime.onnx import CPU_PROVIDER, RUNTIMES, choose_providers, make_session

log = logging.getLogger(__name__)

VARIANTS = ("graph", "int8", "fp16")
TIMING_ROWS = 1024  # tabular rows per timed call: a realistic batch, not per-call overhead
SAMPLE_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Kiln scores batches of records with ONNX Runtime; Postgres keeps the record of every job.",
    "The quarterly report shows revenue grew faster than costs in every region.",
    "Ünïcödé ☃ 中文 text, with punctuation!?",
    "",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),
]


@dataclass
class Sample:
    """Records to compare fp32 with a variant on; labels when accuracy can be measured."""

    records: list[dict[str, Any]]
    labels: list[int] | None
    source: str


# ---------------------------------------------------------------- building variants

def keep_metadata(original: onnx.ModelProto, built: onnx.ModelProto) -> bytes:
    """Carry the original's metadata (e.g. the tokenizer) into a rewritten model."""
    present = {entry.key for entry in built.metadata_props}
    for entry in original.metadata_props:
        if entry.key not in present:
            built.metadata_props.add(key=entry.key, value=entry.value)
    return built.SerializeToString()


def graph_optimized(artifact: bytes) -> tuple[bytes, dict[str, Any]]:
    """ORT's extended graph optimisations, run once and saved (`optimized_model_filepath`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.onnx"
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(artifact, sess_options=options, providers=[CPU_PROVIDER])
        built = onnx.load(str(path))
    return (keep_metadata(onnx.load_from_string(artifact), built),
            {"method": "onnxruntime offline graph optimisation", "level": "ORT_ENABLE_EXTENDED",
             "target": "cpu"})


def quantized_int8(artifact: bytes) -> tuple[bytes, dict[str, Any]]:
    """Dynamic quantisation: int8 weights per output channel, activations quantised at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        source, prepared, out = (Path(folder) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(artifact)
        # Shape inference and folding first, as ORT recommends. ONNX's shape inference only:
        # the symbolic one fails on ai.onnx.ml ops and on dynamo exports, and then leaves a
        # temp file in the cwd; the quantiser needs types, not symbolic shapes.
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            preprocess = "onnx shape inference"
        except Exception as exc:  # noqa: BLE001 - quantise the model as it is
            log.info("quantisation pre-processing failed, quantising as is: %s", exc)
            prepared, preprocess = source, "none"
        # Ops from other domains (ai.onnx.ml's Scaler) leave types unknown: float is the default.
        quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        built = onnx.load(str(out))
    return (keep_metadata(onnx.load_from_string(artifact), built),
            {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
             "per_channel": True, "preprocess": preprocess, "target": "cpu"})


def float16(artifact: bytes) -> tuple[bytes, dict[str, Any]]:
    """Weights and activations in float16; inputs and outputs stay float32 for the runtime."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    original = onnx.load_from_string(artifact)
    built = convert_float_to_float16(onnx.load_from_string(artifact), keep_io_types=True)
    return (keep_metadata(original, built),
            {"method": "onnxruntime.transformers.float16.convert_float_to_float16",
             "keep_io_types": True, "target": "gpu"})


BUILDERS: dict[str, Callable[[bytes], tuple[bytes, dict[str, Any]]]] = {
    "graph": graph_optimized, "int8": quantized_int8, "fp16": float16}


# ---------------------------------------------------------------- samples

def default_sample(signature: dict[str, Any], rows: int = 256, seed: int = 0) -> Sample:
    """Digits' held-out split for models over p0…p63, sentences for text models, otherwise
    standard-normal rows (agreement on noise: pass a real sample with --sample)."""
    from workers.demo_models import DIGITS_COLUMNS, digits_records, digits_split

    if signature.get("kind") == "text":
        field = signature.get("text_field", "text")
        return Sample([{field: s} for s in SAMPLE_SENTENCES], None, "built-in sentences")
    columns = list(signature["columns"])
    if columns == DIGITS_COLUMNS:
        _, x_test, _, y_test = digits_split()
        return Sample(digits_records(x_test), [int(y) for y in y_test],
                      "load_digits held-out split")
    noise = np.random.default_rng(seed).standard_normal((rows, len(columns)))
    return Sample([dict(zip(columns, map(float, row))) for row in noise], None,
                  f"{rows} standard-normal rows")


def read_sample(path: Path, label_field: str | None = None) -> Sample:
    """A JSONL file or JSON array of records; `label_field` holds each record's true class."""
    raw = path.read_bytes()
    records = (orjson.loads(raw) if raw.lstrip().startswith(b"[")
               else [orjson.loads(line) for line in raw.splitlines() if line.strip()])
    if not records or not all(isinstance(r, dict) for r in records):
        raise InvalidInput(f"{path} must hold JSON objects, one per line or in an array")
    labels = [int(r[label_field]) for r in records] if label_field else None
    return Sample(records, labels, str(path))


# ---------------------------------------------------------------- measuring

def median_seconds(base: Callable[[], Any], variant: Callable[[], Any],
                   budget_seconds: float = 1.0) -> tuple[float, float]:
    """Median time of one call of each, interleaved so that a change in machine load affects
    both alike; enough rounds to fill the budget (7 to 200)."""
    for call in (base, variant):  # warm-up: first-run allocations and kernel choices
        call()
    start = time.perf_counter()
    base()
    variant()
    rounds = min(200, max(7, int(budget_seconds / max(time.perf_counter() - start, 1e-6))))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for call, spent in zip((base, variant), times):
            begin = time.perf_counter()
            call()
            spent.append(time.perf_counter() - begin)
    return statistics.median(times[0]), statistics.median(times[1])


def load_runtime(artifact: bytes, signature: dict, processing: dict, threads: int,
                 providers: list[str]) -> tuple[Any, float]:
    """The runtime a worker would build, and how long its session took to create."""
    start = time.perf_counter()
    session = make_session(artifact, threads, providers)
    seconds = time.perf_counter() - start
    return RUNTIMES[processing.get("kind", "tabular_classifier")](session, signature,
                                                                  processing), seconds


def compare_classifiers(base, variant, sample: Sample) -> tuple[dict[str, Any], Callable, Callable]:
    features = base.to_array(sample.records)
    base_labels, base_probs = base.predict(features)
    labels, probs = variant.predict(features)
    metrics: dict[str, Any] = {
        "label_agreement": round(float(np.mean(base_labels == labels)), 4),
        "max_abs_probability_diff": float(np.abs(base_probs - probs).max())}
    if sample.labels is not None:
        truth = np.asarray(sample.labels)
        base_accuracy = float(np.mean(base_labels == truth))
        accuracy = float(np.mean(labels == truth))
        metrics.update(accuracy_fp32=round(base_accuracy, 4), accuracy=round(accuracy, 4),
                       accuracy_delta=round(accuracy - base_accuracy, 4))
    batch = np.resize(features, (TIMING_ROWS, features.shape[1]))
    return metrics, lambda: base.predict(batch), lambda: variant.predict(batch)


def compare_embedders(base, variant, sample: Sample) -> tuple[dict[str, Any], Callable, Callable]:
    expected = np.array([r["embedding"] for r in base.run(sample.records)])
    answered = np.array([r["embedding"] for r in variant.run(sample.records)])
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(answered, axis=1)
    cosine = (expected * answered).sum(axis=1) / np.maximum(norms, 1e-12)
    metrics = {"cosine_mean": round(float(cosine.mean()), 6),
               "cosine_min": round(float(cosine.min()), 6),
               "max_abs_diff": float(np.abs(expected - answered).max())}
    return metrics, lambda: base.run(sample.records), lambda: variant.run(sample.records)


def measure_variant(fp32: bytes, built: bytes, signature: dict[str, Any],
                    processing: dict[str, Any], sample: Sample, threads: int,
                    providers: list[str]) -> dict[str, Any]:
    """Speed-up and accuracy difference of a variant against fp32 on the same sample, threads
    and providers."""
    base, base_load = load_runtime(fp32, signature, processing, threads, providers)
    variant, load = load_runtime(built, signature, processing, threads, providers)
    compare = compare_embedders if processing.get("kind") == "text_embedding" else compare_classifiers
    metrics, run_base, run_variant = compare(base, variant, sample)
    base_seconds, seconds = median_seconds(run_base, run_variant)
    return {**metrics, "speedup": round(base_seconds / seconds, 3),
            "batch_seconds_fp32": round(base_seconds, 6), "batch_seconds": round(seconds, 6),
            "session_load_seconds_fp32": round(base_load, 4), "session_load_seconds": round(load, 4),
            "sample": sample.source, "sample_rows": len(sample.records),
            "provider": variant.providers[0] if variant.providers else providers[0],
            "threads": threads, "bytes_fp32": len(fp32), "bytes": len(built)}


def variant_providers(variant: str) -> list[str]:
    """int8 and graph are built for the CPU; fp16 runs where the worker would run it."""
    return choose_providers() if variant == "fp16" else [CPU_PROVIDER]


# ---------------------------------------------------------------- the use case

def tenant_id_by_name(session: Session, name: str | None) -> uuid.UUID | None:
    if name is None:
        return None
    tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == name))
    if tenant_id is None:
        raise NotFound(f"no tenant named {name!r}")
    return tenant_id


def optimize_model(sessions: sessionmaker[Session], storage: Storage, name: str, variant: str, *,
                   tenant: str | None = None, version: int | None = None,
                   sample: Sample | None = None, threads: int | None = None,
                   make_default: bool = False) -> dict[str, Any]:
    """Build one variant of a model version, measure it against fp32 and register it;
    returns the new row's name, version, variant and metrics."""
    if variant not in BUILDERS:
        raise InvalidInput(f"variant must be one of {', '.join(VARIANTS)}")
    with sessions() as session:
        tenant_id = tenant_id_by_name(session, tenant)
        base = owned_model(session, tenant_id, name, version)
        version, uri = base.version, base.uri
        signature, processing = dict(base.signature), dict(base.processing)
        base_id, base_sha = str(base.id), base.sha256
        if session.scalar(select(Model.id).where(
                Model.tenant_id.is_(None) if tenant_id is None else Model.tenant_id == tenant_id,
                Model.name == name, Model.version == version, Model.variant == variant)):
            raise Conflict(f"{name} v{version} already has a {variant} variant")
    processing.pop("default_variant", None)
    fp32 = Storage.read_bytes(uri)
    built, provenance = BUILDERS[variant](fp32)
    threads = threads or os.cpu_count() or 1  # the caller passes settings.ort_threads
    try:
        metrics = measure_variant(fp32, built, signature, processing,
                                  sample or default_sample(signature), threads,
                                  variant_providers(variant))
    except Exception as exc:
        if variant != "fp16":
            raise
        metrics = {"measured": False, "needs": "CUDAExecutionProvider",
                   "reason": describe_error(exc)}
    provenance.update(derived_from=base_id, fp32_sha256=base_sha, onnxruntime=ort.__version__)
    with sessions.begin() as session:
        model = register_model(session, storage, name=name, artifact=built, signature=signature,
                               processing=processing, metrics=metrics, provenance=provenance,
                               tenant_id=tenant_id, variant=variant, version=version)
        if make_default:
            set_default_variant(session, model, variant)
        return {"id": str(model.id), "name": name, "version": version, "variant": variant,
                "metrics": metrics}
