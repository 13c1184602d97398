"""Optional ``torch.compile`` of hot transform kernels, with a plain-torch fallback.

Kernels are compiled once per input shape on first use (Inductor caches them on disk), only on
the CPU (CUDA's own kernels are already fast) and only for inputs large enough to repay it. Set
``MEDLENS_COMPILE=0`` to switch compilation off; a failure to compile (no C++ toolchain, say)
switches it off with one warning, and the eager code gives the same values.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import cache

import torch

__all__ = ["STATE", "compiled_or_none", "disable", "enabled_for"]

STATE = {"disabled": os.environ.get("MEDLENS_COMPILE", "1") == "0"}
MIN_VOXELS = 32**3


def enabled_for(tensor: torch.Tensor, voxels: int | None = None) -> bool:
    """Whether a compiled kernel should be used for ``tensor`` (CPU, large enough, enabled)."""
    if STATE["disabled"] or tensor.device.type != "cpu":
        return False
    if voxels is None:
        voxels = tensor[0, 0].numel() if tensor.ndim > 2 else tensor.numel()
    return voxels >= MIN_VOXELS


def disable(exc: Exception) -> None:
    """Fall back to eager kernels for the rest of the process, saying why once."""
    STATE["disabled"] = True
    warnings.warn(
        f"medlens: compiled kernels unavailable ({type(exc).__name__}: {exc}); using eager torch",
        RuntimeWarning,
        stacklevel=3,
    )


@cache
def _compile(function: Callable) -> Callable:
    return torch.compile(function, dynamic=False)


def compiled_or_none(function: Callable) -> Callable | None:
    """The compiled version of ``function`` unless compilation is switched off."""
    return None if STATE["disabled"] else _compile(function)


def run(function: Callable, *args, **kwargs):
    """Run ``function`` compiled when enabled, eagerly after any compilation failure."""
    compiled = compiled_or_none(function)
    if compiled is not None:
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:  # compilation can fail on machines without a C++ toolchain
            disable(exc)
    return function(*args, **kwargs)
