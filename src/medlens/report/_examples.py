"""The grid of correctly and wrongly classified examples (private; exported by ``plots``).

Seeing the cases a model gets confidently wrong is often the quickest way to find a labelling
error, a shortcut (a ruler, a scanner marker) or a preprocessing bug, so the grid shows the most
confident mistakes beside the most confident successes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.report.figures import _as_array, new_figure, plain, to_png
from medlens.report.figures import display_image as _display

__all__ = ["example_grid", "select_examples"]

_CORRECT = "#1a7f37"
_WRONG = "#cf222e"


def _confidence_and_correct(
    y_true: np.ndarray, y_pred: np.ndarray, y_prob: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the probability given to what was predicted, and whether it was right.

    Single-label: P(predicted class). Multi-label: the mean over labelled classes of the
    probability of the predicted value (p for a positive call, 1 - p for a negative one); a
    sample is right when every labelled class is (-1 / NaN labels are ignored).
    """
    n = y_true.shape[0]
    if y_pred.ndim == 2:
        labelled = np.isfinite(y_true) & (y_true >= 0)
        agree = np.where(labelled, y_pred == y_true, True)
        p_pred = np.where(y_pred > 0, y_prob, 1.0 - y_prob)
        counts = np.maximum(labelled.sum(axis=1), 1)
        return np.where(labelled, p_pred, 0.0).sum(axis=1) / counts, agree.all(axis=1)
    pred = y_pred.astype(np.int64)
    return y_prob[np.arange(n), pred], pred == y_true.astype(np.int64)


def _per_class(y_prob: np.ndarray, multilabel: bool) -> np.ndarray:
    """``(N, K)`` probabilities; a single-label ``(N,)`` / ``(N, 1)`` is binary P(class 1)."""
    if multilabel:
        return y_prob
    prob = y_prob.reshape(y_prob.shape[0], -1)
    if prob.shape[1] == 1:
        prob = np.concatenate([1.0 - prob, prob], axis=1)
    return prob


def select_examples(confidence: np.ndarray, correct: np.ndarray, n: int) -> list[int]:
    """Up to ``n // 2`` most confident correct and most confidently wrong samples.

    When one kind runs short the other fills the free places, so the grid is full whenever
    there are ``n`` samples. Correct ones come first, each kind most confident first.
    """
    order = np.argsort(-confidence, kind="stable")
    right = [int(i) for i in order if correct[i]]
    wrong = [int(i) for i in order if not correct[i]]
    n_wrong = min(len(wrong), n // 2)
    n_right = min(len(right), n - n_wrong)
    n_wrong = min(len(wrong), n - n_right)
    return right[:n_right] + wrong[:n_wrong]


def _names(labels: np.ndarray, class_names: Sequence[str], pred: np.ndarray | None = None) -> str:
    """Class names of one label: the class, or the positive ones of a multi-label row.

    With ``pred``, ignored multi-label entries (-1 / NaN) that were predicted positive are added
    as ``name?``, so a right call beside an unlabelled finding does not look like a mistake.
    """
    if labels.ndim == 0:
        return str(class_names[int(labels)])
    on = [str(class_names[k]) for k in np.flatnonzero(labels > 0)]
    if pred is not None:
        unsure = ~(np.isfinite(labels) & (labels >= 0)) & (pred > 0)
        on += [f"{class_names[k]}?" for k in np.flatnonzero(unsure)]
    return ", ".join(on) if on else "none"


def example_grid(
    images: Any,
    y_true: Any,
    y_pred: Any,
    y_prob: Any,
    class_names: Sequence[str],
    n: int = 16,
    columns: int = 4,
) -> bytes:
    """A grid of the most confident correct (green) and wrong (red) cases.

    Args:
        images: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float or uint8 (array, tensor, or a list
            of per-sample arrays of any size); 3D shows the middle slice along D.
        y_true: ``(N,)`` class indices, or ``(N, K)`` 1 / 0 / -1 or NaN for multi-label.
        y_pred: ``(N,)`` predicted indices, or ``(N, K)`` 0 / 1 for multi-label.
        y_prob: ``(N, K)`` probabilities (binary may be ``(N,)`` P(positive)).
        class_names: one name per class.
        n: at most this many cases, half right and half wrong where possible.
        columns: cases per row.

    Single-label titles read ``true: A (p=...) / pred: B (p=...)``, each class with the
    probability the model gave that class (a binary call at a tuned threshold may predict a
    class below 0.5). Multi-label titles give the mean probability of the predicted values; a
    class predicted positive whose label is ignored shows as ``name?``.
    """
    yt = _as_array(y_true).astype(np.float64)
    yp = _as_array(y_pred)
    prob = _as_array(y_prob).astype(np.float64)
    total = len(images)
    if not (total == yt.shape[0] == yp.shape[0] == prob.shape[0]):
        raise ValueError(
            f"images, y_true, y_pred and y_prob differ in length: {total}, {yt.shape[0]}, "
            f"{yp.shape[0]}, {prob.shape[0]}"
        )
    if total == 0 or n < 1:
        raise ValueError("no examples to show")
    if yp.ndim == 2 and yt.ndim == 1:
        yt = yt[:, None]
    prob = _per_class(prob, yp.ndim == 2)
    confidence, correct = _confidence_and_correct(yt, yp, prob)
    chosen = select_examples(confidence, correct, n)
    cols = min(columns, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(2.4 * cols, 2.7 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, chosen, strict=False):
        picture, cmap = _display(images[i])
        ax.imshow(picture, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        colour = _CORRECT if correct[i] else _WRONG
        mark = "✓" if correct[i] else "✗"
        if yp.ndim == 2:
            truth, guess = _names(yt[i], class_names, yp[i]), _names(yp[i], class_names)
            title = (
                f"{mark} true: {plain(truth, 22)}\npred: {plain(guess, 22)} ({confidence[i]:.2f})"
            )
        else:
            t, g = int(yt[i]), int(yp[i])
            title = (
                f"{mark} true: {plain(class_names[t], 22)} (p={prob[i, t]:.2f})\n"
                f"pred: {plain(class_names[g], 22)} (p={prob[i, g]:.2f})"
            )
        ax.set_title(title, color=colour, fontsize=8)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2.5)
    n_right = int(sum(bool(correct[i]) for i in chosen))
    what = (
        "true / predicted (mean probability of the predicted values)"
        if yp.ndim == 2
        else "true / predicted class, each with the model's probability of that class"
    )
    fig.suptitle(
        f"{n_right} correct (green) and {len(chosen) - n_right} wrong (red): {what}", fontsize=10
    )
    return to_png(fig)
