"""Curves for reports: ROC, precision-recall and reliability (calibration), as plain lists.

ROC and precision-recall come straight from scikit-learn; the reliability bins use the same
15 equal-width bins as the expected calibration error, so a plot and the ECE beside it agree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medlens.metrics._batch import N_BINS, compute, make_plan
from medlens.metrics._inputs import MetricInputError, prepare, to_numpy

__all__ = [
    "calibration_curve_data",
    "ece_kind",
    "expected_calibration_error",
    "pr_curve_data",
    "roc_curve_data",
]


def ece_kind(task: str, n_bins: int = N_BINS) -> str:
    """One line saying which calibration error is reported for ``task``."""
    if task == "binary":
        what = "positive-class reliability: |observed positive rate - mean P(positive)|"
    elif task == "multilabel":
        what = (
            "positive-class reliability pooled over classes and non-ignored entries: "
            "|observed positive rate - mean P(positive)|"
        )
    else:
        what = "top-label: |accuracy - mean top-class probability|"
    return f"{what}, weighted by bin size over {n_bins} equal-width bins (lower, upper]"


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def _binary_column(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with ignored entries (-1 or NaN labels) dropped; both classes required."""
    y = to_numpy(y_true).astype(np.float64).reshape(-1)
    s = to_numpy(y_score).astype(np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetricInputError(f"y_true and y_score differ in length: {y.size} and {s.size}")
    keep = np.isfinite(y) & (y >= 0)
    y, s = y[keep], s[keep]
    if np.any((y != 0) & (y != 1)):
        raise MetricInputError("y_true must contain only 0 and 1 (or -1 / NaN for ignored)")
    if not np.all(np.isfinite(s)):
        raise MetricInputError("y_score contains NaN or infinite values")
    if y.size == 0 or y.min() == y.max():
        raise MetricInputError("a curve needs both classes in y_true")
    return y.astype(np.int64), s


def roc_curve_data(y_true: Any, y_score: Any, drop_intermediate: bool = True) -> dict[str, Any]:
    """ROC curve from :func:`sklearn.metrics.roc_curve` with its AUC, as JSON-ready lists.

    The first threshold (scikit-learn's ``inf``, "predict nothing positive") is written as None.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _binary_column(y_true, y_score)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop_intermediate)
    return {
        "fpr": _finite_or_none(fpr),
        "tpr": _finite_or_none(tpr),
        "thresholds": _finite_or_none(thr),
        "auc": float(roc_auc_score(y, s)),
    }


def pr_curve_data(y_true: Any, y_score: Any) -> dict[str, Any]:
    """Precision-recall curve from :func:`sklearn.metrics.precision_recall_curve`, plus AP."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = _binary_column(y_true, y_score)
    precision, recall, thr = precision_recall_curve(y, s)
    return {
        "precision": _finite_or_none(precision),
        "recall": _finite_or_none(recall),
        "thresholds": _finite_or_none(thr),
        "average_precision": float(average_precision_score(y, s)),
        "prevalence": float(y.mean()),
    }


def _calibration_sums(
    y_true: Any, y_prob: Any, task: str, n_bins: int, positive: int | None
) -> np.ndarray:
    if n_bins < 1:
        raise MetricInputError(f"n_bins must be at least 1, got {n_bins}")
    plan = make_plan(prepare(y_true, y_prob, task, positive=positive), ranking=False)
    idx = np.arange(plan.prep.n)[None, :]
    return compute(plan, idx, n_bins=n_bins, calibration=True)["calibration"][0]


def expected_calibration_error(
    y_true: Any, y_prob: Any, task: str, n_bins: int = N_BINS, positive: int | None = None
) -> float:
    """Expected calibration error; see :func:`ece_kind` for which one each task gets.

    Top-label ECE for multi-class and ordinal (is the most likely class right as often as its
    probability says); positive-class reliability for binary and multi-label (is P(positive)
    honest), because the top label of a binary model hides which side of 0.5 the errors are on.
    ``positive``: binary only, the index of the positive class (None = 1).
    """
    out_sum, conf_sum, counts = _calibration_sums(y_true, y_prob, task, n_bins, positive)
    return float(np.abs(out_sum - conf_sum).sum() / counts.sum())


def calibration_curve_data(
    y_true: Any, y_prob: Any, task: str, n_bins: int = N_BINS, positive: int | None = None
) -> dict[str, Any]:
    """Reliability-diagram data: per bin the observed rate, mean confidence and count.

    ``accuracy`` is the fraction correct (top-label) or positive (binary / multi-label) in each
    bin and ``confidence`` the mean probability there; empty bins hold None.
    """
    out_sum, conf_sum, counts = _calibration_sums(y_true, y_prob, task, n_bins, positive)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy, confidence = out_sum / counts, conf_sum / counts
    return {
        "bin_edges": edges.tolist(),
        "bin_centers": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "accuracy": _finite_or_none(accuracy),
        "confidence": _finite_or_none(confidence),
        "counts": [int(c) for c in counts],
        "ece": expected_calibration_error(y_true, y_prob, task, n_bins, positive),
        "kind": ece_kind(task, n_bins),
    }
