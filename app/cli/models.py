"""`kiln models`: list, add and alias models through the API.

`--torch module:factory` exports a PyTorch classifier to ONNX here, on the client, and checks
the export against PyTorch before anything is sent; torch is imported only on that path. The
check evaluates the ONNX graph with `onnx.reference` (the API and app/ never load a runtime);
`kiln models optimize` later measures ONNX Runtime itself.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from app.cli.base import api_call, client, err

if TYPE_CHECKING:  # numpy is imported by the commands that use it: `kiln api` and `kiln worker`
    import numpy as np  # start from this module and need not hold it

DEFAULT_PROCESSING = {"kind": "tabular_classifier", "label_output": "label",
                      "probability_output": "probabilities"}


@click.group()
def models() -> None:
    """Models."""


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """Models visible to your key."""
    for model in api_call(client(ctx).models):
        click.echo(f"{model['name']}\tv{model['version']}\t{model['variant']}\t"
                   f"{orjson.dumps(model['metrics']).decode()}")


def json_option(value: str | None, option: str) -> dict[str, Any] | None:
    """A JSON object given inline or as `@path`."""
    if value is None:
        return None
    raw = Path(value[1:]).read_bytes() if value.startswith("@") else value.encode()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return parsed


def example_matrix(value: str, columns: list[str]) -> np.ndarray:
    """Sample inputs as float32 [rows, columns]: inline JSON, a .npy file (no pickles), or a
    JSON/JSONL file of records (objects keyed by column, or lists in column order)."""
    import numpy as np

    if value.lstrip().startswith(("[", "{")):
        rows: Any = orjson.loads(value)
    elif value.endswith(".npy"):
        rows = np.load(value, allow_pickle=False)
    else:
        raw = Path(value).read_bytes()
        rows = (orjson.loads(raw) if raw.lstrip().startswith(b"[")
                else [orjson.loads(line) for line in raw.splitlines() if line.strip()])
    if isinstance(rows, dict):
        rows = [rows]
    if len(rows) and isinstance(rows[0], dict):
        rows = [[record[c] for c in columns] for record in rows]
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != len(columns) or not len(matrix):
        raise click.BadParameter(f"expected rows of {len(columns)} values, got shape "
                                 f"{matrix.shape}", param_hint="--example-input")
    return matrix


def load_factory(spec: str):
    """`package.module:function` -> the module that function builds (from your own code)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected module:factory", param_hint="--torch")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module_name), attribute)()


def export_torch_classifier(module, example: np.ndarray, input_name: str, returns: str,
                            opset: int) -> bytes:
    """Wrap the module so that the graph answers `label` and `probabilities`, then export it
    with a dynamic batch dimension."""
    import numpy as np
    import torch

    class ClassifierHead(torch.nn.Module):
        def __init__(self, body: torch.nn.Module):
            super().__init__()
            self.body = body

        def forward(self, features):
            scores = self.body(features)
            probabilities = torch.softmax(scores, dim=1) if returns == "logits" else scores
            return torch.argmax(probabilities, dim=1), probabilities

    head = ClassifierHead(module.eval()).eval()
    rows = np.resize(example, (max(2, len(example)), example.shape[1]))  # batch 1 would specialise
    with torch.no_grad():
        program = torch.onnx.export(
            head, (torch.from_numpy(rows),), dynamo=True, input_names=[input_name],
            output_names=["label", "probabilities"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
            external_data=False, verbose=False)
    return program.model_proto.SerializeToString()


def check_export(module, artifact: bytes, example: np.ndarray, input_name: str,
                 returns: str) -> dict[str, Any]:
    """PyTorch against the exported graph on the sample rows."""
    import numpy as np
    import onnx
    import torch
    from onnx.reference import ReferenceEvaluator

    with torch.no_grad():
        scores = module.eval()(torch.from_numpy(example))
        expected = (torch.softmax(scores, dim=1) if returns == "logits" else scores).numpy()
    labels, probabilities = ReferenceEvaluator(onnx.load_from_string(artifact)).run(
        ["label", "probabilities"], {input_name: example})
    return {"onnx_max_abs_diff": float(np.abs(probabilities - expected).max()),
            "label_agreement": float(np.mean(labels == expected.argmax(axis=1))),
            "check_rows": len(example), "check_runtime": "onnx.reference"}


def post_model(kiln, name: str, artifact: bytes, fields: dict[str, Any]) -> dict[str, Any]:
    from app.client import ApiError

    data = {"name": name, **{k: orjson.dumps(v).decode() for k, v in fields.items() if v}}
    response = kiln.http.post("/v1/models", data=data, timeout=None,
                              files={"file": (f"{name}.onnx", artifact, "application/octet-stream")})
    if response.status_code >= 400:
        raise ApiError(response)
    return response.json()


@models.command("add")
@click.argument("name")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="An ONNX file with every tensor inside it.")
@click.option("--torch", "torch_factory", default=None,
              help="module:factory returning a torch.nn.Module classifier; exported here.")
@click.option("--signature", required=True,
              help='JSON or @file, e.g. {"kind": "tabular", "columns": [...], "input_name": "X"}.')
@click.option("--processing", default=None, help="JSON or @file; default: a tabular classifier.")
@click.option("--example-input", default=None,
              help="With --torch: sample rows (JSON, or a .json/.jsonl/.npy file).")
@click.option("--returns", type=click.Choice(["logits", "probabilities"]), default="logits",
              show_default=True, help="With --torch: what the module's forward answers.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="With --torch: refuse an export whose probabilities drift more than this.")
@click.pass_context
def models_add(ctx: click.Context, name: str, onnx_path: Path | None, torch_factory: str | None,
               signature: str, processing: str | None, example_input: str | None, returns: str,
               opset: int, tolerance: float) -> None:
    """Register a model as the next version of NAME (from ONNX, or exported from PyTorch)."""
    if (onnx_path is None) == (torch_factory is None):
        raise click.UsageError("give exactly one of --onnx and --torch")
    declared = json_option(signature, "--signature")
    steps = json_option(processing, "--processing")
    metrics: dict[str, Any] = {}
    provenance: dict[str, Any] = {"source": "onnx file", "filename": onnx_path.name} \
        if onnx_path else {}
    if onnx_path is not None:
        artifact = onnx_path.read_bytes()
    else:
        if example_input is None:
            raise click.UsageError("--torch needs --example-input to export and check against")
        steps = steps or DEFAULT_PROCESSING
        if steps.get("kind") != "tabular_classifier":
            raise click.UsageError("--torch exports tabular classifiers; export other models to "
                                   "ONNX yourself and use --onnx")
        import torch

        input_name = declared.setdefault("input_name", "input")
        example = example_matrix(example_input, list(declared.get("columns") or []))
        module = load_factory(torch_factory)
        err.print(f"exporting {torch_factory} to ONNX (opset {opset}) …")
        artifact = export_torch_classifier(module, example, input_name, returns, opset)
        metrics = check_export(module, artifact, example, input_name, returns)
        if metrics["onnx_max_abs_diff"] > tolerance:
            raise click.ClickException(f"the ONNX export differs from PyTorch by "
                                       f"{metrics['onnx_max_abs_diff']:.2e} (tolerance "
                                       f"{tolerance:.0e}); nothing was registered")
        err.print(f"checked on {len(example)} rows: max abs diff "
                  f"{metrics['onnx_max_abs_diff']:.2e}")
        provenance = {"source": "pytorch", "factory": torch_factory, "opset": opset,
                      "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
                      "returns": returns}
    model = api_call(post_model, client(ctx), name, artifact,
                     {"signature": declared, "processing": steps, "metrics": metrics,
                      "provenance": provenance})
    err.print(f"registered {model['name']} v{model['version']}")
    click.echo(orjson.dumps(model, option=orjson.OPT_INDENT_2).decode())


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.pass_context
def models_alias(ctx: click.Context, name: str, alias: str, version: int) -> None:
    """Point ALIAS at VERSION of your model NAME; jobs then name it NAME@ALIAS."""
    from app.client import ApiError

    def post(kiln):
        response = kiln.http.post(f"/v1/models/{name}/aliases",
                                  json={"alias": alias, "version": version})
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json()

    api_call(post, client(ctx))
    click.echo(f"{name}@{alias} -> v{version}")
