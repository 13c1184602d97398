"""Fixtures shared by the registry-driven model tests."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from medlens.models import create_model

# Options that make a model cheap to build and run; a model without an entry is built as is.
NARROW: dict[str, dict[str, Any]] = {
    "smallcnn": {"width": 4},
    "resnet*": {"width": 8},
    "densenet*": {"growth_rate": 4, "init_features": 8},
    "*unet": {"features": (4, 8, 16)},
}


def build_narrow(name: str, spatial_dims: int, seed: int = 0, **kw: Any) -> nn.Module:
    """``name`` built narrow (:data:`NARROW`), 2 classes, under a fixed seed, in eval mode."""
    opts = next((o for pat, o in NARROW.items() if fnmatch.fnmatchcase(name, pat)), {})
    torch.manual_seed(seed)
    args = {"spatial_dims": spatial_dims, "num_classes": 2, **opts, **kw}
    return create_model(name, **args).eval()


@pytest.fixture
def narrow() -> Callable[..., nn.Module]:
    """:func:`build_narrow`: ``narrow(name, spatial_dims, seed=0, **options)``."""
    return build_narrow
