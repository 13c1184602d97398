"""Toy problems and tiny models shared by the engine tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

#: The training script the kill/resume and torchrun tests run in subprocesses.
SCRIPT = Path(__file__).with_name("train_script.py")


def blobs(n: int = 96, classes: int = 3, dim: int = 4, seed: int = 0, spread: float = 3.0):
    """Well-separated Gaussian blobs: ``(points (n, dim) float, labels (n,) int64)``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * spread
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=g), labels


def mlp(dim: int = 4, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, out))


@pytest.fixture
def toy():
    """``(train, val)`` pairs of a 3-class separable problem."""
    x, y = blobs(120)
    return (x[:96], y[:96]), (x[96:], y[96:])


def load_script():
    """``train_script.py`` as a module, to run its ``main`` in this process."""
    spec = importlib.util.spec_from_file_location("medlens_engine_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_time(history: list[dict]) -> list[dict]:
    """History records without their wall-clock field (the one thing a rerun changes)."""
    return [{k: v for k, v in r.items() if k != "time"} for r in history]
