"""Organ localisation: how far each structure's best box is from its true box, in millimetres.

Where every image holds at most one object of each class (an organ, the head of the
hippocampus), detection is localisation and the field reports distances rather than only
average precision (Criminisi et al., "Regression forests for efficient anatomy detection and
localization in CT studies", 2013; Humpire-Mamani et al., "Efficient abdominal segmentation
... organ localization", 2018): for each image and each class it contains, the top-scoring
detected box of that class is compared with the true one by

* ``iou``: intersection over union of the two boxes;
* ``centre_mm``: distance between their centres;
* ``wall_mm``: mean absolute distance between corresponding faces (the "wall distance", 4 faces
  in 2D, 6 in 3D).

A class present in an image with no detected box of that class is *missed*: it counts in
``detected`` (the share found), with IoU 0, and is left out of the distances. Boxes are corners
``(x1, y1[, z1], x2, y2[, z2])``; pass them in millimetres (world corners, or grid voxels
times ``spacing``) for distances in mm. Means come with 95% percentile-bootstrap intervals over
images (``n_boot`` resamples, seed 0), as the other detection metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["localisation_errors"]


def localisation_errors(
    detections: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    classes: Sequence[Any] | None = None,
    spacing: Sequence[float] | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Per class and overall: ``detected`` (share of true objects with a box of their class),
    mean and median ``iou``, ``centre_mm`` and ``wall_mm`` with bootstrap intervals, and
    ``per_image`` rows.

    Args:
        detections: per image ``{"boxes": (N, 2n), "scores": (N,), "labels": (N,)}``.
        ground_truth: per image ``{"boxes": (G, 2n), "labels": (G,)}``, at most one box per
            class (a class with several true boxes is refused: that is detection, not
            localisation).
        classes: the classes to report, default every label found in the ground truth.
        spacing: per axis (index order), multiplies coordinates (voxels -> mm).
        n_boot: bootstrap resamples for the intervals (0: none).
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection records for {len(ground_truth)} images")
    if classes is None:
        found = {int(v) for t in ground_truth for v in np.asarray(t["labels"]).reshape(-1)}
        classes = sorted(found)
    rows = []
    for index, (det, truth) in enumerate(zip(detections, ground_truth, strict=True)):
        labels = np.asarray(truth["labels"]).reshape(-1)
        boxes = _scaled(truth["boxes"], spacing)
        det_labels = np.asarray(det["labels"]).reshape(-1)
        det_boxes = _scaled(det["boxes"], spacing)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        for label in classes:
            where = np.flatnonzero(labels == label)
            if len(where) > 1:
                raise ValueError(f"image {index}: {len(where)} true boxes of class {label}")
            if not len(where):
                continue
            true_box = boxes[where[0]]
            mine = np.flatnonzero(det_labels == label)
            row = {"image": index, "label": label, "detected": bool(len(mine))}
            if len(mine):
                best = det_boxes[mine[np.argmax(scores[mine])]]
                row.update(_compare(best, true_box))
            else:
                row.update(iou=0.0, centre_mm=float("nan"), wall_mm=float("nan"))
            rows.append(row)
    result = {"per_class": {}, "per_image": rows}
    for label in classes:
        result["per_class"][str(label)] = _summary([r for r in rows if r["label"] == label], n_boot)
    result["all"] = _summary(rows, n_boot)
    return result


def _scaled(boxes: Any, spacing: Sequence[float] | None) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    array = array.reshape(-1, array.shape[-1] if array.ndim > 1 else 4)
    if spacing is not None:
        array = array * np.tile(np.asarray(spacing, dtype=np.float64), 2)
    return array


def _compare(box: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    n = len(box) // 2
    low, high = np.maximum(box[:n], truth[:n]), np.minimum(box[n:], truth[n:])
    inter = float(np.prod(np.clip(high - low, 0, None)))
    union = float(np.prod(box[n:] - box[:n]) + np.prod(truth[n:] - truth[:n])) - inter
    centre = np.linalg.norm((box[:n] + box[n:]) / 2 - (truth[:n] + truth[n:]) / 2)
    return {
        "iou": inter / union if union > 0 else 0.0,
        "centre_mm": float(centre),
        "wall_mm": float(np.mean(np.abs(box - truth))),
    }


def _summary(rows: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    if not rows:
        return out
    out["detected"] = float(np.mean([r["detected"] for r in rows]))
    images = np.asarray([r["image"] for r in rows])
    for key in ("iou", "centre_mm", "wall_mm"):
        values = np.asarray([r[key] for r in rows], dtype=np.float64)
        finite = np.isfinite(values)
        out[key] = float(values[finite].mean()) if finite.any() else None
        out[f"{key}_median"] = float(np.median(values[finite])) if finite.any() else None
        out[f"{key}_ci"] = _interval(values, images, n_boot)
    return out


def _interval(values: np.ndarray, images: np.ndarray, n_boot: int) -> list[float] | None:
    """95% percentile interval of the mean (finite values) over images resampled together."""
    if n_boot <= 0 or not np.isfinite(values).any():
        return None
    unique, inverse = np.unique(images, return_inverse=True)
    rng = np.random.default_rng(0)
    means = []
    for _ in range(n_boot):
        picked = np.bincount(rng.integers(0, len(unique), len(unique)), minlength=len(unique))
        weights = picked[inverse] * np.isfinite(values)
        if weights.sum() == 0:
            continue
        means.append(float(np.nansum(np.where(weights > 0, values, 0) * weights) / weights.sum()))
    if not means:
        return None
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]
