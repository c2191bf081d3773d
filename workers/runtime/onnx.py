"""ONNX Runtime sessions (providers CUDA then CPU, threads from the worker's share of cores)
and the runtimes over them: a tabular classifier and a text embedder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from app.cpus import cpus

GPU_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def choose_providers(require_gpu: bool = False) -> list[str]:
    available = ort.get_available_providers()
    providers = [p for p in (GPU_PROVIDER, CPU_PROVIDER) if p in available]
    if require_gpu and GPU_PROVIDER not in providers:
        raise RuntimeError(f"a GPU worker needs {GPU_PROVIDER}; available: {available}")
    return providers


def check_cuda_active() -> None:
    """Raise unless a session really runs on CUDA. onnxruntime-gpu lists CUDAExecutionProvider
    as available even where no driver or device is usable; a session then falls back to the CPU
    silently, which a GPU worker must not do."""
    choose_providers(require_gpu=True)
    check_provider_runs(GPU_PROVIDER)


def check_provider_runs(provider: str) -> None:
    """Open a one-node session on `provider` alone and check the session kept it."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(probe.SerializeToString(), providers=[provider])
    if provider not in session.get_providers():
        raise RuntimeError(f"{provider} is installed but not usable here (the session fell back "
                           f"to {session.get_providers()}): check the driver and the device")


def default_threads(concurrency: int) -> int:
    return max(1, cpus() // max(1, concurrency))


def make_session(artifact: bytes, threads: int, providers: Sequence[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(artifact, sess_options=options, providers=list(providers))


@dataclass
class TabularClassifier:
    """A model over named numeric columns that returns a label and class probabilities."""

    session: ort.InferenceSession
    columns: list[str]
    input_name: str
    label_output: str = "label"
    probability_output: str = "probabilities"
    providers: list[str] = field(default_factory=list)

    def to_array(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        columns = self.columns
        return np.array([[record[c] for c in columns] for record in records], dtype=np.float32)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, probabilities = self.session.run([self.label_output, self.probability_output],
                                                 {self.input_name: features})
        return labels, probabilities

    def run(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.run_features(self.to_array(records))

    def run_arrays(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`run_features` as arrays: labels, and probabilities rounded as `run_features` rounds
        them (in their own precision, then widened to float64)."""
        labels, probabilities = self.predict(features)
        return labels, np.round(probabilities, 6).astype(np.float64)

    def run_features(self, features: np.ndarray) -> list[dict[str, Any]]:
        """Score a float32 matrix whose columns are `self.columns`, in that order."""
        labels, probabilities = self.predict(features)
        return [{"label": label, "probabilities": row}
                for label, row in zip(labels.tolist(), np.round(probabilities, 6).tolist())]


@dataclass
class TextEmbedder:
    """A sentence encoder whose ONNX graph pools and normalises; the tokenizer travels inside
    the artifact (ONNX metadata), so one file is the whole model."""

    session: ort.InferenceSession
    tokenizer: Tokenizer
    text_field: str = "text"
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    output: str = "sentence_embedding"
    pad_id: int = 0
    batch_size: int = 32
    providers: list[str] = field(default_factory=list)

    def pad(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids padded to the longest of them, and the mask that hides the padding."""
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return input_ids, mask

    def embed(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One model call on unpadded token ids."""
        input_ids, mask = self.pad(ids)
        (embeddings,) = self.session.run([self.output], {self.input_ids: input_ids,
                                                         self.attention_mask: mask})
        return embeddings

    def run(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        encodings = self.tokenizer.encode_batch([record[self.text_field] for record in records])
        # Length-sorted micro-batches: little padding, and bounded memory whatever the batch size.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        embeddings: list[Any] = [None] * len(encodings)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows = np.round(self.embed([encodings[i].ids for i in chunk]), 6).tolist()
            for i, row in zip(chunk, rows):
                embeddings[i] = row
        return [{"embedding": embedding, "truncated": bool(encoding.overflowing)}
                for embedding, encoding in zip(embeddings, encodings)]


def load_tokenizer(session: ort.InferenceSession, processing: dict[str, Any]) -> Tokenizer:
    """The tokenizer stored in the artifact's metadata, truncating at the model's limit."""
    key = processing.get("tokenizer_metadata_key", "tokenizer.json")
    stored = session.get_modelmeta().custom_metadata_map.get(key)
    if stored is None:
        raise ValueError(f"the ONNX artifact has no {key!r} metadata entry")
    tokenizer = Tokenizer.from_str(stored)
    tokenizer.enable_truncation(int(processing["max_tokens"]))
    tokenizer.no_padding()
    return tokenizer


GPU_TEXT_BATCH = 256


def text_batch_size(processing: dict[str, Any], providers: Sequence[str]) -> int:
    """Sentences per model call. On the CPU, the processing's `batch_size` (small length-sorted
    batches pad least); on CUDA its `gpu_batch_size`, default 256, since a GPU call's fixed cost
    outweighs the padding (all-MiniLM-L6-v2 fp16 on an H200: 7.7k sentences/s at 32, 13.6k at
    256; `bench.gpu`, docs/benchmarks.md)."""
    if providers and providers[0] == GPU_PROVIDER:
        return int(processing.get("gpu_batch_size", GPU_TEXT_BATCH))
    return int(processing.get("batch_size", 32))


def load_text_embedder(session: ort.InferenceSession, signature: dict[str, Any],
                       processing: dict[str, Any]) -> TextEmbedder:
    input_ids, attention_mask = signature.get("input_names", ["input_ids", "attention_mask"])
    return TextEmbedder(session=session, tokenizer=load_tokenizer(session, processing),
                        text_field=signature.get("text_field", "text"), input_ids=input_ids,
                        attention_mask=attention_mask,
                        output=processing.get("output", "sentence_embedding"),
                        pad_id=int(processing.get("pad_id", 0)),
                        batch_size=text_batch_size(processing, session.get_providers()),
                        providers=session.get_providers())


def load_tabular_classifier(session: ort.InferenceSession, signature: dict[str, Any],
                            processing: dict[str, Any]) -> TabularClassifier:
    return TabularClassifier(session=session, columns=list(signature["columns"]),
                             input_name=signature.get("input_name", "input"),
                             label_output=processing.get("label_output", "label"),
                             probability_output=processing.get("probability_output", "probabilities"),
                             providers=session.get_providers())


RUNTIMES = {"tabular_classifier": load_tabular_classifier, "text_embedding": load_text_embedder}


def load_model(artifact: bytes, signature: dict[str, Any], processing: dict[str, Any],
               threads: int, require_gpu: bool = False) -> TabularClassifier | TextEmbedder:
    """Build the runtime a model row describes."""
    kind = processing.get("kind", "tabular_classifier")
    if kind not in RUNTIMES:
        raise ValueError(f"unsupported processing kind {kind!r}")
    session = make_session(artifact, threads, choose_providers(require_gpu))
    if require_gpu and GPU_PROVIDER not in session.get_providers():
        raise RuntimeError(f"the model's session fell back to {session.get_providers()} on a "
                           "GPU worker")
    return RUNTIMES[kind](session, signature, processing)
