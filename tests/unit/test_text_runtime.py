"""The text embedder runtime on a tiny model: mean pooling over an embedding table, in ONNX."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from workers.demo_models import attach_tokenizer
from workers.runtime.onnx import (CPU_PROVIDER, GPU_PROVIDER, TextEmbedder, load_model,
                                  text_batch_size)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "cat", "dog", "sat", "ran", "the", "mat"]
DIM = 8
MAX_TOKENS = 6
SIGNATURE = {"kind": "text", "text_field": "text", "input_names": ["input_ids", "attention_mask"],
             "dim": DIM}
PROCESSING = {"kind": "text_embedding", "tokenizer_metadata_key": "tokenizer.json",
              "max_tokens": MAX_TOKENS, "pad_id": 0, "output": "sentence_embedding",
              "batch_size": 2, "gpu_batch_size": 2}  # the same on a machine with CUDA


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


def test_a_bucket_is_batched_by_length_and_comes_back_in_input_order(embedder, monkeypatch):
    """A file chunk hands a text model a bucket of rows (KILN_TUNING__TEXT_BUCKET_ROWS): its
    model batches hold rows of similar length (little padding), and the outputs come back in
    the bucket's order, each equal to the row embedded on its own."""
    from app.formats import Batch
    from workers.scoring import RowContext, score_batch

    rng = np.random.default_rng(7)
    words = ["cat", "dog", "sat", "ran", "the", "mat"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 5, size=40)]
    alone = [embedder.run([{"text": t}])[0]["embedding"] for t in texts]
    widths = []
    embed = embedder.embed
    monkeypatch.setattr(embedder, "embed", lambda ids: widths.append(
        [len(row) for row in ids]) or embed(ids))
    batch = Batch(rows=list(range(100, 140)), records=[{"text": t} for t in texts])
    results, errors = score_batch(batch, embedder, SIGNATURE, RowContext(None, ()))
    assert errors == [] and [r["row_index"] for r in results] == list(range(100, 140))
    assert np.allclose([r["output"]["embedding"] for r in results], alone, atol=1e-6)
    lengths = [length for call in widths for length in call]
    assert lengths == sorted(lengths)  # batches of similar lengths, shortest first
    padded = sum(max(call) * len(call) for call in widths)
    in_order = sum(max(len(embedder.tokenizer.encode(t).ids) for t in texts[i:i + 2]) * 2
                   for i in range(0, 40, 2))
    assert padded < in_order


def test_a_text_model_calls_with_larger_batches_on_cuda_than_on_the_cpu(embedder):
    assert embedder.batch_size == 2
    cpu_only = {key: value for key, value in PROCESSING.items() if key != "gpu_batch_size"}
    assert text_batch_size(cpu_only, [CPU_PROVIDER]) == 2
    assert text_batch_size(cpu_only, [GPU_PROVIDER, CPU_PROVIDER]) == 256
    assert text_batch_size(PROCESSING, [GPU_PROVIDER, CPU_PROVIDER]) == 2
