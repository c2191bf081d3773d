"""Magnitude pruning recipe: train a torch MLP on load_digits, prune it, export it, register it.

    python -m bench.prune_digits                     # train, prune, export, report
    python -m bench.prune_digits --amount 0.9 --register digits-pruned   # and register it
                                                     # (needs KILN_API_URL and KILN_API_KEY)

See docs/pruning.md. Prints one JSON line with the accuracy change and the sparsity.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import orjson

COLUMNS = [f"p{i}" for i in range(64)]
OUT = Path(__file__).resolve().parent / "results"


def digits_data(seed: int = 0):
    """The same 80/20 split as the built-in `digits` model."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    return train_test_split(data.data.astype(np.float32), data.target, test_size=0.2,
                            random_state=seed, stratify=data.target)


def make_mlp(hidden: int = 256):
    """64 raw pixel values (0-16) -> logits for 10 digits; the scaling is part of the model, so
    the exported graph takes the same records as `digits`."""
    import torch

    torch.manual_seed(0)  # the same initial weights every run

    class DigitsMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(64, hidden)
            self.out = torch.nn.Linear(hidden, 10)

        def forward(self, pixels):
            return self.out(torch.relu(self.hidden(pixels / 16.0)))

    return DigitsMLP()


def train(model, x, y, epochs: int, seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)
    features, labels = torch.from_numpy(x), torch.from_numpy(y).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(features)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(dim=1).numpy() == y).mean())


def prune_weights(model, amount: float) -> None:
    """Global L1 (magnitude) pruning over both layers' weights: the smallest `amount` of all
    weights become zero, wherever they are."""
    from torch.nn.utils import prune

    prune.global_unstructured([(model.hidden, "weight"), (model.out, "weight")],
                              pruning_method=prune.L1Unstructured, amount=amount)


def make_permanent(model) -> None:
    """Fold the masks into the weights, so that export sees plain (sparse) tensors."""
    from torch.nn.utils import prune

    for layer in (model.hidden, model.out):
        prune.remove(layer, "weight")


def sparsity(model) -> float:
    weights = [model.hidden.weight, model.out.weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def export(model, x_test: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The same export and PyTorch-vs-ONNX check as `kiln models add --torch`."""
    from app.cli.models import check_export, export_torch_classifier

    artifact = export_torch_classifier(model, x_test[:64], "input", "logits", opset=18)
    return artifact, check_export(model, artifact, x_test, "input", "logits")


def register(name: str, artifact: bytes, metrics: dict[str, Any]) -> dict[str, Any]:
    from app.cli.models import DEFAULT_PROCESSING, post_model
    from app.client import KilnClient
    from app.settings import load_settings

    settings = load_settings()
    if not settings.api_key:
        raise SystemExit("set KILN_API_KEY (and KILN_API_URL) to register")
    kiln = KilnClient(settings.api_url, settings.api_key)
    try:
        return post_model(kiln, name, artifact, {
            "signature": {"kind": "tabular", "columns": COLUMNS, "input_name": "input"},
            "processing": DEFAULT_PROCESSING, "metrics": metrics,
            "provenance": {"source": "pytorch", "recipe": "bench/prune_digits.py"}})
    finally:
        kiln.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amount", type=float, default=0.8, help="fraction of weights to zero")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--register", metavar="NAME", default=None)
    args = parser.parse_args()

    x_train, x_test, y_train, y_test = digits_data()
    model = make_mlp()
    train(model, x_train, y_train, args.epochs)
    dense_accuracy = accuracy(model, x_test, y_test)
    dense_artifact, _ = export(model, x_test)

    prune_weights(model, args.amount)
    pruned_only = accuracy(model, x_test, y_test)
    train(model, x_train, y_train, args.finetune_epochs, seed=1)  # masks stay applied
    make_permanent(model)
    pruned_accuracy = accuracy(model, x_test, y_test)
    artifact, check = export(model, x_test)

    OUT.mkdir(exist_ok=True)
    (OUT / "digits-pruned.onnx").write_bytes(artifact)
    metrics = {
        "heldout_accuracy_dense": round(dense_accuracy, 4),
        "heldout_accuracy_pruned_before_finetune": round(pruned_only, 4),
        "heldout_accuracy": round(pruned_accuracy, 4),
        "accuracy_delta": round(pruned_accuracy - dense_accuracy, 4),
        "weight_sparsity": round(sparsity(model), 4),
        "onnx_bytes": len(artifact),
        "onnx_gzip_bytes_dense": len(gzip.compress(dense_artifact)),
        "onnx_gzip_bytes": len(gzip.compress(artifact)),
        **check,
    }
    if args.register:
        model_row = register(args.register, artifact, metrics)
        metrics["registered"] = f"{model_row['name']} v{model_row['version']}"
    print(orjson.dumps(metrics).decode())


if __name__ == "__main__":
    main()
