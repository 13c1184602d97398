"""Checkpoints: plain dicts of tensors and Python values, written atomically, read safely.

A checkpoint holds nothing that needs unpickling arbitrary classes, so it loads with
``torch.load(path, weights_only=True)``: opening a checkpoint from someone else cannot run code.
It is written to a temporary file and renamed, so a run killed mid-write leaves the previous
checkpoint intact. RNG states are saved so a resumed run draws the same random numbers.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens._atomic import atomic_write_bytes
from medlens.errors import MedlensError

__all__ = [
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
    "load_weights",
    "reported_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

_SCALARS = (bool, int, float, str, type(None))


class CheckpointError(MedlensError):
    """A checkpoint cannot be written, read or used for the requested run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically; refuse values ``weights_only`` loading would reject.

    The state is serialised in memory and written as bytes, so a full disk or a missing
    permission reads as such (torch's own writer reports them as an internal RuntimeError).
    """
    _check_plain(state, "state")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getbuffer())  # OutputError: "<path>: cannot write (...)"


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: we say it ourselves
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # a foreign pickle: say so, and offer no way round
        if "global" not in str(exc).lower() and "class" not in str(exc).lower():
            raise CheckpointError(
                "cannot read checkpoint (not a PyTorch checkpoint)", path
            ) from None
        raise CheckpointError(
            "refused: it holds Python objects beyond tensors and plain values, which could "
            f"run code when loaded ({_refused_object(exc)}); medlens never loads such files",
            path,
        ) from None
    except Exception as exc:  # corrupt zip, truncated file, ...
        text = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"cannot read checkpoint ({type(exc).__name__}: {text})", path
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


def reported_checkpoint(fold_dir: str | Path) -> Path:
    """The checkpoint a finished training run reports: ``best.pt``, or ``last.pt`` when no
    validation ever chose one. A missing ``best.pt`` is refused (``last.pt`` is another model
    than the one the run's metrics describe)."""
    fold_dir = Path(fold_dir)
    best, last = fold_dir / "best.pt", fold_dir / "last.pt"
    if best.is_file():
        return best
    if not last.is_file():
        raise CheckpointError("no checkpoint (best.pt or last.pt)", fold_dir)
    tracker = load_checkpoint(last).get("tracker") or {}
    if tracker.get("best") is not None:
        raise CheckpointError(
            f"best.pt is missing: it holds the model this run reported (epoch "
            f"{tracker.get('best_epoch')}); restore it, or train again",
            fold_dir,
        )
    return last


def _refused_object(exc: Exception) -> str:
    """The object torch refused, without its advice to load the file unsafely."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    for line in lines:
        if line.startswith(("Trying to load", "Unsupported", "Unpickling error")):
            return line.split(" Check the documentation", 1)[0].rstrip(".")[:120]
    return "an object outside the allowed types"


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
