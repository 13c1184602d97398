"""What ``medlens explain`` explains for a classification run (its explain adapter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medlens.explain import ExplainJob
from medlens.tasks.classification.bundle import Run

__all__ = ["explain_job"]


def explain_job(run: Run, input_path: Path, split: str | None, target, limit) -> ExplainJob:
    """What ``medlens explain`` explains for a classification run: each image's predicted
    class (or ``target``), scored by the first fold's network."""
    from medlens.tasks.classification.data import read_inputs

    images = read_inputs(input_path, run.spec, split=split)
    n = len(images) if limit is None else min(int(limit), len(images))
    array = np.array(images.images[:n])
    x = torch.from_numpy(array)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    network = run.networks[0].eval()
    names = run.class_names
    if target is None:
        from medlens.tasks.classification.bundle import predicted_labels

        probs = run.probabilities(array, [network])
        if run.metric_task == "multilabel":
            chosen = probs.argmax(axis=1)
        else:
            chosen = predicted_labels(probs, run.metric_task, run.threshold, run.positive)
        targets = torch.as_tensor(np.asarray(chosen), dtype=torch.long)
        label = [
            f"predicted {names[int(t)]} ({probs[i, int(t)]:.2f})" for i, t in enumerate(targets)
        ]
    else:
        from medlens.tasks.explaining import class_index

        index = class_index(target, names)
        targets = torch.full((n,), index, dtype=torch.long)
        label = [f"class {names[index]}"] * n
    notes = []
    if len(run.networks) > 1:
        notes.append(
            f"The run has {len(run.networks)} cross-validation folds; the first fold's "
            "network is explained."
        )
    volume_writer = None
    if images.spatial_dims == 3:
        volume_writer = _volume_writer(input_path, images.ids[:n], tuple(array.shape[2:]))
    return ExplainJob(
        list(images.ids[:n]),
        x,
        [network] * n,
        targets,
        label,
        array,
        volume_writer,
        notes,
        "classification",
        multilabel=run.metric_task == "multilabel",
    )


def _volume_writer(input_path: Path, ids: list[str], shape: tuple[int, ...]):
    """For 3D inputs read from image files: write the map on each input's own grid (NIfTI)."""
    if Path(input_path).suffix.lower() == ".npz":
        return None
    from medlens.io.discover import discover_inputs

    sources = {item.id: item for item in discover_inputs(Path(input_path), spatial_dims=3)}

    def write(i: int, amap: np.ndarray, target: Path) -> Path | None:
        from medlens import save_image
        from medlens.geometry import resample
        from medlens.image import Image

        source = sources.get(ids[i])
        if source is None:
            return None
        original = source.load()
        if original.spatial_dims != 3:
            return None
        # the model grid covers the input's extent (align_corners=False resizing): scale the
        # spacing and move the origin to the first new voxel's centre
        size = np.asarray(original.spatial_shape[::-1], dtype=float)  # index order (x, y, z)
        scale = size / np.asarray(amap.shape[::-1], dtype=float)
        spacing = np.asarray(original.spacing, dtype=float) * scale
        shift = np.asarray(original.spacing, dtype=float) * (0.5 * scale - 0.5)
        origin = np.asarray(original.origin, dtype=float) + np.asarray(original.direction) @ shift
        grid = Image(
            amap.astype(np.float32),
            spacing=tuple(spacing),
            origin=tuple(origin),
            direction=original.direction,
        )
        like = original.with_array(np.zeros(original.spatial_shape, np.float32), leading=())
        back = resample(grid, like=like)
        save_image(back, target)
        return target

    return write
