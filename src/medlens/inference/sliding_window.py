"""Sliding-window prediction over images larger than a network's input window.

Segmentation networks are trained on fixed-size patches, so a whole volume is predicted window by
window and the overlapping predictions are blended. Conventions (and how they compare to MONAI's
``sliding_window_inference``):

* **Placement** (nnU-Net's rule): along an axis of ``size`` voxels with a window of ``roi``, the
  number of windows is ``n = ceil((size - roi) / step) + 1`` with ``step = roi * (1 - overlap)``
  (at least one voxel), and their starts are ``round(linspace(0, size - roi, n))``: evenly spread,
  the first at 0 and the last ending at the border, no step longer than ``step``. MONAI uses
  the same count when ``roi * (1 - overlap)`` is a whole number (it truncates the step to an
  integer) and the same starts when ``size - roi`` is a multiple of the step; otherwise it keeps
  its step and only moves the last window back to the border, so its last two windows overlap
  more than the others.
* **Padding**: an axis shorter than ``roi`` is padded with ``padding_value``, centred
  (``(roi - size) // 2`` before, the rest after, as MONAI), and the output is cropped back.
* **Weighting**: each window's prediction is multiplied by an importance map (a Gaussian by
  default, :func:`gaussian_importance`, MONAI's map up to a constant factor), summed into a
  preallocated output and divided once by the summed weights, so any weighting normalises.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Predictor",
    "ensemble",
    "gaussian_importance",
    "sliding_window",
    "window_starts",
]

Predictor = Callable[[Tensor], "Tensor | Sequence[Tensor]"]
Activation = Literal["softmax", "sigmoid"] | Callable[[Tensor], Tensor] | None

# MONAI's floor for the Gaussian: the weight far from the centre never reaches 0, so every voxel
# covered by a window has a positive summed weight and the final division is safe.
MIN_WEIGHT = 1e-3


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> tuple[float, ...]:
    values = (value,) * ndim if isinstance(value, (int, float)) else tuple(value)
    if len(values) != ndim:
        raise ValueError(f"{name} needs 1 or {ndim} values, got {len(values)}")
    return values


def gaussian_importance(
    roi_size: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gaussian weights of a window: trust a prediction most at the window's centre.

    A network sees least context near a window's border, so overlapping windows are blended with
    weights that fall off from the centre. The map is the product over axes of
    ``exp(-x**2 / (2 sigma**2))`` with ``x`` measured from the window's centre (``(roi - 1) / 2``)
    and ``sigma = sigma_scale * roi``; values below ``1e-3`` are raised to it (so the blend never
    divides by zero), then the map is scaled so that its largest value is exactly 1.

    Args:
        roi_size: window size per spatial axis.
        sigma_scale: sigma as a fraction of the window size, one value or one per axis.
        dtype: dtype of the map (it is computed in float64).
        device: device of the map.

    Returns:
        A tensor of shape ``roi_size``, symmetric about the centre, positive, maximum 1.
    """
    roi = tuple(int(r) for r in roi_size)
    if not roi or min(roi) < 1:
        raise ValueError(f"roi_size must be positive, got {roi}")
    scales = _per_axis(sigma_scale, len(roi), "sigma_scale")
    if min(scales) <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = torch.ones((), dtype=torch.float64)
    for axis, (size, scale) in enumerate(zip(roi, scales, strict=True)):
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        curve = torch.exp(-(x**2) / (2.0 * (scale * size) ** 2))
        weights = weights.unsqueeze(-1) * curve.view((1,) * axis + (size,))
    weights = weights.clamp_(min=MIN_WEIGHT)
    return (weights / weights.max()).to(dtype=dtype, device=device)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis (nnU-Net's evenly spread placement).

    ``n = ceil((size - roi) / step) + 1`` windows with ``step = max(roi * (1 - overlap), 1)``,
    spread evenly from 0 to ``size - roi`` and rounded, so that they cover every voxel, the last
    one ends at the border and no two neighbours are further apart than ``step``. An axis no
    longer than the window has one window at 0 (the caller pads it to ``roi``).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= roi:
        return [0]
    step = max(roi * (1.0 - overlap), 1.0)
    count = math.ceil((size - roi) / step - 1e-9) + 1
    return [round(i * (size - roi) / (count - 1)) for i in range(count)]


def _predictors(predictor: Predictor | Sequence[Predictor]) -> list[Predictor]:
    many = isinstance(predictor, (list, tuple, nn.ModuleList))
    found = list(predictor) if many else [predictor]
    if not found or not all(callable(p) for p in found):
        raise TypeError("predictor must be a callable or a non-empty sequence of callables")
    return found


def _window_device(predictors: list[Predictor], inputs: Tensor) -> torch.device:
    """The device of the first predictor's parameters (windows go where the network is)."""
    for predictor in predictors:
        if isinstance(predictor, nn.Module):
            for tensor in itertools.chain(predictor.parameters(), predictor.buffers()):
                return tensor.device
    return inputs.device


def _activation(activation: Activation) -> Callable[[Tensor], Tensor] | None:
    if activation is None or callable(activation):
        return activation
    if activation == "softmax":
        return lambda t: torch.softmax(t, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid
    raise ValueError(f"activation must be 'softmax', 'sigmoid', a callable or None: {activation!r}")


def _flip_sets(mirror_axes: Sequence[int], ndim: int) -> list[tuple[int, ...]]:
    """Every subset of the mirrored spatial axes, as tensor dims (the empty set first)."""
    dims = []
    for axis in mirror_axes:
        if not -ndim <= axis < ndim:
            raise ValueError(f"mirror axis {axis} out of range for {ndim} spatial axes")
        dims.append(axis % ndim + 2)
    if len(set(dims)) != len(dims):
        raise ValueError(f"mirror_axes repeats an axis: {tuple(mirror_axes)}")
    return [s for k in range(len(dims) + 1) for s in itertools.combinations(dims, k)]


class _WindowPredictor:
    """Runs all predictors on all flips of a window batch; returns their unscaled sum."""

    def __init__(
        self,
        predictors: list[Predictor],
        flips: list[tuple[int, ...]],
        activation: Callable[[Tensor], Tensor] | None,
        roi: tuple[int, ...],
        dtype: torch.dtype,
    ) -> None:
        self.predictors, self.flips, self.activation = predictors, flips, activation
        self.roi, self.dtype = roi, dtype
        self.terms = len(predictors) * len(flips)

    def _one(self, predictor: Predictor, batch: Tensor, dims: tuple[int, ...]) -> Tensor:
        with torch.inference_mode():
            pred = predictor(batch.flip(dims) if dims else batch)
        if isinstance(pred, (list, tuple)):  # deep supervision: the full-resolution head
            pred = pred[0]
        if not isinstance(pred, Tensor):
            raise TypeError(f"predictor returned {type(pred).__name__}, expected a Tensor")
        if pred.ndim != batch.ndim or pred.shape[0] != batch.shape[0] or pred.shape[2:] != self.roi:
            raise ValueError(
                f"predictor mapped a window batch {tuple(batch.shape)} to {tuple(pred.shape)}; "
                f"it must return (n, K, {', '.join(map(str, self.roi))})"
            )
        if self.activation is not None:
            pred = self.activation(pred)
        return pred.flip(dims) if dims else pred

    def __call__(self, batch: Tensor) -> Tensor:
        total: Tensor | None = None
        for predictor in self.predictors:
            for dims in self.flips:
                pred = self._one(predictor, batch, dims)
                if self.terms == 1:
                    return pred
                if total is None:  # a copy: the prediction may share memory with ``batch``
                    total = torch.empty(pred.shape, dtype=self.dtype, device=pred.device)
                    total.copy_(pred)
                else:
                    total.add_(pred)
        assert total is not None
        return total


def sliding_window(
    inputs: Tensor,
    predictor: Predictor | Sequence[Predictor],
    roi_size: int | Sequence[int],
    *,
    overlap: float | Sequence[float] = 0.5,
    batch_size: int = 4,
    weighting: Literal["gaussian", "constant"] = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_value: float = 0.0,
    mirror_axes: Sequence[int] = (),
    activation: Activation = None,
    device: torch.device | str | None = None,
    out_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor:
    """Predict a whole image window by window and blend the overlapping predictions.

    Windows of all batch items are gathered into batches of ``batch_size`` for the predictor,
    copied into one preallocated batch tensor; each prediction is added in place into one output
    buffer, weighted by the importance map, and the sum is divided by the summed weights once at
    the end. Placement, padding and weighting conventions are in the module docstring.

    Args:
        inputs: ``(B, C, *spatial)`` image batch, any number of spatial axes (2D and 3D usual).
        predictor: maps ``(n, C, *roi)`` to ``(n, K, *roi)``; a list/tuple result (deep
            supervision) counts by its first element. A sequence of predictors (cross-validation
            folds) is run on every window and averaged: each window is extracted only once.
        roi_size: window size, one value or one per spatial axis.
        overlap: fraction of the window shared by neighbours, in ``[0, 1)``; one value or per axis.
        batch_size: windows per predictor call.
        weighting: ``"gaussian"`` (:func:`gaussian_importance`) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        padding_value: value for axes shorter than the window.
        mirror_axes: spatial axes (0 = first spatial axis) for mirroring test-time augmentation:
            every subset of them is flipped, predicted, flipped back and averaged, which multiplies
            the prediction cost by ``2 ** len(mirror_axes)``.
        activation: applied to each prediction before averaging (``"softmax"``, ``"sigmoid"`` or
            a callable over ``(n, K, *roi)``); None blends raw outputs (logits).
        device: device of the output (default: that of ``inputs``); windows go to the device of
            the predictor's parameters (or of ``inputs`` for a plain function).
        out_dtype: dtype of the output and of the blending buffers.
        progress: write the number of windows done to stderr.

    Returns:
        ``(B, K, *spatial)`` blended predictions of ``out_dtype``.
    """
    predictors = _predictors(predictor)
    if inputs.ndim < 3 or 0 in inputs.shape:
        raise ValueError(f"inputs must be a non-empty (B, C, *spatial), got {tuple(inputs.shape)}")
    ndim = inputs.ndim - 2
    roi = tuple(int(r) for r in _per_axis(roi_size, ndim, "roi_size"))
    if min(roi) < 1:
        raise ValueError(f"roi_size must be positive, got {roi}")
    overlaps = _per_axis(overlap, ndim, "overlap")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if weighting not in ("gaussian", "constant"):
        raise ValueError(f"weighting must be 'gaussian' or 'constant', got {weighting!r}")
    flips = _flip_sets(mirror_axes, ndim)
    out_device = torch.device(device) if device is not None else inputs.device
    window_device = _window_device(predictors, inputs)

    with torch.no_grad():
        spatial = tuple(inputs.shape[2:])
        lacking = [max(r - s, 0) for r, s in zip(roi, spatial, strict=True)]
        before = [d // 2 for d in lacking]
        if any(lacking):
            pad: list[int] = []
            for d, b in zip(reversed(lacking), reversed(before), strict=True):
                pad += [b, d - b]
            inputs = F.pad(inputs, pad, mode="constant", value=padding_value)
        padded = tuple(inputs.shape[2:])

        starts = [window_starts(s, r, o) for s, r, o in zip(padded, roi, overlaps, strict=True)]
        windows = [
            tuple(slice(s, s + r) for s, r in zip(corner, roi, strict=True))
            for corner in itertools.product(*starts)
        ]
        if weighting == "gaussian":
            weight = gaussian_importance(roi, sigma_scale, dtype=out_dtype, device=out_device)
        else:
            weight = None

        run = _WindowPredictor(predictors, flips, _activation(activation), roi, out_dtype)
        scale = 1.0 / run.terms
        jobs = [(b, window) for b in range(inputs.shape[0]) for window in windows]
        batch_buffer = torch.empty(
            (min(batch_size, len(jobs)), inputs.shape[1], *roi),
            dtype=inputs.dtype,
            device=window_device,
        )
        output: Tensor | None = None
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first : first + batch_size]
            batch = batch_buffer[: len(chunk)]
            for j, (b, window) in enumerate(chunk):
                batch[j].copy_(inputs[(b, slice(None), *window)])
            pred = run(batch)
            if pred.device != out_device:
                pred = pred.to(out_device)
            if output is None:
                shape = (inputs.shape[0], pred.shape[1], *padded)
                output = torch.zeros(shape, dtype=out_dtype, device=out_device)
            for j, (b, window) in enumerate(chunk):
                target = output[(b, slice(None), *window)]
                if weight is None:
                    target.add_(pred[j], alpha=scale)
                else:
                    target.addcmul_(pred[j], weight, value=scale)
            del pred, target  # free the prediction before the next forward pass allocates
            if progress:
                done = first + len(chunk)
                end = "\n" if done == len(jobs) else ""
                print(f"\rsliding window: {done}/{len(jobs)} windows", end=end, file=sys.stderr)
        assert output is not None
        weight_sum = torch.zeros(padded, dtype=out_dtype, device=out_device)
        for window in windows:
            weight_sum[window].add_(1.0 if weight is None else weight)
        output.div_(weight_sum)
        if any(lacking):
            crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
            output = output[(slice(None), slice(None), *crop)].contiguous()
    return output


def ensemble(
    inputs: Tensor,
    predictors: Sequence[Predictor],
    roi_size: int | Sequence[int],
    *,
    activation: Activation = "softmax",
    **kwargs: object,
) -> Tensor:
    """Average several predictors (cross-validation folds) in one sliding-window pass.

    Each window is extracted once and given to every predictor; their outputs go through
    ``activation`` and are averaged. Softmax probabilities are averaged by default, as nnU-Net v1
    does: folds disagree in logit scale, and averaging probabilities keeps every fold's vote
    bounded. Blending is linear with the same weights for every predictor, so this equals running
    each fold's sliding window separately and averaging the stitched probabilities, at the cost
    of one output buffer. Pass ``activation=None`` to average logits instead (nnU-Net v2).

    Args:
        inputs: ``(B, C, *spatial)`` image batch.
        predictors: the folds' networks or functions.
        roi_size: window size.
        activation: ``"softmax"`` (default), ``"sigmoid"``, a callable or None.
        **kwargs: any other :func:`sliding_window` argument (overlap, batch_size, mirror_axes...).

    Returns:
        ``(B, K, *spatial)`` averaged probabilities (or logits with ``activation=None``).
    """
    found = list(predictors)
    if not found:
        raise ValueError("ensemble needs at least one predictor")
    return sliding_window(inputs, found, roi_size, activation=activation, **kwargs)  # type: ignore[arg-type]
