"""What ``medlens explain`` explains for a detection run: Grad-CAM of a box's score.

For each image the network's most confident box (or that of the class ``--target`` names) is
explained: the scorer is the class logit at the pyramid location that predicted the box
(:class:`BoxScore`), and Grad-CAM hooks onto that location's pyramid level, so the map answers
"what made the network put this box here".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.explain import ExplainJob

__all__ = ["BoxScore", "explain_job"]


class BoxScore(nn.Module):
    """An FCOS seen as a scorer: the logit of class ``label`` at location ``index`` ``(B, 1)``;
    Grad-CAM's layer is the pyramid level of that location."""

    def __init__(self, network: nn.Module, index: int, label: int, level: int) -> None:
        super().__init__()
        self.network, self.index, self.label, self.level = network, int(index), int(label), level

    @property
    def feature_layer(self) -> nn.Module:
        return self.network.smooth[self.level]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[:, self.index, self.label][:, None]


def explain_job(run: Any, input_path: Path, target: str | None, limit: int | None) -> ExplainJob:
    """Per image under ``input_path``, a :class:`BoxScore` of its most confident box."""
    from medlens.io.discover import discover_inputs
    from medlens.tasks.detection.data import channels_first, normalise, to_grid
    from medlens.tasks.detection.predict import _device, _pad, decode

    plan = run.plan
    names = plan.class_names
    wanted = None
    if target is not None:
        if target not in names:
            raise MedlensError(f"--target {target}: not a class of the run {names}")
        wanted = names.index(target)
    network = run.networks[0].eval()
    items = discover_inputs(Path(input_path), spatial_dims=plan.spatial_dims)
    if limit is not None:
        items = items[: int(limit)]
    ids, inputs, models, target_names, display = [], [], [], [], []
    for item in items:
        image = item.load()
        x = _pad(normalise(channels_first(to_grid(image, plan)), plan), 32)
        tensor = torch.from_numpy(np.ascontiguousarray(x)).float()
        with torch.no_grad():
            boxes, scores, labels, where = decode(
                network(tensor[None].to(_device(network)))[0], x.shape[1:], plan
            )
        keep = np.flatnonzero(labels == wanted) if wanted is not None else np.arange(len(labels))
        if not len(keep):
            continue
        best = int(keep[np.argmax(scores[keep])])
        level = _level(plan, x.shape[1:], int(where[best]))
        ids.append(item.name)
        inputs.append(tensor)
        models.append(BoxScore(network, int(where[best]), int(labels[best]), level).eval())
        box = ", ".join(f"{v:.0f}" for v in boxes[best])
        target_names.append(f"{names[int(labels[best])]} box ({box}), score {scores[best]:.2f}")
        display.append(x)
    if not ids:
        raise MedlensError(f"{input_path}: the network finds no box to explain")
    notes = [
        "Detection: the score explained is the class logit at the pyramid location that "
        "predicted the image's most confident box, on the plan's grid; Grad-CAM on that "
        "location's pyramid level."
    ]
    return ExplainJob(
        ids,
        inputs,
        models,
        torch.zeros(len(ids), dtype=torch.long),
        target_names,
        display,
        None,
        notes,
        "detection",
    )


def _level(plan, shape, index: int) -> int:
    """The pyramid level of location ``index`` for an input of ``shape``."""
    total = 0
    for level, stride in enumerate(plan.strides):
        total += int(np.prod([-(-int(s) // stride) for s in shape]))
        if index < total:
            return level
    raise IndexError(index)
