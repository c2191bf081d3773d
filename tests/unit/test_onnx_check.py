"""The registration check: an ONNX graph against its declared signature, with `onnx` only."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.domain.onnx_check import check_alias, check_model, check_model_name
from app.errors import InvalidInput, ModelLoadError
from app.services.models import parse_reference
from tests.models import COLUMNS, PROCESSING, SIGNATURE, slow_classifier


def tiny() -> bytes:
    return slow_classifier(hidden=8, layers=1)


def test_a_matching_graph_passes_and_fills_in_defaults():
    declared = {"kind": "tabular", "columns": COLUMNS}  # no input_name: the only input is used
    signature, summary = check_model(tiny(), declared, PROCESSING)
    assert signature["input_name"] == "X" and signature["dtype"] == "float32"
    assert summary.inputs == {"X": "float32[?,64]"}
    assert set(summary.outputs) == {"label", "probabilities"}
    assert summary.as_dict()["opsets"] == {"ai.onnx": 17}


def test_a_width_mismatch_names_both_numbers():
    with pytest.raises(ModelLoadError) as caught:
        check_model(tiny(), {**SIGNATURE, "columns": COLUMNS[:63]}, PROCESSING)
    assert "64 features" in caught.value.detail and "63 columns" in caught.value.detail
    assert caught.value.status == 422


def test_a_wrong_input_name_and_a_missing_output_are_both_reported():
    with pytest.raises(ModelLoadError) as caught:
        check_model(tiny(), {**SIGNATURE, "input_name": "features"}, PROCESSING)
    assert "'features' is not a graph input" in caught.value.detail
    with pytest.raises(ModelLoadError) as caught:
        check_model(tiny(), SIGNATURE, {**PROCESSING, "label_output": "class"})
    assert "output 'class' is missing" in caught.value.detail


def test_garbage_and_empty_files_are_not_onnx():
    for artifact in (b"garbage bytes, not protobuf", b"\x00" * 64):
        with pytest.raises(ModelLoadError, match="not an ONNX model"):
            check_model(artifact, SIGNATURE, PROCESSING)
    with pytest.raises(ModelLoadError, match="empty"):
        check_model(b"", SIGNATURE, PROCESSING)


def test_external_data_is_refused():
    model = onnx.load_from_string(tiny())
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/weights.bin")
    with pytest.raises(ModelLoadError, match=r"external data .*w0"):
        check_model(model.SerializeToString(), SIGNATURE, PROCESSING)


def test_an_invalid_graph_is_refused_by_the_checker():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "missing"], ["probabilities"])], "broken",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="invalid"):
        check_model(model.SerializeToString(), SIGNATURE, PROCESSING)


def test_text_models_need_the_tokenizer_inside_the_file():
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [None, None])
    out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, [None, None])
    table = numpy_helper.from_array(np.ones((10, 4), dtype=np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["g"]),
                               helper.make_node("ReduceMean", ["g"], ["sentence_embedding"],
                                                axes=[1], keepdims=0)],
                              "text", [ids, mask], [out], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    processing = {"kind": "text_embedding", "max_tokens": 16}
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        check_model(model.SerializeToString(), {"kind": "text"}, processing)
    model.metadata_props.add(key="tokenizer.json", value="{}")
    signature, _ = check_model(model.SerializeToString(), {"kind": "text"}, processing)
    assert signature["input_names"] == ["input_ids", "attention_mask"]


def test_processing_and_signature_kinds_must_fit():
    with pytest.raises(InvalidInput, match=r"processing\.kind"):
        check_model(tiny(), SIGNATURE, {"kind": "regressor"})
    with pytest.raises(InvalidInput, match="does not fit"):
        check_model(tiny(), {**SIGNATURE, "kind": "text"}, PROCESSING)
    with pytest.raises(InvalidInput, match="columns"):
        check_model(tiny(), {"kind": "tabular", "columns": []}, PROCESSING)


@pytest.mark.parametrize("name", ["max_batch_size", "batch_size", "gpu_batch_size"])
@pytest.mark.parametrize("size", [0, -8, 2.5, "64", True])
def test_batch_sizes_must_be_positive_integers(name, size):
    with pytest.raises(InvalidInput, match=f"processing.{name} "):
        check_model(tiny(), SIGNATURE, {**PROCESSING, name: size})
    check_model(tiny(), SIGNATURE, {**PROCESSING, name: 8})


@pytest.mark.parametrize("wait", [-1, "5", True, 10_001])
def test_a_max_batch_wait_must_be_a_number_of_milliseconds_in_range(wait):
    with pytest.raises(InvalidInput, match="max_batch_wait_ms"):
        check_model(tiny(), SIGNATURE, {**PROCESSING, "max_batch_wait_ms": wait})
    check_model(tiny(), SIGNATURE, {**PROCESSING, "max_batch_wait_ms": 0})
    check_model(tiny(), SIGNATURE, {**PROCESSING, "max_batch_wait_ms": 2.5})


def test_names_aliases_and_references():
    assert check_model_name("fraud-v2.onnx_1") == "fraud-v2.onnx_1"
    for bad in ("../etc", "a/b", "name@prod", "", "-x"):
        with pytest.raises(InvalidInput):
            check_model_name(bad)
    assert check_alias("prod") == "prod"
    for bad in ("latest", "3", "Prod", "a b"):
        with pytest.raises(InvalidInput):
            check_alias(bad)
    assert parse_reference("digits") == ("digits", None, None)
    assert parse_reference("digits@latest") == ("digits", None, None)
    assert parse_reference("digits@prod") == ("digits", "prod", None)
    assert parse_reference("digits@3") == ("digits", None, 3)
    with pytest.raises(InvalidInput):
        parse_reference("digits@")


def test_the_data_type_numbers_are_onnx_s_own():
    """onnx_check spells the tensor types as numbers so that importing it does not load onnx."""
    import onnx

    from app.domain.onnx_check import FLOAT_TYPES, INT_TYPES

    assert FLOAT_TYPES == {onnx.TensorProto.FLOAT}
    assert INT_TYPES == {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
