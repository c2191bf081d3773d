"""Check an uploaded ONNX graph against the signature and processing it is registered with.

Uses only the `onnx` package (protobuf parsing, the checker): the API never loads a runtime.
`onnx` is imported when a model is checked, not with this module, so that an API process that
never registers a model does not hold it (about 18 MiB of RSS per process).
Nothing here unpickles, reads other files or follows external-data references.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.errors import InvalidInput, ModelLoadError

if TYPE_CHECKING:
    import onnx

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# processing kind -> the signature kind it serves (the runtimes in workers/runtime/onnx.py)
PROCESSING_KINDS = {"tabular_classifier": "tabular", "text_embedding": "text"}
# onnx.TensorProto's data types, numbered by the ONNX spec (onnx.proto): FLOAT; INT64, INT32
FLOAT_TYPES = {1}
INT_TYPES = {7, 6}


@dataclass
class GraphSummary:
    """What the graph declares, recorded as the model's provenance."""

    ir_version: int
    opsets: dict[str, int]
    inputs: dict[str, str]
    outputs: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ir_version": self.ir_version, "opsets": self.opsets, "inputs": self.inputs,
                "outputs": self.outputs, **({"notes": self.notes} if self.notes else {})}


MAX_BATCH_WAIT_MS = 10_000  # a job waits at most this long for others to share its batch


def check_model_name(name: str) -> str:
    """Names become storage keys and appear in `name@alias` references."""
    if not NAME.match(name):
        raise InvalidInput(f"model name {name!r} must be 1-200 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_alias(alias: str) -> str:
    """Aliases are lower-case words; digits alone would read as a version number."""
    if not ALIAS.match(alias):
        raise InvalidInput(f"alias {alias!r} must start with a lower-case letter and hold only "
                           "lower-case letters, digits, '_' or '-' (at most 64)")
    if alias == "latest":
        raise InvalidInput("`latest` always means the newest version and cannot be moved")
    return alias


def parse_model(artifact: bytes) -> onnx.ModelProto:
    """Parse ONNX protobuf bytes, refusing anything that is not a self-contained graph."""
    import onnx
    from google.protobuf.message import Error as ProtobufError

    if not artifact:
        raise ModelLoadError("the model file is empty")
    try:
        model = onnx.load_from_string(artifact)
    except (ProtobufError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"the file is not an ONNX model: {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError("the file is not an ONNX model: it holds no graph")
    external = [t.name for t in all_tensors(model.graph)
                if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelLoadError(
            f"the model references external data ({', '.join(external[:5])}); save it with "
            "all tensors inside the file (onnx.save_model(..., save_as_external_data=False))")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid graph"
        raise ModelLoadError(f"the ONNX graph is invalid: {first}") from None
    return model


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in a graph: initializers and constants, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def describe(value: onnx.ValueInfoProto) -> str:
    """`float[?,64]`, `int64[?]`, or the kind of a non-tensor value."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return kind or "unknown"
    import onnx

    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name \
        if tensor.elem_type else "unknown"
    if not tensor.HasField("shape"):
        return f"{dtype}[…]"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor.shape.dim]
    return f"{dtype}[{','.join(dims)}]"


def graph_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Inputs a caller must feed (initializers listed as inputs have defaults)."""
    initialized = {t.name for t in model.graph.initializer}
    return {v.name: v for v in model.graph.input if v.name not in initialized}


def check_model(artifact: bytes, signature: dict[str, Any],
                processing: dict[str, Any]) -> tuple[dict[str, Any], GraphSummary]:
    """Parse and check a model; returns the signature with defaults filled in and a summary.

    Raises ModelLoadError (422) naming every mismatch between the declaration and the graph.
    """
    kind = processing.get("kind")
    if kind not in PROCESSING_KINDS:
        raise InvalidInput(f"processing.kind must be one of {sorted(PROCESSING_KINDS)}, "
                           f"got {kind!r}")
    for name in ("max_batch_size", "batch_size", "gpu_batch_size"):
        size = processing.get(name)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise InvalidInput(f"processing.{name} must be a positive integer, got {size!r}")
    wait = processing.get("max_batch_wait_ms")
    if wait is not None and (not isinstance(wait, (int, float)) or isinstance(wait, bool)
                             or not 0 <= wait <= MAX_BATCH_WAIT_MS):
        raise InvalidInput(f"processing.max_batch_wait_ms must be a number from 0 to "
                           f"{MAX_BATCH_WAIT_MS}, got {wait!r}")
    model = parse_model(artifact)
    inputs = graph_inputs(model)
    outputs = {v.name: v for v in model.graph.output}
    summary = GraphSummary(
        ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        inputs={name: describe(v) for name, v in inputs.items()},
        outputs={name: describe(v) for name, v in outputs.items()})
    signature = {"kind": PROCESSING_KINDS[kind], **signature}
    if signature["kind"] != PROCESSING_KINDS[kind]:
        raise InvalidInput(f"signature.kind {signature['kind']!r} does not fit processing.kind "
                           f"{kind!r} (expected {PROCESSING_KINDS[kind]!r})")
    check = check_tabular if kind == "tabular_classifier" else check_text
    problems = check(model, inputs, outputs, signature, processing, summary)
    if problems:
        raise ModelLoadError("the declared signature does not match the graph: "
                             + "; ".join(problems), errors=problems)
    return signature, summary


def tensor_type(value: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor | None:
    return value.type.tensor_type if value.type.WhichOneof("value") == "tensor_type" else None


def check_tabular(model: onnx.ModelProto, inputs: dict, outputs: dict, signature: dict,
                  processing: dict, summary: GraphSummary) -> list[str]:
    """One float input of shape [batch, len(columns)], an integer label and float probabilities."""
    problems: list[str] = []
    columns = signature.get("columns")
    if (not isinstance(columns, list) or not columns
            or not all(isinstance(c, str) and c for c in columns)):
        raise InvalidInput("signature.columns must be a non-empty list of column names")
    if len(set(columns)) != len(columns):
        raise InvalidInput("signature.columns holds a name twice")
    signature.setdefault("dtype", "float32")
    if signature["dtype"] != "float32":
        raise InvalidInput("signature.dtype must be float32 (the tabular runtime feeds float32)")
    if "input_name" not in signature and len(inputs) == 1:
        signature["input_name"] = next(iter(inputs))
    name = signature.get("input_name", "input")
    if name not in inputs:
        return [f"input {name!r} is not a graph input (the graph takes {sorted(inputs)})"]
    others = sorted(set(inputs) - {name})
    if others:
        problems.append(f"the graph needs inputs {others} besides {name!r}; a tabular model "
                        "takes exactly one")
    tensor = tensor_type(inputs[name])
    if tensor is None or tensor.elem_type not in FLOAT_TYPES:
        problems.append(f"input {name!r} is {describe(inputs[name])}, not a float32 tensor")
    elif tensor.HasField("shape"):
        dims = tensor.shape.dim
        if len(dims) != 2:
            problems.append(f"input {name!r} has rank {len(dims)} ({describe(inputs[name])}); "
                            "a tabular model takes [batch, features]")
        elif dims[1].HasField("dim_value") and dims[1].dim_value != len(columns):
            problems.append(f"input {name!r} has {dims[1].dim_value} features "
                            f"({describe(inputs[name])}) but the signature declares "
                            f"{len(columns)} columns")
        elif not dims[1].HasField("dim_value"):
            summary.notes.append(f"the feature dimension of {name!r} is dynamic; the number of "
                                 "columns could not be checked")
    label = processing.get("label_output", "label")
    probabilities = processing.get("probability_output", "probabilities")
    for output, wanted, types in ((label, "an integer tensor", INT_TYPES),
                                  (probabilities, "a float tensor", FLOAT_TYPES)):
        if output not in outputs:
            problems.append(f"output {output!r} is missing (the graph answers {sorted(outputs)})")
            continue
        tensor = tensor_type(outputs[output])
        if tensor is None or (tensor.elem_type and tensor.elem_type not in types):
            problems.append(f"output {output!r} is {describe(outputs[output])}, not {wanted}"
                            + (" (export skl2onnx classifiers with zipmap=False)"
                               if tensor is None else ""))
    return problems


def check_text(model: onnx.ModelProto, inputs: dict, outputs: dict, signature: dict,
               processing: dict, summary: GraphSummary) -> list[str]:
    """Token ids and mask in, one embedding out, and the tokenizer stored in the file."""
    problems: list[str] = []
    names = signature.setdefault("input_names", ["input_ids", "attention_mask"])
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) for n in names)):
        raise InvalidInput("signature.input_names must name the token-id and mask inputs")
    for name in names:
        if name not in inputs:
            problems.append(f"input {name!r} is not a graph input (the graph takes {sorted(inputs)})")
        elif (tensor := tensor_type(inputs[name])) is None or tensor.elem_type not in INT_TYPES:
            problems.append(f"input {name!r} is {describe(inputs[name])}, not an integer tensor")
    others = sorted(set(inputs) - set(names))
    if others:
        problems.append(f"the graph needs inputs {others} the text runtime does not feed")
    output = processing.get("output", "sentence_embedding")
    if output not in outputs:
        problems.append(f"output {output!r} is missing (the graph answers {sorted(outputs)})")
    if not isinstance(processing.get("max_tokens"), int) or processing["max_tokens"] < 1:
        raise InvalidInput("processing.max_tokens must be a positive integer")
    key = processing.get("tokenizer_metadata_key", "tokenizer.json")
    if key not in {entry.key for entry in model.metadata_props}:
        problems.append(f"the file has no {key!r} metadata entry (the tokenizer travels inside "
                        "the ONNX file)")
    return problems
