"""Where a run's starting state comes from: given weights, or a checkpoint to resume.

Given weights (a federated round starts from the server's model) come as a state dict or as a
file read with ``weights_only=True`` (a plain ``torch.save(model.state_dict())`` or a medlens
training checkpoint, whose ``"model"`` entry is used). They are checked against the model before
anything is copied, so a mismatch names the keys and leaves the model untouched
(``load_state_dict`` would have copied the matching part first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.engine.checkpoint import CheckpointError, load_checkpoint
from medlens.engine.config import RESUME_MUTABLE, ConfigError, TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "Weights",
    "apply_weights",
    "checkpoint_to_resume",
    "read_resumable",
    "read_weights",
]

#: The ``"format"`` entry of a training checkpoint (new entries with defaults keep it).
CHECKPOINT_FORMAT = "medlens.engine/1"

#: What ``fit(initial_weights=...)`` accepts: a state dict, or the path of a file holding one.
Weights = Mapping[str, torch.Tensor] | str | Path


def read_weights(weights: Weights) -> tuple[dict[str, Any], Path | None]:
    """``(state_dict, file)``: the weights as a dict, and the file they came from (if any)."""
    if isinstance(weights, (str, Path)):
        state = load_checkpoint(weights)  # weights_only=True; errors name the file
        if state.get("format") == CHECKPOINT_FORMAT:
            state = state.get("model") or {}
        return dict(state), Path(weights)
    if not isinstance(weights, Mapping):
        raise ConfigError(f"initial_weights: a state dict or a path, not {type(weights).__name__}")
    return dict(weights), None


def apply_weights(model: nn.Module, state: Mapping[str, Any], file: Path | None) -> None:
    """Copy ``state`` into ``model`` (values copied, never aliased), refusing any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    kinds = (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped))
    problems = [
        f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in kinds
        if keys
    ]
    if problems:
        message = f"the weights do not fit the model ({'; '.join(problems)})"
        raise CheckpointError(message if file else f"initial_weights: {message}", file)
    with torch.no_grad():
        model.load_state_dict(state)


def checkpoint_to_resume(
    resume: bool | str | Path, output_dir: Path | None, own_dir: Path | None
) -> Path | None:
    """The checkpoint ``fit(resume=...)`` continues from, or ``None`` for a new run.

    A new run refuses a folder holding another run's ``last.pt``, except ``own_dir``: the
    folder this trainer's own earlier fit wrote (the next round replaces its files).
    """
    last = None if output_dir is None else output_dir / "last.pt"
    if not resume:
        if last is not None and last.exists() and output_dir != own_dir:
            raise CheckpointError("holds a run already; resume it or use a new folder", last)
        return None
    if resume is True:
        if last is None:
            raise CheckpointError("resume=True needs an output_dir (or a checkpoint path)")
        return last
    return Path(resume)


def read_resumable(path: Path, config: TrainConfig, optimizers: Iterable[str]) -> dict[str, Any]:
    """The checkpoint at ``path``, refused unless this configuration and optimisers fit it."""
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a {CHECKPOINT_FORMAT} training checkpoint", path)
    saved = TrainConfig.from_dict(state["config"])
    # settings newer than the checkpoint (it does not record them) take today's value
    unrecorded = set(TrainConfig.__dataclass_fields__) - set(state["config"])
    changed = saved.differences(config, ignore=RESUME_MUTABLE | unrecorded)
    if changed:
        raise CheckpointError(
            "the configuration differs from the checkpoint's (only epochs and display "
            f"settings may change on resume): {'; '.join(changed)}",
            path,
        )
    names = sorted(optimizers)
    if sorted(state["optimizers"]) != names:
        raise CheckpointError(
            f"the checkpoint has optimisers {sorted(state['optimizers'])}, this trainer {names}",
            path,
        )
    return state
