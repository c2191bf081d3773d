"""ONNX Runtime sessions: providers CUDA then CPU, threads from the worker's share of cores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

GPU_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def choose_providers(require_gpu: bool = False) -> list[str]:
    available = ort.get_available_providers()
    providers = [p for p in (GPU_PROVIDER, CPU_PROVIDER) if p in available]
    if require_gpu and GPU_PROVIDER not in providers:
        raise RuntimeError(f"a GPU worker needs {GPU_PROVIDER}; available: {available}")
    return providers


def default_threads(concurrency: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


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
        labels, probabilities = self.predict(self.to_array(records))
        return [{"label": int(label), "probabilities": [round(float(p), 6) for p in row]}
                for label, row in zip(labels, probabilities)]


def load_model(artifact: bytes, signature: dict[str, Any], processing: dict[str, Any],
               threads: int, require_gpu: bool = False) -> TabularClassifier:
    """Build the runtime a model row describes."""
    kind = processing.get("kind", "tabular_classifier")
    if kind != "tabular_classifier":
        raise ValueError(f"unsupported processing kind {kind!r}")
    providers = choose_providers(require_gpu)
    session = make_session(artifact, threads, providers)
    return TabularClassifier(session=session, columns=list(signature["columns"]),
                             input_name=signature.get("input_name", "input"),
                             label_output=processing.get("label_output", "label"),
                             probability_output=processing.get("probability_output", "probabilities"),
                             providers=session.get_providers())
