"""What ``medlens explain`` and the evaluation report explain for a segmentation run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.explain import ExplainJob

__all__ = ["explain_job", "segmentation_job"]


def explain_job(run: Any, input_path: Path, target, limit) -> ExplainJob:
    """What ``medlens explain`` explains for a segmentation run: see :func:`segmentation_job`."""
    from medlens.io.discover import discover_inputs

    items = discover_inputs(Path(input_path), spatial_dims=run.plan.spatial_dims)
    if limit is not None:
        items = items[: int(limit)]
    job = segmentation_job(run, ((item.name, item.load()) for item in items), target)
    if not job.ids:
        raise MedlensError(f"{input_path}: the network predicts no foreground to explain")
    return job


def segmentation_job(run: Any, images: Any, target: int | str | None = None) -> ExplainJob:
    """What to explain for a loaded segmentation run and ``(name, Image)`` pairs: per image and
    foreground class the network predicts there (or only ``target``), a :class:`RegionScore`
    of its predicted region, on the plan's grid (padded to the network's divisor)."""
    from medlens.data.dataset import Sample
    from medlens.explain.methods import RegionScore
    from medlens.tasks.segmentation.data import preprocess_case
    from medlens.tasks.segmentation.network import predict_case
    from medlens.tasks.segmentation.predict import _squeeze_2d

    plan = run.plan
    network = run.networks[0].eval()
    foreground = [v for v in plan.label_values if v not in (0, plan.ignore_label)]
    if target is not None:
        if str(target).lstrip("-").isdigit() and int(target) in plan.label_values:
            foreground = [int(target)]
        else:
            raise MedlensError(f"--target {target}: not a label of the run {plan.label_values}")
    divisor = np.asarray(plan.divisor)
    ids, inputs, models, names, display = [], [], [], [], []
    for name, image in images:
        image = _squeeze_2d(image, plan.spatial_dims)
        case = preprocess_case(Sample(image=image, id=name), plan)
        probs = predict_case([network], case.image, plan)
        labels = np.asarray(plan.label_values)[probs.argmax(0)]
        shape = np.asarray(case.image.shape[1:])
        padded = (np.ceil(shape / divisor) * divisor).astype(int)
        pad = [(0, 0)] + [(0, int(p - s)) for p, s in zip(padded, shape, strict=True)]
        x = np.pad(case.image, pad)
        for value in foreground:
            region = np.pad(labels == value, pad[1:])
            if not region.any():
                continue
            channel = list(plan.label_values).index(value)
            ids.append(name if len(foreground) == 1 else f"{name}.label{value}")
            inputs.append(torch.from_numpy(x).float())
            models.append(RegionScore(network, channel, torch.from_numpy(region[None])).eval())
            names.append(f"label {value} in its predicted region")
            display.append(x)
    notes = [
        "Segmentation: the score explained is the mean logit of the class inside the region "
        "the network predicts for it, on the plan's grid (resampled, normalised)."
    ]
    if len(run.networks) > 1:
        notes.append(
            f"The run has {len(run.networks)} folds; the first fold's network is explained."
        )
    return ExplainJob(
        ids,
        inputs,  # images differ in size: one tensor per image
        models,
        torch.zeros(len(ids), dtype=torch.long),
        names,
        display,
        None,
        notes,
        "segmentation",
    )
