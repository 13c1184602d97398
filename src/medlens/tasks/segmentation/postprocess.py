"""Postprocessing of predicted label maps, decided on validation data (as nnU-Net does).

Operations per foreground class, each kept only where the validation cases say so:

- **largest connected component**: voxels of the class outside its largest component become
  background (one organ, one head: stray islands are false positives);
- **hole filling**: background enclosed by the class becomes the class (never another class:
  a tumour inside an organ stays a tumour);
- **ellipse** (2D only, kept only if it raises the validation Dice): the class becomes the
  filled ellipse fitted robustly to its boundary (:func:`medlens.measure.fit_head_ellipse`'s
  fit, points on the image border and outlying bumps dropped). A shape prior for structures
  that are ellipses in the image (a fetal head, an optic disc, a follicle): a ragged
  prediction keeps its position and size but loses its bites and bulges.

:func:`decide_postprocessing` compares mean Dice per class with and without each operation on
validation predictions (out-of-fold when cross-validating) and returns the rules;
:func:`apply_postprocessing` applies them to a label map. The rules are saved in the run folder
as ``postprocessing.json`` and applied by ``medlens predict`` and ``medlens evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["apply_postprocessing", "decide_postprocessing"]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """``mask`` reduced to its largest face-connected component."""
    components, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def fitted_ellipse(mask: np.ndarray) -> np.ndarray | None:
    """The filled ellipse fitted to the boundary of a 2D mask's largest component (holes
    filled), on the mask's grid; None when no ellipse fits (too few boundary points)."""
    from medlens.measure.head_circumference import MeasurementError, fit_head_ellipse

    try:
        return fit_head_ellipse(mask, correction=0.0).mask(mask.shape)
    except MeasurementError:
        return None


def _as_ellipse(out: np.ndarray, value: int, mask: np.ndarray) -> np.ndarray:
    """``out`` with class ``value`` (``mask``) replaced by its fitted ellipse, drawn only over
    background and the class itself."""
    ellipse = fitted_ellipse(mask) if mask.ndim == 2 and mask.any() else None
    if ellipse is None:
        return out
    out[mask & ~ellipse] = 0
    out[ellipse & (out == 0)] = value
    return out


def _apply_one(labels: np.ndarray, value: int, lcc: bool, fill: bool, ellipse: bool) -> np.ndarray:
    if not (lcc or fill or ellipse):
        return labels
    mask = labels == value
    if not mask.any():
        return labels
    out = labels.copy()
    if lcc:
        keep = largest_component(mask)
        out[mask & ~keep] = 0
        mask = keep
    if fill:
        out[ndimage.binary_fill_holes(mask) & (out == 0)] = value
    if ellipse:
        out = _as_ellipse(out, value, out == value)
    return out


def apply_postprocessing(labels: np.ndarray, rules: dict[str, Any] | None) -> np.ndarray:
    """``labels`` with the rules of :func:`decide_postprocessing` applied (a copy)."""
    if not rules:
        return labels
    out = labels
    for value, rule in sorted(rules.get("classes", {}).items(), key=lambda kv: int(kv[0])):
        out = _apply_one(out, int(value), bool(rule.get("largest_component")),
                         bool(rule.get("fill_holes")), bool(rule.get("ellipse")))  # fmt: skip
    return out


def decide_postprocessing(
    predictions: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    label_values: Sequence[int],
    *,
    ignore_label: int | None = None,
) -> dict[str, Any]:
    """Per class, keep each operation whose mean validation Dice is not lower than without it.

    The operations are tried in order: largest component first (on the raw prediction), then
    hole filling on top of what was kept, then (2D) the ellipse on top of both, kept only if
    it is strictly better. Returns ``{"classes": {"1": {"largest_component": bool,
    "fill_holes": bool, "ellipse": bool, "dice": {"none": .., "largest_component": ..,
    "fill_holes": .., "ellipse": ..}}}, "n_cases": N}`` (no ``ellipse`` score in 3D).
    """
    from medlens.metrics import dice

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in number")
    classes: dict[str, Any] = {}
    for value in label_values:
        if value == 0 or value == ignore_label:
            continue
        # per case: raw, largest component, holes filled in each (only into background)
        scores = np.zeros((len(predictions), 4))
        for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
            keep = ref != ignore_label if ignore_label is not None else np.ones(ref.shape, bool)
            r = (ref == value) & keep
            m = pred == value
            lcc = largest_component(m) if m.any() else m
            free = (pred == 0) | (pred == value)  # other classes are never overwritten
            for j, mask in enumerate((m, lcc)):
                filled = ndimage.binary_fill_holes(mask) & free if mask.any() else mask
                scores[i, j] = dice(mask & keep, r)
                scores[i, 2 + j] = dice(filled & keep, r)
        none, lcc_mean, fill_raw, fill_lcc = (float(v) for v in scores.mean(axis=0))
        use_lcc = lcc_mean >= none - 1e-12
        base, filled_mean = (lcc_mean, fill_lcc) if use_lcc else (none, fill_raw)
        use_fill = filled_mean >= base - 1e-12
        scores_by = {"none": none, "largest_component": lcc_mean, "fill_holes": filled_mean}
        rule = {"largest_component": bool(use_lcc), "fill_holes": bool(use_fill),
                "ellipse": False, "dice": scores_by}  # fmt: skip
        if predictions and all(p.ndim == 2 for p in predictions):
            chosen = filled_mean if use_fill else base
            ellipses = []
            for pred, ref in zip(predictions, references, strict=True):
                keep = ref != ignore_label if ignore_label is not None else np.ones(ref.shape, bool)
                kept = _apply_one(pred, int(value), use_lcc, use_fill, False)
                shaped = _as_ellipse(kept.copy(), int(value), kept == value)
                ellipses.append(dice((shaped == value) & keep, (ref == value) & keep))
            rule["dice"]["ellipse"] = float(np.mean(ellipses))
            rule["ellipse"] = bool(rule["dice"]["ellipse"] > chosen + 1e-12)
        classes[str(int(value))] = rule
    return {"classes": classes, "n_cases": len(predictions)}
