"""The text embedder runtime on a tiny model: mean pooling over an embedding table, in ONNX."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from workers.demo_models import attach_tokenizer
from workers.runtime.onnx import TextEmbedder, load_model

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "cat", "dog", "sat", "ran", "the", "mat"]
DIM = 8
MAX_TOKENS = 6
SIGNATURE = {"kind": "text", "text_field": "text", "input_names": ["input_ids", "attention_mask"],
             "dim": DIM}
PROCESSING = {"kind": "text_embedding", "tokenizer_metadata_key": "tokenizer.json",
              "max_tokens": MAX_TOKENS, "pad_id": 0, "output": "sentence_embedding",
              "batch_size": 2}


def tiny_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tokenizer


def tiny_encoder() -> onnx.ModelProto:
    """Embedding lookup, masked mean over the sequence, L2 normalisation: MiniLM's head."""
    table = np.random.default_rng(0).normal(size=(len(VOCAB), DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "one"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["pooled"]),
        helper.make_node("LpNormalization", ["pooled"], ["sentence_embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel()),
                     helper.make_tensor("last", TensorProto.INT64, [1], [-1]),
                     helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    artifact = attach_tokenizer(tiny_encoder(), tiny_tokenizer().to_str())
    return load_model(artifact, SIGNATURE, PROCESSING, threads=1)


def test_load_model_dispatches_on_the_processing_kind(embedder):
    assert isinstance(embedder, TextEmbedder)
    assert embedder.tokenizer.truncation["max_length"] == MAX_TOKENS


def test_embeddings_are_unit_vectors_in_input_order(embedder):
    texts = ["the cat sat", "dog", "the dog ran the mat", "cat"]
    outputs = embedder.run([{"text": t} for t in texts])
    vectors = np.array([o["embedding"] for o in outputs])
    assert vectors.shape == (4, DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = [embedder.run([{"text": t}])[0]["embedding"] for t in texts]
    assert np.allclose(vectors, np.array(alone), atol=1e-6)  # padding and sorting change nothing


def test_only_texts_past_the_limit_are_flagged_truncated(embedder):
    # [CLS] + 4 words + [SEP] fits in 6 tokens exactly; one more word does not.
    outputs = embedder.run([{"text": "the cat sat the"}, {"text": "the cat sat the mat"},
                            {"text": ""}])
    assert [o["truncated"] for o in outputs] == [False, True, False]
    truncated = embedder.run([{"text": "the cat sat the"}])[0]["embedding"]
    assert np.allclose(outputs[1]["embedding"], truncated, atol=1e-6)


def test_an_artifact_without_its_tokenizer_is_refused():
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        load_model(tiny_encoder().SerializeToString(), SIGNATURE, PROCESSING, threads=1)


def test_unknown_processing_kinds_are_refused():
    with pytest.raises(ValueError, match="unsupported"):
        load_model(b"", SIGNATURE, {"kind": "audio"}, threads=1)
