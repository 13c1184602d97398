"""Checking and normalising what the classification metrics are given (private).

Every public function goes through :func:`prepare`, so the rules about shapes, probability ranges,
ignored multi-label entries and thresholds live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medlens.errors import MedlensError

TASKS = ("binary", "multiclass", "multilabel", "ordinal")
_SUM_TOL = 1e-2  # bfloat16 softmax rows miss 1 by up to ~4e-3; logits or sigmoids miss by more
_RANGE_TOL = 1e-6


class MetricInputError(MedlensError, ValueError):
    """Labels or probabilities that cannot be scored: wrong shape, range, task or threshold."""


@dataclass(frozen=True, eq=False)
class Prepared:
    """Validated inputs in one canonical layout.

    Attributes:
        task: one of :data:`TASKS`.
        y: ``(N,)`` int64 class indices, or ``(N, K)`` int8 for multi-label with -1 = ignored.
        prob: ``(N, K)`` float64 scores per class; binary is stored as ``[P(0), P(1)]``.
        threshold: ``(K,)`` per-column thresholds for multi-label, ``(1,)`` for binary, else None.
        threshold_given: whether the caller chose the threshold (False means the 0.5 default).
        class_names: one name per column.
        positive: binary: the index of the positive class (0 or 1; 1 by default), the column
            the threshold, sensitivity, precision, F1, AUC and the curves refer to. 1 otherwise.
    """

    task: str
    y: np.ndarray
    prob: np.ndarray
    threshold: np.ndarray | None
    threshold_given: bool
    class_names: list[str]
    positive: int = 1

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.prob.shape[1])

    @property
    def single_label(self) -> bool:
        return self.task != "multilabel"

    def column(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Binary labels and scores of one-vs-rest column ``k``, ignored entries dropped."""
        if self.single_label:
            return (self.y == k).astype(np.int8), self.prob[:, k]
        keep = self.y[:, k] >= 0
        return self.y[keep, k], self.prob[keep, k]

    def threshold_out(self) -> float | list[float] | None:
        """The threshold as plain Python, for reports."""
        if self.threshold is None:
            return None
        if self.task == "binary":
            return float(self.threshold[0])
        return [float(t) for t in self.threshold]

    def predictions(self) -> np.ndarray:
        """The predicted class per row (0/1 per class for multi-label); see :func:`decide`."""
        return decide(self.prob, self.task, self.threshold, self.positive)


def decide(prob: np.ndarray, task: str, threshold: Any = None, positive: int = 1) -> np.ndarray:
    """Predictions from ``(N, K)`` probabilities, the one rule every caller uses.

    Binary: the ``positive`` class when its probability is ``>= threshold`` (0.5 if None), else
    the other class. Multi-label: 1 where ``P >= threshold`` (one or one per class). Multi-class
    and ordinal: the argmax.
    """
    if task == "binary":
        t = 0.5 if threshold is None else float(np.asarray(threshold, dtype=float).reshape(-1)[0])
        called = prob[:, positive] >= t
        return np.where(called, positive, 1 - positive).astype(np.int64)
    if task == "multilabel":
        cut = 0.5 if threshold is None else np.asarray(threshold, dtype=float)
        return (prob >= cut).astype(np.int64)
    return np.argmax(prob, axis=1)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a list or a torch tensor on any device."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise MetricInputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def prepare(
    y_true: Any,
    y_prob: Any,
    task: str,
    threshold: Any = None,
    class_names: list[str] | None = None,
    positive: int | None = None,
) -> Prepared:
    """Validate ``y_true``/``y_prob`` for ``task`` and return them in the canonical layout.

    ``positive`` (binary only) is the index of the positive class; None means 1.
    """
    check_task(task)
    pos = _positive(positive, task)
    y = to_numpy(y_true)
    p = to_numpy(y_prob).astype(np.float64, copy=False)
    if y.ndim == 0 or p.ndim == 0 or y.shape[0] != p.shape[0]:
        raise MetricInputError(
            f"y_true and y_prob must have the same number of samples, got shapes "
            f"{y.shape} and {p.shape}"
        )
    if y.shape[0] == 0:
        raise MetricInputError("no samples to score")
    if not np.all(np.isfinite(p)):
        raise MetricInputError("y_prob contains NaN or infinite values")
    if p.min() < -_RANGE_TOL or p.max() > 1 + _RANGE_TOL:
        raise MetricInputError(
            f"y_prob must be probabilities in [0, 1] (got range [{p.min():.4g}, {p.max():.4g}]); "
            "apply a sigmoid or softmax to logits first"
        )
    p = np.clip(p, 0.0, 1.0)
    if task == "binary":
        y, p = _binary(y, p)
    elif task == "multilabel":
        y, p = _multilabel(y, p)
    else:
        y, p = _multiclass(y, p, task)
    k = p.shape[1]
    names = _names(class_names, k, task, pos)
    thr = _threshold(threshold, task, k)
    return Prepared(task, y, p, thr, threshold is not None, names, pos)


def _positive(positive: Any, task: str) -> int:
    if positive is None:
        return 1
    if task != "binary":
        raise MetricInputError(f"a positive class is for binary tasks, not {task}")
    if isinstance(positive, bool) or positive not in (0, 1):
        raise MetricInputError(f"the positive class of a binary task is 0 or 1, got {positive!r}")
    return int(positive)


def _labels_as_int(y: np.ndarray, what: str) -> np.ndarray:
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise MetricInputError(f"{what} must be numeric class labels, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and (
        not np.all(np.isfinite(y)) or np.any(y != np.round(y))
    ):
        raise MetricInputError(f"{what} must hold whole-number class labels")
    return y.astype(np.int64)


def _binary(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise MetricInputError(f"binary y_true must have shape (N,), got {y.shape}")
    y = _labels_as_int(y, "binary y_true")
    if np.any((y != 0) & (y != 1)):
        raise MetricInputError("binary y_true must contain only 0 and 1")
    if p.ndim == 2 and p.shape[1] in (1, 2):
        p = p[:, -1]
    if p.ndim != 1:
        raise MetricInputError(
            f"binary y_prob must have shape (N,), (N, 1) or (N, 2), got {p.shape}"
        )
    return y, np.stack([1.0 - p, p], axis=1)


def _multiclass(y: np.ndarray, p: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1:
        raise MetricInputError(
            f"{task} y_true must have shape (N,) of class indices, got {y.shape}"
        )
    if p.ndim != 2 or p.shape[1] < 2:
        raise MetricInputError(f"{task} y_prob must have shape (N, K) with K >= 2, got {p.shape}")
    y = _labels_as_int(y, f"{task} y_true")
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise MetricInputError(f"{task} y_true must hold class indices in [0, {k - 1}]")
    sums = p.sum(axis=1)
    if np.max(np.abs(sums - 1.0)) > _SUM_TOL:
        raise MetricInputError(
            f"{task} y_prob rows must sum to 1 (softmax probabilities); a row sums to "
            f"{sums[np.argmax(np.abs(sums - 1.0))]:.4g}"
        )
    if not np.allclose(sums, 1.0):  # scikit-learn's own test: rescale only what it would reject
        p = p / sums[:, None]
    return y, p


def _multilabel(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim == 1:
        y = y[:, None]
    if p.ndim == 1:
        p = p[:, None]
    if y.shape != p.shape:
        raise MetricInputError(
            f"multilabel y_true and y_prob must both have shape (N, K), got {y.shape} and {p.shape}"
        )
    y = y.astype(np.float64)
    y[np.isnan(y)] = -1.0  # blank / ignored entries (as the CSV reader writes them)
    if np.any((y != 0) & (y != 1) & (y != -1)):
        raise MetricInputError("multilabel y_true must contain only 1, 0 and -1 / NaN (ignored)")
    return y.astype(np.int8), p


def _names(class_names: list[str] | None, k: int, task: str, positive: int = 1) -> list[str]:
    if class_names is None:
        if task != "binary":
            return [str(i) for i in range(k)]
        return ["negative", "positive"] if positive == 1 else ["positive", "negative"]
    names = [str(c) for c in class_names]
    if task == "binary" and len(names) == 1:  # the name of the positive class
        names = [f"not {names[0]}", names[0]][:: 1 if positive == 1 else -1]
    if len(names) != k:
        raise MetricInputError(f"{len(names)} class names given for {k} classes")
    if len(set(names)) != k:
        raise MetricInputError("class names must be distinct")
    return names


def _threshold(threshold: Any, task: str, k: int) -> np.ndarray | None:
    if task in ("multiclass", "ordinal"):
        if threshold is not None:
            raise MetricInputError(f"{task} predictions are the argmax; threshold must be None")
        return None
    if threshold is None:
        return np.full(1 if task == "binary" else k, 0.5)
    t = to_numpy(threshold).astype(np.float64).reshape(-1)
    if task == "binary" and t.size != 1:
        raise MetricInputError(f"binary threshold must be one number, got {t.size}")
    if task == "multilabel":
        if t.size == 1:
            t = np.full(k, t[0])
        elif t.size != k:
            raise MetricInputError(f"multilabel threshold needs 1 or {k} values, got {t.size}")
    if not np.all(np.isfinite(t)):
        raise MetricInputError("threshold must be finite")
    return t
