"""ONNX models built for tests from onnx.helper: slow enough to cancel or kill mid-run."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

COLUMNS = [f"p{i}" for i in range(64)]


def slow_classifier(hidden: int = 1024, layers: int = 8, seed: int = 0) -> bytes:
    """A 64→hidden→…→10 MLP with softmax and argmax outputs named like the digits model."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous, width = "X", 64
    for layer in range(layers):
        weight = (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes += [helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]),
                  helper.make_node("Relu", [f"m{layer}"], [f"h{layer}"])]
        previous, width = f"h{layer}", hidden
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((width, 10)) / np.sqrt(width)).astype(np.float32), "wout"))
    nodes += [helper.make_node("MatMul", [previous, "wout"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
              helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


SIGNATURE = {"kind": "tabular", "columns": COLUMNS, "input_name": "X", "dtype": "float32"}
PROCESSING = {"kind": "tabular_classifier", "label_output": "label",
              "probability_output": "probabilities"}
