"""Checkpoints: plain dicts of tensors and Python values, written atomically, read safely.

A checkpoint holds nothing that needs unpickling arbitrary classes, so it loads with
``torch.load(path, weights_only=True)``: opening a checkpoint from someone else cannot run code.
It is written to a temporary file and renamed, so a run killed mid-write leaves the previous
checkpoint intact. RNG states are saved so a resumed run draws the same random numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens._atomic import atomic_path
from medlens.errors import MedlensError

__all__ = [
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "set_rng_state",
]

_SCALARS = (bool, int, float, str, type(None))


class CheckpointError(MedlensError):
    """A checkpoint cannot be written, read or used for the requested run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically; refuse values ``weights_only`` loading would reject."""
    _check_plain(state, "state")
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint ({exc})", path) from None


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, foreign pickle, truncated file, ...
        raise CheckpointError(
            f"cannot read checkpoint ({type(exc).__name__}: {exc})", path
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint holds a {type(state).__name__}, not a dict", path)
    return state


def load_weights(model: nn.Module, path: str | Path, *, ema: bool = True) -> nn.Module:
    """Load a checkpoint's weights into ``model``: the EMA weights when saved (and ``ema``)."""
    state = load_checkpoint(path)
    weights = state.get("ema", {}).get("module") if ema and state.get("ema") else None
    if weights is None:
        weights = state.get("model")
    if weights is None:
        raise CheckpointError("checkpoint has no model weights", path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the model ({exc})", path) from None
    return model


def get_rng_state() -> dict[str, Any]:
    """The torch CPU (and, when in use, CUDA) generator states as uint8 tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` saved (CUDA states only when the device count fits)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, (torch.Tensor, *_SCALARS)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain checkpoint value")
