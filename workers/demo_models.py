"""Built-in demo models, built offline from data that ships in packages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class BuiltModel:
    name: str
    artifact: bytes
    signature: dict[str, Any]
    processing: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]


DIGITS_COLUMNS = [f"p{i}" for i in range(64)]


def digits_split(seed: int = 0):
    """scikit-learn's load_digits, split 80/20; the same split the demo and tests use."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    return train_test_split(data.data.astype(np.float32), data.target, test_size=0.2,
                            random_state=seed, stratify=data.target)


def digits_records(features: np.ndarray) -> list[dict[str, float]]:
    return [{c: float(v) for c, v in zip(DIGITS_COLUMNS, row)} for row in features]


def build_digits() -> BuiltModel:
    """A scaled MLP on load_digits, exported to ONNX; held-out accuracy measured with ORT."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from workers.runtime.onnx import make_session

    x_train, x_test, y_train, y_test = digits_split()
    pipeline = make_pipeline(StandardScaler(),
                             MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=0))
    pipeline.fit(x_train, y_train)
    onnx_model = to_onnx(pipeline, x_train[:1], options={id(pipeline.steps[-1][1]): {"zipmap": False}},
                         target_opset=17)
    artifact = onnx_model.SerializeToString()
    session = make_session(artifact, threads=1, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    labels, _ = session.run(["label", "probabilities"], {input_name: x_test})
    accuracy = float(np.mean(labels == y_test))
    return BuiltModel(
        name="digits", artifact=artifact,
        signature={"kind": "tabular", "columns": DIGITS_COLUMNS, "input_name": input_name,
                   "dtype": "float32",
                   "outputs": {"label": "int", "probabilities": "float[10]"}},
        processing={"kind": "tabular_classifier", "label_output": "label",
                    "probability_output": "probabilities"},
        metrics={"heldout_accuracy": round(accuracy, 4), "heldout_rows": int(len(y_test))},
        provenance={"source": "sklearn.datasets.load_digits", "trainer": "sklearn MLPClassifier",
                    "exporter": "skl2onnx", "opset": 17},
    )


BUILDERS = {"digits": build_digits}
