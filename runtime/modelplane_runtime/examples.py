"""Small torch models for the demo, the tests and the benchmarks (weights made here)."""

from __future__ import annotations

from typing import Any


def tiny_classifier() -> Any:
    """float32 [batch, 64] -> 256 -> relu -> 10: HTTP overhead dominates its cost."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).eval()


def heavy_mlp() -> Any:
    """float32 [batch, 1024] -> 4 x 2048 -> 10: compute dominates, batching pays."""
    import torch

    torch.manual_seed(0)
    layers: list[Any] = [torch.nn.Linear(1024, 2048), torch.nn.ReLU()]
    for _ in range(3):
        layers += [torch.nn.Linear(2048, 2048), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(2048, 10))
    return torch.nn.Sequential(*layers).eval()
