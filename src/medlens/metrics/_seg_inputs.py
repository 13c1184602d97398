"""Checking and normalising what the segmentation metrics are given (private).

Masks, label maps, one-hot arrays, spacings and tolerances are validated here, so every public
function in :mod:`medlens.metrics.segmentation` follows the same rules.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medlens.metrics._inputs import MetricInputError, to_numpy
from medlens.metrics._surface import EMPTY_DISTANCES, max_distance

SpacingLike = Any  # None, a number, a sequence in array axis order, or an Image


def array_spacing(image_or_spacing: Any) -> tuple[float, ...]:
    """Spacing in array axis order from an :class:`~medlens.image.Image` or an ITK-order tuple.

    Images store spacing as ``(x, y[, z])`` while their arrays are ``([z,] y, x)``; the metrics
    need one value per array axis, so the order is reversed.
    """
    spacing = getattr(image_or_spacing, "spacing", image_or_spacing)
    return tuple(float(s) for s in reversed(tuple(spacing)))


def binary_masks(pred: Any, ref: Any, label: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of one class from masks or label maps of equal shape."""
    p, r = to_numpy(pred), to_numpy(ref)
    check_shapes(p, r)
    if label is None:
        return p.astype(bool), r.astype(bool)
    return p == label, r == label


def check_shapes(p: np.ndarray, r: np.ndarray) -> None:
    if p.shape != r.shape:
        raise MetricInputError(f"pred and ref differ in shape: {p.shape} and {r.shape}")
    if p.ndim == 0 or p.size == 0:
        raise MetricInputError(f"pred and ref must be non-empty arrays, got shape {p.shape}")


def class_masks(
    pred: Any,
    ref: Any,
    labels: Iterable[int] | None,
    include_background: bool,
    channel_axis: int | None,
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], tuple[int, ...]]:
    """``[(label, pred_mask, ref_mask), ...]`` and the spatial shape."""
    p, r = to_numpy(pred), to_numpy(ref)
    check_shapes(p, r)
    wanted = None if labels is None else [as_label(label) for label in labels]
    if channel_axis is not None:
        if not -p.ndim <= channel_axis < p.ndim or p.ndim < 2:
            raise MetricInputError(f"channel_axis {channel_axis} is not an axis of shape {p.shape}")
        p, r = np.moveaxis(p, channel_axis, 0) > 0.5, np.moveaxis(r, channel_axis, 0) > 0.5
        n = p.shape[0]
        if wanted is None:
            wanted = list(range(0 if include_background else 1, n))
        bad = [label for label in wanted if not 0 <= label < n]
        if bad:
            raise MetricInputError(f"labels {bad} are not channels of a one-hot array with {n}")
        return [(label, p[label], r[label]) for label in wanted], p.shape[1:]
    for name, a in (("pred", p), ("ref", r)):
        integral = np.issubdtype(a.dtype, np.integer) or a.dtype == bool
        if not integral and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
            raise MetricInputError(
                f"{name} is not a label map (non-integer values); pass channel_axis= for "
                "one-hot or probability arrays"
            )
    p, r = _as_int(p), _as_int(r)
    if wanted is None:
        present = sorted(_present(p) | _present(r))
        wanted = [v for v in present if include_background or v != 0]
    boxes_p, boxes_r = _label_boxes(p, wanted), _label_boxes(r, wanted)
    out = []
    for label in wanted:
        crop = _merge_boxes(boxes_p.get(label), boxes_r.get(label), p.shape)
        if crop is None:  # absent from both: nothing to crop, nothing to score but "both empty"
            crop = tuple(slice(0, 1) for _ in p.shape)
        out.append((label, p[crop] == label, r[crop] == label))
    return out, p.shape


def _as_int(a: np.ndarray) -> np.ndarray:
    if a.dtype == bool:
        return a.view(np.uint8)
    return a if np.issubdtype(a.dtype, np.integer) else a.astype(np.int64)


def _present(a: np.ndarray) -> set[int]:
    """Labels occurring in ``a``; one pass with ``find_objects`` for non-negative maps."""
    if a.min() < 0:
        return {int(v) for v in np.unique(a)}
    found = {i + 1 for i, s in enumerate(ndimage.find_objects(a)) if s is not None}
    return found | ({0} if not a.all() else set())


def _label_boxes(a: np.ndarray, labels: list[int]) -> dict[int, tuple[slice, ...]]:
    """Bounding boxes of the wanted labels present in ``a`` (absent labels have none).

    Cropping every class to its boxes makes label maps with many small classes (whole-body CT
    with a hundred organs) cost about as much as their objects, not a hundred full-image passes.
    Background and negative labels get the whole image (correct, just not cropped).
    """
    full = tuple(slice(0, n) for n in a.shape)
    positive = [label for label in labels if label > 0]
    boxes: dict[int, tuple[slice, ...]] = {}
    if positive and a.min() >= 0:
        objects = ndimage.find_objects(a, max_label=max(positive))
        boxes = {label: objects[label - 1] for label in positive if objects[label - 1] is not None}
    else:
        boxes = {label: full for label in positive}
    boxes.update({label: full for label in labels if label <= 0})
    return boxes


def _merge_boxes(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: tuple[int, ...]
) -> tuple[slice, ...] | None:
    """The union of two boxes grown by one voxel (so erosion at the crop edge stays exact)."""
    if a is None and b is None:
        return None
    parts = [box for box in (a, b) if box is not None]
    return tuple(
        slice(
            max(min(box[d].start for box in parts) - 1, 0),
            min(max(box[d].stop for box in parts) + 1, shape[d]),
        )
        for d in range(len(shape))
    )


def as_label(label: Any) -> int:
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise MetricInputError(f"labels must be integers, got {label!r}")
    return int(label)


def class_name(label: int, class_names: Mapping[int, str] | Sequence[str] | None) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def as_spacing(spacing: SpacingLike, ndim: int) -> tuple[float, ...]:
    """Spacing per array axis, validated; Images are converted from ITK order."""
    if spacing is None:
        out: tuple[float, ...] = (1.0,) * ndim
    elif hasattr(spacing, "spacing"):
        out = array_spacing(spacing)
    elif isinstance(spacing, numbers.Real):
        out = (float(spacing),) * ndim
    else:
        out = tuple(float(s) for s in np.asarray(to_numpy(spacing), dtype=float).reshape(-1))
    if len(out) != ndim:
        raise MetricInputError(
            f"spacing needs one value per array axis ({ndim}, in array order), got {list(out)}"
        )
    if not all(math.isfinite(s) and s > 0 for s in out):
        raise MetricInputError(f"spacing must be positive and finite, got {list(out)}")
    return out


def is_per_case_spacing(spacing: SpacingLike, n: int) -> bool:
    """Whether ``spacing`` lists one spacing per case (Images, or a 2D array) rather than one
    for the whole batch (None, a number, an Image or one value per axis)."""
    if spacing is None or isinstance(spacing, numbers.Real) or hasattr(spacing, "spacing"):
        return False
    if isinstance(spacing, (list, tuple)) and spacing and hasattr(spacing[0], "spacing"):
        per_case = True
    else:
        per_case = np.asarray(to_numpy(spacing)).ndim == 2
    if per_case and len(spacing) != n:
        raise MetricInputError(f"{len(spacing)} spacings for a batch of {n}")
    return per_case


def check_tolerance(tolerance: Any) -> float:
    value = float(tolerance)
    if not math.isfinite(value) or value < 0:
        raise MetricInputError(f"tolerance_mm must be finite and >= 0, got {tolerance}")
    return value


def class_tolerance(tolerance_mm: float | Mapping[int, float], label: int) -> float:
    if isinstance(tolerance_mm, Mapping):
        if label not in tolerance_mm:
            raise MetricInputError(f"tolerance_mm has no value for label {label}")
        return check_tolerance(tolerance_mm[label])
    return check_tolerance(tolerance_mm)


def check_empty_distance(empty_distance: str) -> str:
    if empty_distance not in EMPTY_DISTANCES:
        raise MetricInputError(
            f"empty_distance must be one of {EMPTY_DISTANCES}, got {empty_distance!r}"
        )
    return empty_distance


def distance_if_empty(
    state: str, shape: tuple[int, ...], spacing: tuple[float, ...], empty_distance: str
) -> float:
    if state == "both":
        return 0.0
    return max_distance(shape, spacing) if empty_distance == "max" else math.nan


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan
