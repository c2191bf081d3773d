"""Tiny PyTorch modules for `kiln models add --torch` tests (torch is imported lazily)."""

from __future__ import annotations

COLUMNS = ["a", "b", "c", "d"]


def tiny_classifier():
    """4 features -> 3 classes, fixed weights so that the test is deterministic."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3)).eval()
