"""Exponential moving average of a model's weights, for validation and the saved model.

Averaging the weights over the last few hundred steps smooths out the noise of the final SGD
iterates; the average usually validates better than the raw weights at no training cost.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """A copy of ``model`` whose floating-point state follows ``ema = d * ema + (1 - d) * w``.

    Parameters and floating buffers (BatchNorm statistics) are averaged; integer buffers (batch
    counters) are copied. The copy is kept in eval mode and never receives gradients.

    Args:
        model: the model being trained (unwrapped, not the DDP wrapper).
        decay: ``d`` above, in ``[0, 1)``; 0 makes the copy equal the current weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        mine = self.module.state_dict()
        averaged: list[torch.Tensor] = []
        current: list[torch.Tensor] = []
        for name, value in model.state_dict().items():
            target = mine[name]
            if target.is_floating_point():
                averaged.append(target)
                current.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "decay": self.decay,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state.get("num_updates", 0))
