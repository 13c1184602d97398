"""Classification metrics with bootstrap confidence intervals.

Binary, multi-class, multi-label (ChestMNIST, CheXpert-style labels with uncertain / blank entries)
and ordinal (RetinaMNIST grades) tasks, for models on 2D or 3D images alike: the inputs are one
label and one probability vector per image. A functional core (:func:`classification_metrics`,
:func:`bootstrap_ci`, :func:`evaluate_classification`) plus an accumulator for validation loops
(:class:`ClassificationMetric`).

Conventions, chosen so that a reported number means one thing:

* Binary and multi-label predict positive when ``p >= threshold`` (0.5 unless given). Choose the
  threshold on validation data with :func:`choose_thresholds` (Youden) and pass it in for the test
  data; choosing it on the test data would flatter the test results. Multi-class and ordinal
  predict the argmax.
* Binary sensitivity, precision and F1 are those of the positive class; specificity is the recall
  of the negative class. The positive class is class 1 unless ``positive=0`` says otherwise (e.g.
  BreastMNIST, whose class 0 is "malignant"); the threshold then applies to P(class 0).
  Multi-class and ordinal report macro averages of the one-vs-rest per-class values (and the
  per-class values). Multi-label computes every metric per class on that
  class's non-ignored entries and macro-averages over classes, so ``accuracy`` is the mean
  per-class accuracy, not subset accuracy.
* An undefined value (0/0, e.g. the AUC of a class without positives) is NaN, left out of macro
  averages (scikit-learn's ``zero_division=np.nan``) and explained in ``notes``; never a crash.
* AUC point estimates come from scikit-learn. Bootstrap resamples use the exact Mann-Whitney
  form of the same AUC, computed for all resamples at once (see ``_batch``).
* Kappa is Cohen's (per class for multi-label); ordinal uses quadratic weights.
* ECE uses 15 equal-width bins; :func:`ece_kind` says which calibration each task gets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from medlens.metrics._batch import HEADLINE, RANKING, Plan, compute, make_plan, nanmean
from medlens.metrics._bootstrap import percentile_interval, run_bootstrap
from medlens.metrics._curves import (
    calibration_curve_data,
    ece_kind,
    expected_calibration_error,
    pr_curve_data,
    roc_curve_data,
)
from medlens.metrics._inputs import MetricInputError, Prepared, check_task, prepare, to_numpy

__all__ = [
    "HEADLINE",
    "ClassificationMetric",
    "MetricInputError",
    "bootstrap_ci",
    "calibration_curve_data",
    "choose_thresholds",
    "classification_metrics",
    "ece_kind",
    "evaluate_classification",
    "expected_calibration_error",
    "pr_curve_data",
    "roc_curve_data",
    "youden_threshold",
]

_PER_CLASS = ("sensitivity", "specificity", "precision", "f1", "auc", "auc_pr")
_PER_CLASS_MULTILABEL = ("accuracy", "balanced_accuracy", *_PER_CLASS, "kappa")


def youden_threshold(y_true: Any, y_score: Any) -> dict[str, float]:
    """The ROC threshold maximising sensitivity + specificity - 1 (Youden's J).

    Uses every point of :func:`sklearn.metrics.roc_curve`; the threshold is a score value and
    predictions are positive for ``score >= threshold``. Ties go to the highest threshold.

    Returns:
        ``threshold``, and ``sensitivity``, ``specificity`` and ``youden_j`` at it.
    """
    from sklearn.metrics import roc_curve

    y = to_numpy(y_true).reshape(-1)
    s = to_numpy(y_score).astype(np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetricInputError(f"y_true and y_score differ in length: {y.size} and {s.size}")
    if np.any((y != 0) & (y != 1)) or not np.all(np.isfinite(s)):
        raise MetricInputError("Youden threshold needs 0/1 labels and finite scores")
    if y.size == 0 or y.min() == y.max():
        raise MetricInputError("Youden threshold needs both classes in y_true")
    fpr, tpr, thr = roc_curve(y.astype(np.int64), s, drop_intermediate=False)
    # J compared exactly, on counts: J * P * N = TP * N - FP * P (rates in floating point
    # can rank two equal J apart and break a tie towards the lower threshold)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    tp, fp = np.rint(tpr * n_pos).astype(np.int64), np.rint(fpr * n_neg).astype(np.int64)
    score = np.where(np.isfinite(thr), tp * n_neg - fp * n_pos, np.iinfo(np.int64).min)
    i = int(np.argmax(score))  # the first maximum: the highest threshold
    j = tpr - fpr
    return {
        "threshold": float(thr[i]),
        "sensitivity": float(tpr[i]),
        "specificity": float(1.0 - fpr[i]),
        "youden_j": float(j[i]),
    }


def choose_thresholds(
    y_true: Any, y_prob: Any, task: str, positive: int | None = None
) -> float | list[float]:
    """Youden thresholds chosen on validation data, to pass as ``threshold=`` for test data.

    Returns one float for binary (on the probability of the ``positive`` class, 1 by default)
    and one per class for multi-label (a class whose validation labels are all one value keeps
    0.5, as nothing can be learnt about it).
    """
    prep = prepare(y_true, y_prob, task, positive=positive)
    if prep.task == "binary":
        return youden_threshold(*prep.column(prep.positive))["threshold"]
    if prep.task != "multilabel":
        raise MetricInputError(
            f"{task} predictions are the argmax; there is no threshold to choose"
        )
    out = []
    for k in range(prep.n_classes):
        y, s = prep.column(k)
        if y.size and y.min() < y.max():
            out.append(youden_threshold(y, s)["threshold"])
        else:
            warnings.warn(
                f"class {prep.class_names[k]!r} has one label only in these data: threshold 0.5",
                UserWarning,
                stacklevel=2,
            )
            out.append(0.5)
    return out


def classification_metrics(
    y_true: Any,
    y_prob: Any,
    task: str,
    threshold: float | Iterable[float] | None = None,
    class_names: list[str] | None = None,
    positive: int | None = None,
) -> dict[str, Any]:
    """Point estimates of every metric (no intervals); see the module docstring for conventions.

    Args:
        y_true: binary/multi-class/ordinal ``(N,)`` class indices; multi-label ``(N, K)`` of
            1 / 0 / -1 or NaN (ignored: uncertain or blank, left out of that class only).
        y_prob: binary ``(N,)`` P(class 1) or ``(N, 2)``; otherwise ``(N, K)`` probabilities
            (softmax rows for multi-class / ordinal, sigmoids for multi-label).
        task: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"ordinal"``.
        threshold: binary: one number, for P(positive); multi-label: one or one per class;
            None = 0.5.
        class_names: names for ``per_class``; default ``"0"``, ``"1"``, ... (binary:
            negative / positive).
        positive: binary only: the index of the positive class (0 or 1); None = 1.

    Returns:
        Headline metrics (:data:`HEADLINE`) as floats, ``per_class``, ``confusion_matrix`` (rows
        true, columns predicted, in class order; multi-label: one ``[[tn, fp], [fn, tp]]`` per
        class), ``threshold``, ``n``, ``notes``, descriptions of the kappa and ECE used and, for
        binary, ``positive_class`` (its name) and ``positive_index``.
    """
    prep = prepare(y_true, y_prob, task, threshold, class_names, positive)
    return _point_estimates(make_plan(prep))


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    task: str,
    metrics: Iterable[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    threshold: float | Iterable[float] | None = None,
    stratified: bool = True,
    positive: int | None = None,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of headline metrics, resampling samples.

    The threshold stays fixed across resamples (it was chosen on other data). Single-label tasks
    resample within each class (``stratified``), so every resample has every class; degenerate
    multi-label resamples are redrawn.

    Returns:
        ``name -> {"value", "low", "high", "n_boot"}``: the point estimate on all data, the
        interval, and how many resamples gave a defined value.
    """
    names = HEADLINE if metrics is None else tuple(metrics)
    unknown = sorted(set(names) - set(HEADLINE))
    if unknown:
        raise MetricInputError(f"unknown metrics {unknown}; choose from {', '.join(HEADLINE)}")
    _check_bootstrap_args(n_boot, alpha, minimum=1)
    prep = prepare(y_true, y_prob, task, threshold, positive=positive)
    plan = make_plan(prep, ranking=any(name in RANKING for name in names))
    point = _point_estimates(plan)
    boot = run_bootstrap(plan, n_boot, seed, stratified)
    out = {}
    for name in names:
        low, high, n = percentile_interval(boot.values[name], alpha)
        out[name] = {"value": point[name], "low": low, "high": high, "n_boot": n}
    return out


def evaluate_classification(
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: list[str] | None = None,
    threshold: float | Iterable[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
    positive: int | None = None,
) -> dict[str, Any]:
    """Everything for a report, JSON-ready: each metric as ``{"value", "low", "high"}``.

    Headline metrics (:data:`HEADLINE`) and every per-class metric get a percentile bootstrap
    interval (``n_boot=0`` skips the bootstrap: ``low``/``high`` are None, handy for per-epoch
    validation). Undefined values are None. Also ``confusion_matrix``, ``threshold``, ``n``,
    ``n_boot``, ``bootstrap`` (what was drawn and kept), ``notes`` and, for binary,
    ``positive_class`` and ``positive_index`` (``positive``: see :func:`classification_metrics`).
    """
    _check_bootstrap_args(n_boot, alpha, minimum=0)
    plan = make_plan(prepare(y_true, y_prob, task, threshold, class_names, positive))
    point = _point_estimates(plan)
    boot = run_bootstrap(plan, n_boot, seed, stratified) if n_boot > 0 else None
    samples = boot.values if boot is not None else {}

    def interval(value: float, key: str, column: int | None = None) -> dict[str, float | None]:
        if key not in samples:
            return {"value": value, "low": None, "high": None}
        values = samples[key] if column is None else samples[key][:, column]
        low, high, _ = percentile_interval(values, alpha)
        return {"value": value, "low": low, "high": high}

    out: dict[str, Any] = {key: point[key] for key in ("task", "n", "n_classes", "class_names")}
    out.update({name: interval(point[name], name) for name in HEADLINE})
    for key in ("positive_class", "positive_index"):
        if key in point:
            out[key] = point[key]
    for key in ("threshold", "prediction", "kappa_weights", "ece_kind", "confusion_matrix"):
        out[key] = point[key]
    per_class = {}
    for j, (cname, entry) in enumerate(point["per_class"].items()):
        per_class[cname] = {
            key: interval(value, f"pc_{key}", j) if key in _PER_CLASS_MULTILABEL else value
            for key, value in entry.items()
        }
    out["per_class"] = per_class
    out["n_boot"] = n_boot
    notes = list(point["notes"])
    if boot is not None:
        out["bootstrap"] = {
            "method": "percentile",
            "confidence": 1.0 - alpha,
            "n_requested": boot.n_requested,
            "n_used": boot.n_used,
            "n_redrawn": boot.n_redrawn,
            "stratified": boot.stratified,
            "seed": seed,
        }
        if boot.n_used < boot.n_requested:
            notes.append(
                f"only {boot.n_used} of {boot.n_requested} bootstrap resamples kept every class "
                "with both labels; the intervals use those"
            )
    out["notes"] = notes
    return _jsonable(out)


class ClassificationMetric:
    """Collects labels and probabilities batch by batch; :meth:`compute` scores them together.

    Metrics such as AUC do not average over batches, so the accumulator keeps every sample (on
    the CPU, as float64) and evaluates once, e.g. at the end of a validation epoch::

        metric = ClassificationMetric("multiclass", n_boot=0)
        for x, y in loader:
            metric.update(y, torch.softmax(model(x), dim=1))
        auc = metric.compute()["auc"]["value"]
    """

    def __init__(
        self,
        task: str,
        class_names: list[str] | None = None,
        threshold: float | Iterable[float] | None = None,
        n_boot: int = 1000,
        seed: int = 0,
        alpha: float = 0.05,
        positive: int | None = None,
    ) -> None:
        self.task = check_task(task)
        self.options: dict[str, Any] = {
            "class_names": class_names,
            "threshold": threshold,
            "positive": positive,
            "n_boot": n_boot,
            "seed": seed,
            "alpha": alpha,
        }
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def update(self, y_true: Any, y_prob: Any) -> None:
        """Add one batch (NumPy arrays or torch tensors on any device)."""
        y, p = np.array(to_numpy(y_true)), np.array(to_numpy(y_prob), dtype=np.float64)
        if y.ndim == 0 or p.ndim == 0 or y.shape[0] != p.shape[0]:
            raise MetricInputError(
                f"y_true and y_prob must have the same number of samples, got shapes "
                f"{y.shape} and {p.shape}"
            )
        self._y.append(y)
        self._p.append(p)

    def __len__(self) -> int:
        return sum(y.shape[0] for y in self._y)

    def compute(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`evaluate_classification` of everything since :meth:`reset`.

        Keyword arguments override the constructor's (``n_boot=0`` for a quick point estimate).
        """
        if not self._y:
            raise MetricInputError("no samples: update() was not called since reset()")
        options = {**self.options, **kwargs}
        y, p = np.concatenate(self._y), np.concatenate(self._p)
        return evaluate_classification(y, p, self.task, **options)


def _check_bootstrap_args(n_boot: int, alpha: float, minimum: int) -> None:
    if int(n_boot) != n_boot or n_boot < minimum:
        raise MetricInputError(f"n_boot must be an integer >= {minimum}, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise MetricInputError(f"alpha must be between 0 and 1, got {alpha}")


def _sklearn_ranking(prep: Prepared) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-class one-vs-rest ROC AUC and average precision from scikit-learn, with notes."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    k = prep.n_classes
    auc, ap, notes = np.full(k, np.nan), np.full(k, np.nan), []
    for j in range(k):
        y, s = prep.column(j)
        if y.size and y.min() < y.max():
            auc[j], ap[j] = roc_auc_score(y, s), average_precision_score(y, s)
        elif prep.task == "multilabel":
            what = "no labelled entries" if y.size == 0 else f"only label {int(y[0])}"
            notes.append(
                f"class {prep.class_names[j]!r} has {what}: its AUC and AUC-PR are undefined and "
                "left out of the macro averages"
            )
        elif prep.task != "binary" and not y.any():
            notes.append(
                f"class {prep.class_names[j]!r} is absent from y_true: its AUC and AUC-PR are "
                "undefined and left out of the macro averages"
            )
    if prep.task == "binary" and np.isnan(auc[prep.positive]):
        notes.append("y_true holds one class only: AUC and AUC-PR are undefined")
    return auc, ap, notes


def _point_estimates(plan: Plan) -> dict[str, Any]:
    """All point estimates of ``plan``'s data; AUC and AP from scikit-learn."""
    from sklearn.metrics import roc_auc_score

    prep = plan.prep
    k = prep.n_classes
    row = {key: v[0] for key, v in compute(plan, np.arange(prep.n)[None, :]).items()}
    pc_auc, pc_ap, notes = _sklearn_ranking(prep)
    row["pc_auc"], row["pc_auc_pr"] = pc_auc, pc_ap
    if prep.task == "binary":
        row["auc"], row["auc_pr"] = pc_auc[prep.positive], pc_ap[prep.positive]
    else:
        row["auc"], row["auc_pr"] = nanmean(pc_auc), nanmean(pc_ap)
        if prep.single_label and k > 2 and not np.isnan(pc_auc).any():
            labels = np.arange(k)
            row["auc"] = roc_auc_score(prep.y, prep.prob, multi_class="ovr", labels=labels)
    out: dict[str, Any] = {
        "task": prep.task,
        "n": prep.n,
        "n_classes": k,
        "class_names": list(prep.class_names),
        "threshold": prep.threshold_out(),
        "prediction": "argmax" if prep.threshold is None else "positive if p >= threshold",
    }
    if prep.task == "binary":
        out["positive_class"] = prep.class_names[prep.positive]
        out["positive_index"] = prep.positive
    for name in HEADLINE:
        out[name] = float(row[name])
        if math.isnan(out[name]) and name not in RANKING:
            notes.append(f"{name} is undefined: its denominator is zero for these data")
    out["kappa_weights"] = "quadratic" if prep.task == "ordinal" else "none"
    out["ece_kind"] = ece_kind(prep.task)
    out["confusion_matrix"] = row["cm"].astype(int).tolist()
    names = _PER_CLASS_MULTILABEL if prep.task == "multilabel" else _PER_CLASS
    per_class = {}
    for j, cname in enumerate(prep.class_names):
        entry: dict[str, Any] = {
            "n_positive": int(row["n_pos"][j]),
            "n_negative": int(row["n_neg"][j]),
        }
        if prep.task == "multilabel":
            entry["threshold"] = float(prep.threshold[j])  # type: ignore[index]
        entry.update({name: float(row[f"pc_{name}"][j]) for name in names})
        per_class[cname] = entry
    out["per_class"] = per_class
    out["notes"] = notes
    return out


def _jsonable(obj: Any) -> Any:
    """Plain Python for ``json.dumps(allow_nan=False)``: NaN and inf become None."""
    if isinstance(obj, dict):
        return {str(key): _jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
