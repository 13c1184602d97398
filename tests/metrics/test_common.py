"""Common tests over every public metric, each checked against the field's reference implementation.

``REGISTRY`` maps every metric in ``medlens.metrics.__all__`` to its oracles (scikit-learn for
classification, MONAI and SciPy for segmentation, fastMRI and scikit-image for reconstruction,
SciPy for bootstrap intervals, Python's ``statistics`` for summaries over cases); ``NOT_METRICS``
lists the public names that are not metrics, each with a reason. Adding a public name without an
entry in one of the two fails :func:`test_every_public_name_is_registered`. Every registered
metric is then checked the same way (timm's one-test-per-registered-model, scikit-learn's
``parametrize_with_checks``):

* agreement with each oracle on seeded random inputs (binary / multi-class / multi-label / ordinal;
  2D and 3D masks with anisotropic spacing, label maps, one-hot arrays and the empty-mask cases,
  where the oracle's values are mapped onto the documented Metrics Reloaded convention and the
  mapping asserts that the oracle really does what the module docstring says it does);
* the accumulator (reset / update / compute over several batches, NumPy and torch) equals the
  functional core on the concatenated data;
* inputs are never modified in place.

Known disagreements with an oracle go into ``KNOWN_DISAGREEMENTS`` (strict xfail), never silently
into a looser tolerance.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import statistics
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from scipy.spatial.distance import directed_hausdorff
from skimage.metrics import structural_similarity
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.preprocessing import label_binarize

import medlens.metrics as M

N_BINS = 15  # the documented ECE / reliability bins
N_BOOT = 1000  # bootstrap resamples when comparing intervals with SciPy's
BOOT_TOL = 0.35  # allowed interval-end difference, in bootstrap standard errors (~3 Monte Carlo SE)
MONAI_RTOL, MONAI_ATOL = 1e-5, 1e-6  # MONAI computes in float32
STREAM_TOL = 1e-12  # accumulator vs functional: the same numbers, summed in another order


# ---------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Near:
    """An expected value with its own absolute tolerance (Monte Carlo quantities)."""

    value: float
    atol: float


def _number(x: Any) -> float:
    return math.nan if x is None else float(x)


def assert_agrees(ours: Any, expected: Any, rtol: float, atol: float, where: str = "") -> None:
    """Recursive comparison of ``expected`` (a dict / list / number tree) with ``ours``.

    Only the keys of ``expected`` are compared; ``None`` in ours (JSON output) counts as NaN, and
    NaN agrees with NaN only.
    """
    if isinstance(expected, Mapping):
        assert isinstance(ours, Mapping), f"{where}: expected a mapping, got {type(ours)}"
        for key, value in expected.items():
            assert key in ours, f"{where}: missing key {key!r}"
            assert_agrees(ours[key], value, rtol, atol, f"{where}.{key}")
        return
    if isinstance(expected, str):
        assert ours == expected, f"{where}: {ours!r} != {expected!r}"
        return
    if isinstance(expected, Near):
        rtol, atol, expected = 0.0, expected.atol, expected.value
    if isinstance(expected, np.ndarray):
        expected = expected.tolist()
    if isinstance(expected, (list, tuple)):
        ours = ours.tolist() if isinstance(ours, np.ndarray) else list(ours)
        assert len(ours) == len(expected), f"{where}: length {len(ours)} != {len(expected)}"
        for i, (a, b) in enumerate(zip(ours, expected, strict=True)):
            assert_agrees(a, b, rtol, atol, f"{where}[{i}]")
        return
    a, b = _number(ours), _number(expected)
    if math.isnan(b):
        assert math.isnan(a), f"{where}: {a!r} where the reference is undefined (NaN)"
    elif math.isinf(b):
        assert a == b, f"{where}: {a!r} != {b!r}"
    else:
        assert abs(a - b) <= atol + rtol * abs(b), f"{where}: {a!r} != reference {b!r}"


def assert_unchanged(before: Any, after: Any, where: str = "input") -> None:
    """Exact equality of two input trees (arrays, tensors, dicts, lists), NaN equal to NaN."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and before.dtype == after.dtype, where
        assert torch.equal(torch.nan_to_num(before), torch.nan_to_num(after)), f"{where} changed"
        assert torch.equal(before.isnan(), after.isnan()) if before.is_floating_point() else True
    elif isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray), where
        assert before.dtype == after.dtype and before.shape == after.shape, f"{where} changed"
        np.testing.assert_array_equal(after, before, err_msg=f"{where} modified in place")
    elif isinstance(before, Mapping):
        assert set(before) == set(after), f"{where}: keys changed"
        for key in before:
            assert_unchanged(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), f"{where}: length changed"
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            assert_unchanged(a, b, f"{where}[{i}]")
    elif isinstance(before, float) and math.isnan(before):
        assert isinstance(after, float) and math.isnan(after), f"{where} changed"
    else:
        assert before == after, f"{where} changed: {before!r} -> {after!r}"


def values_of(report: Any) -> Any:
    """``{"value", "low", "high"}`` intervals of a JSON report replaced by their values."""
    if isinstance(report, Mapping):
        if set(report) == {"value", "low", "high"}:
            return report["value"]
        return {key: values_of(value) for key, value in report.items()}
    return report


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


# ---------------------------------------------------------------------------- classification data

CLS_CASES = ("binary", "binary-ties", "binary-positive0", "multiclass", "multilabel", "ordinal")
CLS_MAIN = ("binary", "multiclass", "multilabel", "ordinal")


def classification_case(name: str) -> dict[str, Any]:
    """Seeded labels and probabilities; options (threshold, positive) go with the case."""
    rng = np.random.default_rng(CLS_CASES.index(name) + 10)
    n = 150
    if name.startswith("binary"):
        y = rng.integers(0, 2, n)
        p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
        options = {
            "binary": {"threshold": 0.4},
            "binary-ties": {},
            "binary-positive0": {"threshold": 0.6, "positive": 0},
        }[name]
        if name == "binary-ties":
            p = np.round(p, 1)
        return {"name": name, "task": "binary", "y": y, "p": p, **options}
    if name == "multilabel":
        k = 4
        y = (rng.random((n, k)) < 0.35).astype(np.float64)
        p = np.clip(rng.normal(0.3 + 0.35 * y, 0.2), 0.0, 1.0)
        y[rng.random((n, k)) < 0.1] = -1  # uncertain
        y[rng.random((n, k)) < 0.05] = np.nan  # blank
        return {"name": name, "task": name, "y": y, "p": p, "threshold": [0.4, 0.5, 0.55, 0.45]}
    k = 4 if name == "multiclass" else 5
    y = rng.integers(0, k, n)
    if name == "ordinal":  # probabilities peaked near the true grade
        logits = -0.5 * (np.arange(k)[None, :] - (y + rng.normal(0, 0.8, n))[:, None]) ** 2
    else:
        logits = rng.normal(size=(n, k))
        logits[np.arange(n), y] += 1.2
    p = np.exp(logits)
    return {"name": name, "task": name, "y": y, "p": p / p.sum(axis=1, keepdims=True)}


def _options(case: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    keys = keys or ("threshold", "positive")
    return {key: case[key] for key in keys if key in case}


def _binary_setup(case: Mapping[str, Any]) -> tuple[int, float, np.ndarray, list[str]]:
    pos = case.get("positive", 1)
    prob = np.stack([1.0 - case["p"], case["p"]], axis=1)
    names = ["negative", "positive"] if pos == 1 else ["positive", "negative"]
    return pos, case.get("threshold", 0.5), prob, names


def calibration_pairs(case: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, confidence) per the documented ECE kind: positive-class or top-label."""
    task, y, p = case["task"], case["y"], case["p"]
    if task == "binary":
        pos, _, prob, _ = _binary_setup(case)
        return (y == pos).astype(np.float64), prob[:, pos]
    if task == "multilabel":
        keep = y >= 0  # NaN compares False: blank entries are dropped too
        return y[keep], p[keep]
    pred = p.argmax(axis=1)
    return (pred == y).astype(np.float64), p.max(axis=1)


# -------------------------------------------------------------------------- classification oracles


def _single_label_sklearn(y, pred, prob, k, names, weights=None) -> dict[str, Any]:
    labels = np.arange(k)
    mcm = skm.multilabel_confusion_matrix(y, pred, labels=labels)
    spec = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    sens = skm.recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    prec = skm.precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    f1 = skm.f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    per_class = {}
    for j, name in enumerate(names):
        yj = (y == j).astype(int)
        per_class[name] = {
            "n_positive": int(yj.sum()),
            "n_negative": int(yj.size - yj.sum()),
            "sensitivity": sens[j],
            "specificity": spec[j],
            "precision": prec[j],
            "f1": f1[j],
            "auc": skm.roc_auc_score(yj, prob[:, j]),
            "auc_pr": skm.average_precision_score(yj, prob[:, j]),
        }
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred, labels=labels, weights=weights),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels),
        "per_class": per_class,
        "specificity": float(np.nanmean(spec)),
    }


def sklearn_classification(case: Mapping[str, Any]) -> dict[str, Any]:
    """Every classification number but the ECE, from scikit-learn."""
    task, y, p = case["task"], case["y"], case["p"]
    if task == "binary":
        pos, t, prob, names = _binary_setup(case)
        pred = np.where(prob[:, pos] >= t, pos, 1 - pos)
        out = _single_label_sklearn(y, pred, prob, 2, names)
        out.update(
            sensitivity=skm.recall_score(y, pred, pos_label=pos),
            specificity=skm.recall_score(y, pred, pos_label=1 - pos),
            precision=skm.precision_score(y, pred, pos_label=pos, zero_division=np.nan),
            f1=skm.f1_score(y, pred, pos_label=pos, zero_division=np.nan),
            auc=skm.roc_auc_score(y == pos, prob[:, pos]),
            auc_pr=skm.average_precision_score(y == pos, prob[:, pos]),
            threshold=t,
        )
        return out
    if task == "multilabel":
        return _sklearn_multilabel(case)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    weights = "quadratic" if task == "ordinal" else None
    out = _single_label_sklearn(y, pred, p, k, [str(j) for j in range(k)], weights)
    labels = np.arange(k)
    macro = {"labels": labels, "average": "macro", "zero_division": np.nan}
    out.update(
        sensitivity=skm.recall_score(y, pred, **macro),
        precision=skm.precision_score(y, pred, **macro),
        f1=skm.f1_score(y, pred, **macro),
        auc=skm.roc_auc_score(y, p, multi_class="ovr", labels=labels),
        auc_pr=skm.average_precision_score(label_binarize(y, classes=labels), p, average="macro"),
    )
    return out


def _sklearn_multilabel(case: Mapping[str, Any]) -> dict[str, Any]:
    y, p, t = case["y"], case["p"], np.asarray(case["threshold"], dtype=float)
    per_class, cms = {}, []
    for j in range(p.shape[1]):
        keep = y[:, j] >= 0
        yj, sj = y[keep, j].astype(int), p[keep, j]
        pj = (sj >= t[j]).astype(int)
        cms.append(skm.confusion_matrix(yj, pj, labels=[0, 1]))
        per_class[str(j)] = {
            "n_positive": int(yj.sum()),
            "n_negative": int(yj.size - yj.sum()),
            "threshold": t[j],
            "accuracy": skm.accuracy_score(yj, pj),
            "balanced_accuracy": skm.balanced_accuracy_score(yj, pj),
            "sensitivity": skm.recall_score(yj, pj, zero_division=np.nan),
            "specificity": skm.recall_score(yj, pj, pos_label=0, zero_division=np.nan),
            "precision": skm.precision_score(yj, pj, zero_division=np.nan),
            "f1": skm.f1_score(yj, pj, zero_division=np.nan),
            "auc": skm.roc_auc_score(yj, sj),
            "auc_pr": skm.average_precision_score(yj, sj),
            "kappa": skm.cohen_kappa_score(yj, pj),
        }
    out: dict[str, Any] = {
        name: _nanmean([float(entry[name]) for entry in per_class.values()])
        for name in M.HEADLINE
        if name != "ece"  # ECE: pooled over classes, from MONAI
    }
    out.update(per_class=per_class, confusion_matrix=cms, threshold=list(t))
    return out


def _monai():
    return pytest.importorskip("monai.metrics")


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """MONAI warns on empty masks; the oracles below assert what it returns instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def monai_ece(case: Mapping[str, Any]) -> dict[str, float]:
    """MONAI's ``CalibrationErrorMetric`` (expected, 15 bins) on the documented ECE's pairs."""
    mm = _monai()
    outcome, confidence = calibration_pairs(case)
    metric = mm.CalibrationErrorMetric(num_bins=N_BINS, calibration_reduction="expected")
    metric(y_pred=torch.from_numpy(confidence)[None, None], y=torch.from_numpy(outcome)[None, None])
    return {"ece": float(metric.aggregate())}


def calibration_curve_oracle(case: Mapping[str, Any]) -> dict[str, Any]:
    """scikit-learn's ``calibration_curve`` (uniform bins) for the non-empty bins' means."""
    outcome, confidence = calibration_pairs(case)
    observed, mean_confidence = calibration_curve(outcome, confidence, n_bins=N_BINS)
    return {"observed": observed, "mean_confidence": mean_confidence}


@_quiet
def monai_calibration_binning(case: Mapping[str, Any]) -> dict[str, Any]:
    """MONAI's ``calibration_binning`` counts, and its ECE."""
    mm = _monai()
    outcome, confidence = calibration_pairs(case)
    t = torch.from_numpy
    _, _, counts = mm.calibration_binning(t(confidence)[None, None], t(outcome)[None, None], N_BINS)
    return {"counts": counts[0, 0].tolist(), **monai_ece(case)}


def youden_brute_force(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Youden's J at every distinct score, counts from scikit-learn; ties to the highest cut."""
    y = np.asarray(y, dtype=int)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    best = None
    for t in np.unique(s)[::-1]:  # descending: ``>`` keeps the highest of tied thresholds
        tn, _, _, tp = skm.confusion_matrix(y, (s >= t).astype(int), labels=[0, 1]).ravel()
        j = int(tp) * n_neg + int(tn) * n_pos  # (sens + spec) * n_pos * n_neg, exact
        if best is None or j > best[0]:
            best = (j, float(t), tp / n_pos, tn / n_neg)
    _, t, sens, spec = best
    return {"threshold": t, "sensitivity": sens, "specificity": spec, "youden_j": sens + spec - 1}


def curve_inputs(case: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One binary column: the binary data, or a multi-label column with ignored entries."""
    if case["task"] == "multilabel":
        return case["y"][:, 1], case["p"][:, 1]
    return case["y"], case["p"]


def _kept(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(y) & (y >= 0)
    return y[keep].astype(int), s[keep]


def sklearn_roc(case: Mapping[str, Any]) -> dict[str, Any]:
    y, s = _kept(*curve_inputs(case))
    fpr, tpr, thr = skm.roc_curve(y, s)
    thr = np.where(np.isfinite(thr), thr, np.nan)  # the "predict nothing" threshold: None
    return {"fpr": fpr, "tpr": tpr, "thresholds": thr, "auc": skm.roc_auc_score(y, s)}


def sklearn_pr(case: Mapping[str, Any]) -> dict[str, Any]:
    y, s = _kept(*curve_inputs(case))
    precision, recall, thr = skm.precision_recall_curve(y, s)
    return {
        "precision": precision,
        "recall": recall,
        "thresholds": thr,
        "average_precision": skm.average_precision_score(y, s),
        "prevalence": y.mean(),
    }


# Multi-label accuracy is the mean per-class accuracy on non-ignored entries (not subset accuracy).
BOOT_METRIC = {
    "binary": "auc",
    "multiclass": "accuracy",
    "ordinal": "kappa",
    "multilabel": "accuracy",
}


def _boot_statistic(case: Mapping[str, Any]) -> Callable[[np.ndarray], float]:
    """The case's bootstrapped metric on a row subset, by scikit-learn."""
    task, y, p = case["task"], case["y"], case["p"]
    if task == "binary":
        return lambda i: skm.roc_auc_score(y[i], p[i])
    if task == "multiclass":
        return lambda i: skm.accuracy_score(y[i], p[i].argmax(axis=1))
    if task == "ordinal":
        labels = np.arange(p.shape[1])
        return lambda i: skm.cohen_kappa_score(
            y[i], p[i].argmax(axis=1), labels=labels, weights="quadratic"
        )
    t = np.asarray(case["threshold"])

    def mean_class_accuracy(i: np.ndarray) -> float:
        yi, pi = y[i], p[i]
        values = []
        for j in range(p.shape[1]):
            keep = yi[:, j] >= 0
            values.append(skm.accuracy_score(yi[keep, j], pi[keep, j] >= t[j]))
        return _nanmean(values)

    return mean_class_accuracy


def scipy_bootstrap(case: Mapping[str, Any]) -> dict[str, Any]:
    """``scipy.stats.bootstrap(method="percentile")`` of the scikit-learn metric over rows."""
    name, statistic = BOOT_METRIC[case["task"]], _boot_statistic(case)
    n = case["y"].shape[0]
    res = stats.bootstrap(
        (np.arange(n),),
        statistic,
        n_resamples=N_BOOT,
        vectorized=False,
        method="percentile",
        rng=np.random.default_rng(123),
    )
    tol = BOOT_TOL * res.standard_error
    low, high = res.confidence_interval
    return {
        name: {
            "value": statistic(np.arange(n)),
            "low": Near(low, tol),
            "high": Near(high, tol),
            "n_boot": N_BOOT,
        }
    }


# ---------------------------------------------------------------------------- classification: ours


def _cls_batches(case: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """The case split into batches of uneven size, one of a single sample, some as torch."""
    y, p = case["y"], case["p"]
    cuts = [0, 37, 38, 90, y.shape[0]]
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        yb, pb = y[a:b], p[a:b]
        out.append((torch.from_numpy(yb), torch.from_numpy(pb)) if i % 2 else (yb, pb))
    return out


def _streamed(case: Mapping[str, Any], **options: Any) -> M.ClassificationMetric:
    """A ClassificationMetric fed unrelated data, reset, then fed the case in batches."""
    metric = M.ClassificationMetric(case["task"], **_options(case), **options)
    metric.update(case["y"][:5], case["p"][5:10])
    metric.reset()
    for y, p in _cls_batches(case):
        metric.update(y, p)
    assert len(metric) == case["y"].shape[0]
    return metric


def ours_classification_metrics(case):
    return M.classification_metrics(case["y"], case["p"], case["task"], **_options(case))


def ours_evaluate(case):
    return values_of(
        M.evaluate_classification(case["y"], case["p"], case["task"], n_boot=0, **_options(case))
    )


def ours_classification_metric(case):
    return values_of(_streamed(case, n_boot=0).compute())


def ours_bootstrap(case):
    name = BOOT_METRIC[case["task"]]
    return M.bootstrap_ci(
        case["y"],
        case["p"],
        case["task"],
        metrics=[name],
        n_boot=N_BOOT,
        seed=7,
        stratified=False,
        **_options(case),
    )


def ours_ece(case):
    kw = _options(case, "positive")
    return {"ece": M.expected_calibration_error(case["y"], case["p"], case["task"], **kw)}


def ours_calibration_curve(case):
    out = M.calibration_curve_data(case["y"], case["p"], case["task"], **_options(case, "positive"))
    assert out["bin_edges"] == np.linspace(0, 1, N_BINS + 1).tolist()
    return {
        "observed": [v for v in out["accuracy"] if v is not None],
        "mean_confidence": [v for v in out["confidence"] if v is not None],
        "counts": out["counts"],
        "ece": out["ece"],
    }


def ours_youden(case):
    return M.youden_threshold(case["y"], case["p"])


def ours_choose_thresholds(case):
    kw = _options(case, "positive")
    return {"thresholds": M.choose_thresholds(case["y"], case["p"], case["task"], **kw)}


def youden_thresholds_oracle(case):
    y, p = case["y"], case["p"]
    if case["task"] == "binary":
        pos, _, prob, _ = _binary_setup(case)
        return {"thresholds": youden_brute_force(y == pos, prob[:, pos])["threshold"]}
    columns = [_kept(y[:, j], p[:, j]) for j in range(p.shape[1])]
    return {"thresholds": [youden_brute_force(yj, sj)["threshold"] for yj, sj in columns]}


def ours_roc(case):
    return M.roc_curve_data(*curve_inputs(case))


def ours_pr(case):
    return M.pr_curve_data(*curve_inputs(case))


# ------------------------------------------------------------------------- classification: streams


def stream_evaluate(case):
    """ClassificationMetric over batches vs evaluate_classification on the concatenation."""
    streamed = _streamed(case, n_boot=50, seed=3).compute()
    functional = M.evaluate_classification(
        case["y"], case["p"], case["task"], n_boot=50, seed=3, **_options(case)
    )
    return streamed, functional


def stream_classification_metrics(case):
    streamed = values_of(_streamed(case, n_boot=0).compute())
    f = ours_classification_metrics(case)
    keys = (*M.HEADLINE, "confusion_matrix", "per_class", "threshold", "n")
    return streamed, {key: f[key] for key in keys}


def stream_bootstrap(case):
    streamed = _streamed(case, n_boot=200, seed=5).compute(stratified=False)
    functional = M.bootstrap_ci(
        case["y"], case["p"], case["task"], n_boot=200, seed=5, stratified=False, **_options(case)
    )
    return streamed, {
        name: {k: v[k] for k in ("value", "low", "high")} for name, v in functional.items()
    }


def stream_ece(case):
    streamed = _streamed(case, n_boot=0).compute()["ece"]["value"]
    return {"ece": streamed}, ours_ece(case)


# ---------------------------------------------------------------------------- segmentation data

EMPTY_CASES = ("empty-pred", "empty-ref", "empty-both", "empty-ref-max")
SEG_PAIR_CASES = ("2d", "3d", "3d-labelmap", *EMPTY_CASES)
SEG_MAP_CASES = ("2d-labelmap", "3d-labelmap", "3d-onehot", "empty-both")
SEG_BATCHES = ("2d-batches", "3d-batches", "3d-batches-empty")


def _blob(shape: tuple[int, ...], rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > 0.3 * field.std()


def _label_map(shape: tuple[int, ...], rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    for label in range(1, n + 1):
        out[_blob(shape, rng)] = label
    return out


def segmentation_case(name: str) -> dict[str, Any]:
    """One mask pair or label-map pair; ``label`` is the class the pair functions score."""
    rng = np.random.default_rng(sum(map(ord, name)))
    case: dict[str, Any] = {"name": name, "label": None, "labels": None, "tau": 1.5}
    case.update(empty_distance="nan", channel_axis=None)
    if name == "2d":
        shape, spacing = (36, 44), (0.7, 1.3)
        pred, ref = _blob(shape, rng), _blob(shape, rng)
    elif name == "3d":
        shape, spacing = (14, 20, 18), (2.5, 0.8, 1.1)
        pred, ref = _blob(shape, rng), _blob(shape, rng)
        case["tau"] = 2.0
    elif name in ("2d-labelmap", "3d-labelmap", "3d-onehot"):
        shape, spacing = (
            ((40, 48), (0.6, 1.4)) if name.startswith("2d") else ((14, 20, 18), (3.0, 1.0, 0.8))
        )
        pred, ref = _label_map(shape, rng, 3), _label_map(shape, rng, 3)
        if name != "2d-labelmap":
            pred[pred == 3] = 0  # class 3 missed: the documented "prediction empty" case
            case["labels"] = [1, 2, 3]
        case["label"] = 2
        if name == "3d-onehot":
            onehot = np.eye(4, dtype=np.float32)
            pred, ref = np.moveaxis(onehot[pred], -1, 0), np.moveaxis(onehot[ref], -1, 0)
            case.update(channel_axis=0, labels=None)
    else:  # the empty-mask cases, 3D with anisotropic spacing
        shape, spacing = (12, 16, 14), (2.0, 1.0, 0.5)
        blob, empty = _blob(shape, rng), np.zeros(shape, dtype=bool)
        pred, ref = {
            "empty-pred": (empty, blob),
            "empty-ref": (blob, empty),
            "empty-ref-max": (blob, empty),
            "empty-both": (empty, empty.copy()),
        }[name]
        case["labels"] = [1]
        if name == "empty-ref-max":
            case["empty_distance"] = "max"
    case.update(pred=pred, ref=ref, spacing=spacing, shape=shape)
    return case


def batch_case(name: str) -> dict[str, Any]:
    """Several cases of two classes, each with its own spacing, and how to feed them in."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name.startswith("2d"):
        shape, n, spacings = (28, 32), 5, [(0.7, 1.3), (1.0, 1.0), (0.5, 2.0), (1.2, 0.9), (2, 1)]
    else:
        shape, n = (12, 16, 14), 4
        spacings = [(2.5, 0.8, 1.1), (1.0, 1.0, 1.0), (3.0, 0.7, 0.7), (2.0, 1.5, 1.0)]
    pred = np.stack([_label_map(shape, rng, 2) for _ in range(n)])
    ref = np.stack([_label_map(shape, rng, 2) for _ in range(n)])
    if name.endswith("empty"):
        pred[1][pred[1] == 2] = 0  # class 2 missed in case 1
        pred[2][pred[2] == 1] = 0  # class 1 absent from both in case 2
        ref[2][ref[2] == 1] = 0
    else:
        assert all(set(np.unique(a)) == {0, 1, 2} for a in (*pred, *ref))
    groups = [slice(0, 2), slice(2, 3), slice(3, n)]  # update_batch, update, update_batch
    return {
        "name": name,
        "pred": pred,
        "ref": ref,
        "spacings": spacings,
        "labels": [1, 2],
        "tau": 1.5,
        "groups": groups,
    }


def stream_case(name: str) -> dict[str, Any]:
    """Data for an accumulator check: batches of segmentation cases, or classification data."""
    return batch_case(name) if name in SEG_BATCHES else classification_case(name)


def pair_masks(case: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    label = case["label"]
    if label is None:
        return case["pred"].astype(bool), case["ref"].astype(bool)
    return case["pred"] == label, case["ref"] == label


def _state(p: np.ndarray, r: np.ndarray) -> str:
    if p.any() and r.any():
        return "none"
    if not p.any() and not r.any():
        return "both"
    return "reference" if p.any() else "prediction"


def _documented_empty(state: str, shape, spacing, empty_distance: str) -> dict[str, float]:
    """The module docstring's values for empty masks (Metrics Reloaded)."""
    overlap, distances = ("dice", "iou", "nsd"), ("hd95", "hd100", "hd50", "assd")
    if state == "both":
        return {**dict.fromkeys(overlap, 1.0), **dict.fromkeys(distances, 0.0)}
    worst = math.nan
    if empty_distance == "max":
        worst = float(np.linalg.norm(np.asarray(shape, dtype=float) * np.asarray(spacing)))
    return {**dict.fromkeys(overlap, 0.0), **dict.fromkeys(distances, worst)}


# ---------------------------------------------------------------------------- segmentation oracles


@_quiet
def monai_pair(p, r, spacing, tau, shape, empty_distance="nan") -> dict[str, float]:
    """MONAI's values for one mask pair, with its empty-mask results mapped onto ours.

    The mapping asserts MONAI's documented behaviour first (both empty: Dice = IoU = 1 with
    ``ignore_empty=False``, distances and NSD NaN; one empty: Dice = IoU = NSD = 0, distances NaN
    or inf), so the difference stays the one the module docstring states.
    """
    mm = _monai()
    pt, rt = torch.from_numpy(p)[None, None].float(), torch.from_numpy(r)[None, None].float()
    sp = [float(s) for s in spacing]
    common = {"include_background": True}
    values = {
        "dice": mm.compute_dice(pt, rt, ignore_empty=False, **common),
        "iou": mm.compute_iou(pt, rt, ignore_empty=False, **common),
        "hd95": mm.compute_hausdorff_distance(pt, rt, percentile=95, spacing=sp, **common),
        "hd50": mm.compute_hausdorff_distance(pt, rt, percentile=50, spacing=sp, **common),
        "hd100": mm.compute_hausdorff_distance(pt, rt, spacing=sp, **common),
        "assd": mm.compute_average_surface_distance(pt, rt, symmetric=True, spacing=sp, **common),
        "nsd": mm.compute_surface_dice(pt, rt, [tau], spacing=sp, **common),
    }
    out = {key: float(v.reshape(-1)[0]) for key, v in values.items()}
    state = _state(p, r)
    if state == "none":
        return out
    distances = ("hd95", "hd50", "hd100", "assd")
    assert out["dice"] == out["iou"] == (1.0 if state == "both" else 0.0), out
    assert not any(math.isfinite(out[key]) for key in distances), out
    assert math.isnan(out["nsd"]) if state == "both" else out["nsd"] == 0.0, out
    documented = _documented_empty(state, shape, spacing, empty_distance)
    return {**out, **{key: documented[key] for key in (*distances, "nsd")}}


def scipy_pair(p, r, spacing, tau, shape, empty_distance="nan") -> dict[str, float]:
    """Surface distances from ``scipy.ndimage.distance_transform_edt`` (anisotropic sampling) on
    the whole image; the classical Hausdorff distance also from ``directed_hausdorff``."""
    state = _state(p, r)
    if state != "none":
        return _documented_empty(state, shape, spacing, empty_distance)
    face = ndimage.generate_binary_structure(p.ndim, 1)

    def surface(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask, structure=face, border_value=0)

    sp, sr = surface(p), surface(r)
    d_pred = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    d_ref = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    both = np.concatenate([d_pred, d_ref])
    scale = np.asarray(spacing, dtype=float)
    pts_p, pts_r = np.argwhere(sp) * scale, np.argwhere(sr) * scale
    return {
        "hd95": max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)),
        "hd50": max(np.percentile(d_pred, 50), np.percentile(d_ref, 50)),
        "hd100": max(directed_hausdorff(pts_p, pts_r)[0], directed_hausdorff(pts_r, pts_p)[0]),
        "assd": both.mean(),
        "nsd": np.mean(both <= tau),
    }


def sklearn_overlap(p, r, *_: Any, **__: Any) -> dict[str, float]:
    """Dice = voxel F1 and IoU = voxel Jaccard; ``zero_division=1`` scores two empty masks 1."""
    yt, yp = r.reshape(-1).astype(int), p.reshape(-1).astype(int)
    return {
        "dice": skm.f1_score(yt, yp, zero_division=1.0),
        "iou": skm.jaccard_score(yt, yp, zero_division=1.0),
    }


@functools.cache
def _pair_oracle(oracle: str, case_name: str) -> dict[str, float]:
    case = segmentation_case(case_name)
    p, r = pair_masks(case)
    fn = {"monai": monai_pair, "scipy": scipy_pair, "sklearn": sklearn_overlap}[oracle]
    return fn(p, r, case["spacing"], case["tau"], case["shape"], case["empty_distance"])


def pair_oracle(oracle: str) -> Callable[[Mapping[str, Any]], dict[str, float]]:
    return lambda case: _pair_oracle(oracle, case["name"])


def _map_classes(case: Mapping[str, Any]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    pred, ref = case["pred"], case["ref"]
    if case["channel_axis"] is not None:
        axis = case["channel_axis"]
        pred, ref = np.moveaxis(pred, axis, 0), np.moveaxis(ref, axis, 0)
        return [(j, pred[j] > 0.5, ref[j] > 0.5) for j in range(1, pred.shape[0])]
    labels = case["labels"] or sorted((set(np.unique(pred)) | set(np.unique(ref))) - {0})
    return [(int(j), pred == j, ref == j) for j in labels]


@functools.cache
def _map_oracle(oracle: str, case_name: str) -> dict[str, Any]:
    case = segmentation_case(case_name)
    per_class = {}
    for label, p, r in _map_classes(case):
        args = (p, r, case["spacing"], case["tau"], case["shape"], case["empty_distance"])
        if oracle == "monai":
            values = monai_pair(*args)
        else:
            values = {**scipy_pair(*args), **sklearn_overlap(*args)}
        values = {k: v for k, v in values.items() if k in M.SEGMENTATION_METRICS}
        counts = {"pred_voxels": int(p.sum()), "ref_voxels": int(r.sum())}
        per_class[str(label)] = {"label": label, "empty": _state(p, r), **counts, **values}
    keys = {key for entry in per_class.values() for key in entry if key in M.SEGMENTATION_METRICS}
    mean = {key: _nanmean([float(e[key]) for e in per_class.values()]) for key in keys}
    return {"per_class": per_class, "mean": mean}


def map_oracle(oracle: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda case: _map_oracle(oracle, case["name"])


# ---------------------------------------------------------------------------- segmentation: ours


def _pair_args(case: Mapping[str, Any]) -> tuple[Any, Any]:
    return case["pred"], case["ref"]


def ours_dice(case):
    return {"dice": M.dice(*_pair_args(case), label=case["label"])}


def ours_iou(case):
    return {"iou": M.iou(*_pair_args(case), label=case["label"])}


def ours_hd95(case):
    kw = {"label": case["label"], "empty_distance": case["empty_distance"]}
    return {"hd95": M.hausdorff95(*_pair_args(case), case["spacing"], **kw)}


def ours_hausdorff(case):
    kw = {"label": case["label"], "empty_distance": case["empty_distance"]}
    return {
        f"hd{q}": M.hausdorff_distance(*_pair_args(case), case["spacing"], percentile=q, **kw)
        for q in (100, 95, 50)
    }


def ours_assd(case):
    kw = {"label": case["label"], "empty_distance": case["empty_distance"]}
    return {"assd": M.assd(*_pair_args(case), case["spacing"], **kw)}


def ours_nsd(case):
    kw = {"label": case["label"], "tolerance_mm": case["tau"]}
    return {"nsd": M.surface_dice(*_pair_args(case), case["spacing"], **kw)}


def ours_segmentation_metrics(case):
    return M.segmentation_metrics(
        case["pred"],
        case["ref"],
        case["spacing"],
        labels=case["labels"],
        tolerance_mm=case["tau"],
        empty_distance=case["empty_distance"],
        channel_axis=case["channel_axis"],
    )


def _seg_records(case: Mapping[str, Any]) -> list[dict[str, Any]]:
    """segmentation_metrics of every case of a batch case, as aggregate_segmentation takes them."""
    return [
        {
            "case_id": f"c{i}",
            **M.segmentation_metrics(p, r, s, labels=case["labels"], tolerance_mm=case["tau"]),
        }
        for i, (p, r, s) in enumerate(zip(case["pred"], case["ref"], case["spacings"], strict=True))
    ]


def _seg_streamed(case: Mapping[str, Any], **options: Any) -> M.SegmentationMetric:
    """A SegmentationMetric fed a junk case, reset, then the cases: batch, one case, batch."""
    metric = M.SegmentationMetric(labels=case["labels"], tolerance_mm=case["tau"], **options)
    metric.update(case["pred"][0], case["ref"][1], case["spacings"][0])
    metric.reset()
    ids = [f"c{i}" for i in range(len(case["pred"]))]
    for group in case["groups"]:
        pred, ref, spacings = case["pred"][group], case["ref"][group], case["spacings"][group]
        if len(pred) == 1:
            metric.update(pred[0], ref[0], spacings[0], case_id=ids[group][0])
        else:
            metric.update_batch(torch.from_numpy(pred), ref, spacings, case_ids=ids[group])
    assert len(metric) == len(ids)
    return metric


def _summary_means(report: Mapping[str, Any]) -> dict[str, Any]:
    agg = report["aggregate"]
    per_class = {
        name: {m: entry[m]["mean"] for m in M.SEGMENTATION_METRICS}
        for name, entry in agg["per_class"].items()
    }
    cases = [
        {name: {m: v[m] for m in M.SEGMENTATION_METRICS} for name, v in c["per_class"].items()}
        for c in report["cases"]
    ]
    mean = {m: agg["mean"][m]["mean"] for m in M.SEGMENTATION_METRICS}
    return {"per_class": per_class, "mean": mean, "cases": cases}


def ours_segmentation_metric(case):
    return _summary_means(_seg_streamed(case, n_boot=0).compute())


@_quiet
def monai_cumulative(case: Mapping[str, Any]) -> dict[str, Any]:
    """MONAI's own accumulators (DiceMetric, MeanIoU, HausdorffDistanceMetric(percentile=95),
    SurfaceDistanceMetric(symmetric), SurfaceDiceMetric) fed the same batches."""
    mm = _monai()
    labels, k = case["labels"], len(case["labels"])
    common = {"include_background": True, "reduction": "mean_batch"}
    metrics = {
        "dice": mm.DiceMetric(ignore_empty=False, **common),
        "iou": mm.MeanIoU(ignore_empty=False, **common),
        "hd95": mm.HausdorffDistanceMetric(percentile=95, **common),
        "assd": mm.SurfaceDistanceMetric(symmetric=True, **common),
        "nsd": mm.SurfaceDiceMetric([case["tau"]] * k, **common),
    }
    for group in case["groups"]:

        def onehot(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.stack([a == j for j in labels], axis=1)).float()

        pred, ref = onehot(case["pred"][group]), onehot(case["ref"][group])
        spacings = [[float(s) for s in sp] for sp in case["spacings"][group]]
        for name, metric in metrics.items():
            kwargs = {} if name in ("dice", "iou") else {"spacing": spacings}
            metric(pred, ref, **kwargs)
    per_class = {str(j): {} for j in labels}
    cases: list[dict[str, dict[str, float]]] = [
        {str(j): {} for j in labels} for _ in range(len(case["pred"]))
    ]
    mean = {}
    for name, metric in metrics.items():
        for i, value in enumerate(metric.aggregate().tolist()):
            per_class[str(labels[i])][name] = value
        for c, row in enumerate(metric.get_buffer().tolist()):
            for i, value in enumerate(row):
                cases[c][str(labels[i])][name] = value
        mean[name] = float(metric.aggregate(reduction="mean"))
    return {"per_class": per_class, "mean": mean, "cases": cases}


def ours_aggregate(case):
    return M.aggregate_segmentation(_seg_records(case), n_boot=4000, seed=2)["aggregate"]


def _summary_of(values: list[float]) -> dict[str, Any]:
    """Python's ``statistics`` over the defined values, SciPy's percentile bootstrap of the mean."""
    finite = [v for v in values if not math.isnan(v)]
    out: dict[str, Any] = {
        "n": len(finite),
        "n_nan": len(values) - len(finite),
        "mean": statistics.fmean(finite),
        "median": statistics.median(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else math.nan,
    }
    res = stats.bootstrap(
        (np.asarray(finite),),
        np.mean,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(321),
    )
    tol = BOOT_TOL * res.standard_error
    out["low"] = Near(res.confidence_interval.low, tol)
    out["high"] = Near(res.confidence_interval.high, tol)
    return out


def _case_means(records) -> dict[str, list[float]]:
    """Per metric, each case's mean over its classes."""
    return {
        m: [_nanmean([e[m] for e in r["per_class"].values()]) for r in records]
        for m in M.SEGMENTATION_METRICS
    }


def statistics_oracle(case: Mapping[str, Any]) -> dict[str, Any]:
    """Python's ``statistics`` over the defined values, SciPy's percentile bootstrap of the mean."""
    records = _seg_records(case)
    names = list(records[0]["per_class"])
    per_class = {}
    for name in names:
        entries = [r["per_class"][name] for r in records]
        states = [e["empty"] for e in entries]
        per_class[name] = {
            "n_cases": len(entries),
            "empty": {s: states.count(s) for s in ("both", "reference", "prediction")},
            **{m: _summary_of([e[m] for e in entries]) for m in M.SEGMENTATION_METRICS},
        }
    case_means = _case_means(records)
    return {"per_class": per_class, "mean": {m: _summary_of(v) for m, v in case_means.items()}}


def ours_mean_summary(case):
    """``mean_summary`` of each metric's per-case means (NaN where a metric is undefined)."""
    means = _case_means(_seg_records(case))
    return {m: M.mean_summary(v, n_boot=4000, seed=2) for m, v in means.items()}


def mean_summary_oracle(case):
    return {m: _summary_of(v) for m, v in _case_means(_seg_records(case)).items()}


# ---------------------------------------------------------------------------- segmentation: streams


def stream_segmentation_metric(case):
    """SegmentationMetric over batches vs aggregate_segmentation of segmentation_metrics."""
    streamed = _seg_streamed(case, n_boot=100, seed=1).compute()
    functional = M.aggregate_segmentation(_seg_records(case), n_boot=100, seed=1)

    def comparable(report):
        cases = [{"per_class": c["per_class"], "mean": c["mean"]} for c in report["cases"]]
        keys = ("n_cases", "aggregate", "bootstrap", "notes")
        return {"cases": cases, **{key: report[key] for key in keys}}

    return comparable(streamed), comparable(functional)


def stream_segmentation_metrics(case):
    records = _seg_streamed(case, n_boot=0).compute()["cases"]
    functional = _seg_records(case)
    keys = ("case_id", "per_class", "mean", "spacing", "shape")
    return records, [{key: f[key] for key in keys} for f in functional]


def stream_pair(key: str, fn: Callable[..., float]) -> Callable[[Mapping[str, Any]], Any]:
    """Per-case values and class means of a SegmentationMetric vs the pair function per case."""

    def check(case):
        report = _seg_streamed(case, n_boot=0).compute()
        streamed = {
            "cases": [
                [c["per_class"][str(j)][key] for j in case["labels"]] for c in report["cases"]
            ],
            "means": [
                report["aggregate"]["per_class"][str(j)][key]["mean"] for j in case["labels"]
            ],
        }
        cases = zip(case["pred"], case["ref"], case["spacings"], strict=True)
        values = [[fn(p, r, s, j, case["tau"]) for j in case["labels"]] for p, r, s in cases]
        means = [_nanmean([row[i] for row in values]) for i in range(len(case["labels"]))]
        return streamed, {"cases": values, "means": means}

    return check


# ---------------------------------------------------------------------------- reconstruction

RECON_CASES = ("random-volume", "structured-volume")
RECON_METRICS = ("psnr", "ssim", "nmse")


def recon_case(name: str) -> dict[str, Any]:
    """A float64 magnitude volume and a degraded copy; per-case records of two methods."""
    rng = np.random.default_rng(sum(map(ord, name)))
    case: dict[str, Any] = {"name": name}
    if name == "random-volume":
        target = rng.random((3, 24, 28))
        case.update(target=target, output=np.abs(target + 0.1 * rng.standard_normal(target.shape)))
    elif name == "structured-volume":  # piecewise-constant regions, blurred and noisy
        target = 0.1 + 0.3 * _label_map((3, 32, 30), rng, 3).astype(np.float64)
        output = ndimage.gaussian_filter(target, (0, 1.0, 1.0))
        case.update(target=target, output=np.abs(output + 0.02 * rng.standard_normal(output.shape)))
    else:  # "cases": method a beats method b by ~3 dB; one SSIM undefined
        ids = [f"c{i}" for i in range(24)]
        rows_a = [
            {"id": i, "psnr": rng.normal(32, 2), "ssim": rng.normal(0.85, 0.04),
             "nmse": rng.gamma(2.0, 0.01)}
            for i in ids
        ]  # fmt: skip
        rows_b = [{"id": r["id"], "psnr": r["psnr"] - rng.normal(3, 1)} for r in rows_a]
        rows_a[3]["ssim"] = None
        case.update(rows_a=rows_a, rows_b=rows_b[::-1])  # paired by id, not by position
    return case


def fastmri_oracle(case: Mapping[str, Any]) -> dict[str, float]:
    """fastMRI's ``fastmri.evaluate`` on the float64 volumes."""
    fm = pytest.importorskip("fastmri.evaluate")
    t, o = case["target"], case["output"]
    return {"nmse": fm.nmse(t, o), "psnr": fm.psnr(t, o), "ssim": fm.ssim(t, o)[0]}


def formula_oracle(case: Mapping[str, Any]) -> dict[str, float]:
    """The formulas in NumPy, and scikit-image's SSIM per slice with the volume's maximum."""
    t, o = case["target"], case["output"]
    per_slice = [structural_similarity(a, b, data_range=t.max()) for a, b in zip(t, o, strict=True)]
    return {
        "nmse": np.sum((t - o) ** 2) / np.sum(t**2),
        "psnr": 10 * np.log10(t.max() ** 2 / np.mean((t - o) ** 2)),
        "ssim": statistics.fmean(per_slice),
    }


def recon_summary_oracle(case: Mapping[str, Any]) -> dict[str, Any]:
    return {m: _summary_of([_number(r[m]) for r in case["rows_a"]]) for m in RECON_METRICS}


def paired_difference_oracle(case: Mapping[str, Any]) -> dict[str, Any]:
    b = {r["id"]: r["psnr"] for r in case["rows_b"]}
    return {"key": "psnr", **_summary_of([r["psnr"] - b[r["id"]] for r in case["rows_a"]])}


def ours_recon(name: str) -> Callable[[Mapping[str, Any]], dict[str, float]]:
    return lambda case: {name: getattr(M, name)(case["target"], case["output"])}


def ours_recon_summary(case):
    return M.reconstruction_summary(case["rows_a"], n_boot=4000, seed=2)


def ours_paired_difference(case):
    return M.paired_difference(case["rows_a"], case["rows_b"], "psnr", n_boot=4000, seed=2)


def regression_case(name: str) -> dict[str, Any]:
    """Reference values and predictions of them: EF-like with a bias, or a constant reference
    (whose correlation and R^2 are undefined)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    truth = rng.uniform(20, 70, 30) if name == "ef" else np.full(12, 55.0)
    return {"name": name, "truth": truth, "pred": truth + rng.normal(1.5, 4.0, truth.size)}


def ours_regression(case):
    return M.regression_metrics(case["truth"], case["pred"], n_boot=4000, seed=2)


def regression_oracle(case: Mapping[str, Any]) -> dict[str, Any]:
    """scikit-learn MAE, RMSE and R^2, SciPy's Pearson r, NumPy's Bland-Altman; SciPy's paired
    percentile bootstrap of each."""
    t, p = case["truth"], case["pred"]

    def values(t, p):
        d = p - t
        sd = np.std(d, ddof=1)
        constant = np.ptp(t) == 0
        return {
            "mae": skm.mean_absolute_error(t, p),
            "rmse": math.sqrt(skm.mean_squared_error(t, p)),
            "bias": float(np.mean(d)),
            "loa_low": float(np.mean(d) - 1.96 * sd),
            "loa_high": float(np.mean(d) + 1.96 * sd),
            "r": math.nan if constant else stats.pearsonr(t, p)[0],
            "r2": math.nan if constant else skm.r2_score(t, p),
        }

    out: dict[str, Any] = {"n": len(t)}
    for key, value in values(t, p).items():
        entry: dict[str, Any] = {"value": value}
        if not math.isnan(value):
            res = stats.bootstrap((t, p), lambda a, b, k=key: values(a, b)[k], paired=True,
                                  vectorized=False, n_resamples=N_BOOT, method="percentile",
                                  rng=np.random.default_rng(5))  # fmt: skip
            tol = BOOT_TOL * res.standard_error
            entry.update(low=Near(res.confidence_interval.low, tol),
                         high=Near(res.confidence_interval.high, tol))  # fmt: skip
        out[key] = entry
    return out


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Oracle:
    """A reference implementation: what it is, and its values for a case."""

    name: str
    expect: Callable[[Mapping[str, Any]], Any]
    rtol: float = 0.0
    atol: float = 1e-12


@dataclass(frozen=True)
class Entry:
    """How one public metric is checked.

    ``ours`` runs the metric on a case; each oracle's keys are compared with ours. ``stream``
    returns (accumulated over batches, functional on the concatenation) for a ``stream_cases``
    case; ``no_stream`` says why a metric has no accumulator counterpart.
    """

    make_case: Callable[[str], dict[str, Any]]
    cases: tuple[str, ...]
    ours: Callable[[Mapping[str, Any]], Any]
    oracles: tuple[Oracle, ...]
    stream: Callable[[Mapping[str, Any]], tuple[Any, Any]] | None = None
    stream_cases: tuple[str, ...] = ()
    no_stream: str = ""


SKLEARN_CLS = Oracle(
    "scikit-learn: accuracy_score, balanced_accuracy_score, recall/precision/f1_score "
    "(zero_division=nan; macro for multi-class), cohen_kappa_score (quadratic for ordinal), "
    "confusion_matrix, roc_auc_score (ovr), average_precision_score",
    sklearn_classification,
)
MONAI_ECE = Oracle("MONAI CalibrationErrorMetric(num_bins=15, expected)", monai_ece, atol=2e-6)
MONAI_PAIR = Oracle(
    "MONAI compute_dice/compute_iou(ignore_empty=False), compute_hausdorff_distance"
    "(percentile=95/50/None), compute_average_surface_distance(symmetric=True), "
    "compute_surface_dice; empty masks mapped to the documented convention",
    pair_oracle("monai"),
    MONAI_RTOL,
    MONAI_ATOL,
)
SCIPY_PAIR = Oracle(
    "SciPy distance_transform_edt(sampling=spacing) between face-connected surfaces; "
    "directed_hausdorff for the maximum",
    pair_oracle("scipy"),
    0.0,
    1e-9,
)
SKLEARN_OVERLAP = Oracle(
    "scikit-learn f1_score / jaccard_score over voxels (zero_division=1)", pair_oracle("sklearn")
)
NO_STREAM = (
    "a curve or threshold of one data set; the accumulator reports its summary numbers (AUC, "
    "AUC-PR, ECE), checked under classification_metrics and expected_calibration_error"
)


def _cls(cases, ours, oracles, stream=None, stream_cases=CLS_MAIN, no_stream="") -> Entry:
    stream_cases = stream_cases if stream is not None else ()
    return Entry(classification_case, cases, ours, oracles, stream, stream_cases, no_stream)


def _pair(ours, oracles, key: str, fn: Callable[..., float]) -> Entry:
    """A one-mask-pair segmentation metric; ``fn(pred, ref, spacing, label, tau)`` per case."""
    return Entry(
        segmentation_case, SEG_PAIR_CASES, ours, oracles, stream_pair(key, fn), SEG_BATCHES
    )


CURVES = ("binary", "binary-ties", "multilabel")
CALIBRATION = ("binary", "binary-positive0", "multiclass", "multilabel", "ordinal")
THRESHOLDS = ("binary", "binary-ties", "binary-positive0", "multilabel")
SKLEARN_CURVE = Oracle("scikit-learn calibration_curve(uniform, 15)", calibration_curve_oracle)
MONAI_BINS = Oracle(
    "MONAI calibration_binning(15) counts, CalibrationErrorMetric",
    monai_calibration_binning,
    atol=2e-6,
)
SCIPY_BOOT = Oracle("scipy.stats.bootstrap(percentile) of the sklearn metric", scipy_bootstrap)
SKLEARN_ROC = Oracle("scikit-learn roc_curve, roc_auc_score", sklearn_roc)
SKLEARN_PR = Oracle("scikit-learn precision_recall_curve, average_precision_score", sklearn_pr)
YOUDEN = Oracle(
    "brute-force Youden J at every score (counts: scikit-learn confusion_matrix)",
    lambda case: youden_brute_force(case["y"], case["p"]),
)
YOUDEN_COLUMNS = Oracle("the same brute-force Youden J per column", youden_thresholds_oracle)
MONAI_MAP = Oracle("MONAI per class (as above)", map_oracle("monai"), MONAI_RTOL, MONAI_ATOL)
SCIPY_MAP = Oracle("SciPy + scikit-learn per class (as above)", map_oracle("scipy"), 0.0, 1e-9)
MONAI_CUMULATIVE = Oracle(
    "MONAI DiceMetric, MeanIoU, HausdorffDistanceMetric(95), SurfaceDistanceMetric(symmetric), "
    "SurfaceDiceMetric, reduction mean_batch",
    monai_cumulative,
    MONAI_RTOL,
    MONAI_ATOL,
)
STATISTICS = Oracle(
    "Python statistics fmean/median/stdev of defined values; scipy.stats.bootstrap(np.mean)",
    statistics_oracle,
)
SUMMARY = Oracle(
    "Python statistics fmean/median/stdev of defined values; scipy.stats.bootstrap(np.mean)",
    mean_summary_oracle,
)
FASTMRI = Oracle("fastMRI fastmri.evaluate nmse / psnr / ssim", fastmri_oracle, 1e-9, 1e-12)
RECON_FORMULAS = Oracle(
    "NumPy ||t - o||^2 / ||t||^2 and 10 log10(max^2 / MSE); scikit-image structural_similarity "
    "per slice, data_range the volume's maximum",
    formula_oracle,
    1e-9,
    1e-12,
)
RECON_SUMMARY = Oracle(
    "Python statistics fmean/median/stdev per metric; scipy.stats.bootstrap(np.mean)",
    recon_summary_oracle,
)
PAIRED = Oracle(
    "Python statistics of the per-id differences; scipy.stats.bootstrap(np.mean)",
    paired_difference_oracle,
)
REGRESSION = Oracle(
    "scikit-learn mean_absolute_error, mean_squared_error, r2_score; scipy.stats.pearsonr; "
    "NumPy bias and limits of agreement; scipy.stats.bootstrap(paired, percentile)",
    regression_oracle,
    1e-9,
    1e-12,
)
NO_RECON = "values of one volume pair (or of cases given at once); per-case values are summarised"
CLS_ORACLES = (SKLEARN_CLS, MONAI_ECE)
DISTANCES = (MONAI_PAIR, SCIPY_PAIR)
OVERLAP = (MONAI_PAIR, SKLEARN_OVERLAP)

REGISTRY: dict[str, Entry] = {
    # classification
    "classification_metrics": _cls(
        CLS_CASES,
        ours_classification_metrics,
        CLS_ORACLES,
        stream_classification_metrics,
        CLS_CASES,
    ),
    "evaluate_classification": _cls(CLS_CASES, ours_evaluate, CLS_ORACLES, stream_evaluate),
    "ClassificationMetric": _cls(
        CLS_CASES, ours_classification_metric, CLS_ORACLES, stream_evaluate, CLS_CASES
    ),
    "bootstrap_ci": _cls(CLS_MAIN, ours_bootstrap, (SCIPY_BOOT,), stream_bootstrap),
    "expected_calibration_error": _cls(CLS_CASES, ours_ece, (MONAI_ECE,), stream_ece),
    "calibration_curve_data": _cls(
        CALIBRATION, ours_calibration_curve, (SKLEARN_CURVE, MONAI_BINS), no_stream=NO_STREAM
    ),
    "roc_curve_data": _cls(CURVES, ours_roc, (SKLEARN_ROC,), no_stream=NO_STREAM),
    "pr_curve_data": _cls(CURVES, ours_pr, (SKLEARN_PR,), no_stream=NO_STREAM),
    "youden_threshold": _cls(CURVES[:2], ours_youden, (YOUDEN,), no_stream=NO_STREAM),
    "choose_thresholds": _cls(
        THRESHOLDS, ours_choose_thresholds, (YOUDEN_COLUMNS,), no_stream=NO_STREAM
    ),
    # segmentation, one mask pair
    "dice": _pair(ours_dice, OVERLAP, "dice", lambda p, r, s, j, t: M.dice(p, r, label=j)),
    "iou": _pair(ours_iou, OVERLAP, "iou", lambda p, r, s, j, t: M.iou(p, r, label=j)),
    "hausdorff95": _pair(
        ours_hd95, DISTANCES, "hd95", lambda p, r, s, j, t: M.hausdorff95(p, r, s, label=j)
    ),
    "hausdorff_distance": _pair(
        ours_hausdorff,
        DISTANCES,
        "hd95",
        lambda p, r, s, j, t: M.hausdorff_distance(p, r, s, 95.0, label=j),
    ),
    "assd": _pair(ours_assd, DISTANCES, "assd", lambda p, r, s, j, t: M.assd(p, r, s, label=j)),
    "surface_dice": _pair(
        ours_nsd,
        DISTANCES,
        "nsd",
        lambda p, r, s, j, t: M.surface_dice(p, r, s, tolerance_mm=t, label=j),
    ),
    # segmentation, label maps and cases
    "segmentation_metrics": Entry(
        segmentation_case,
        SEG_MAP_CASES,
        ours_segmentation_metrics,
        (MONAI_MAP, SCIPY_MAP),
        stream_segmentation_metrics,
        SEG_BATCHES,
    ),
    "SegmentationMetric": Entry(
        batch_case,
        ("2d-batches", "3d-batches"),
        ours_segmentation_metric,
        (MONAI_CUMULATIVE,),
        stream_segmentation_metric,
        SEG_BATCHES,
    ),
    "aggregate_segmentation": Entry(
        batch_case,
        ("2d-batches", "3d-batches-empty"),
        ours_aggregate,
        (STATISTICS,),
        stream_segmentation_metric,
        SEG_BATCHES,
    ),
    "mean_summary": Entry(
        batch_case,
        ("2d-batches", "3d-batches-empty"),
        ours_mean_summary,
        (SUMMARY,),
        no_stream="a summary of numbers given at once (per-case or per-pair values)",
    ),
    # reconstruction
    **{
        name: Entry(
            recon_case, RECON_CASES, ours_recon(name), (FASTMRI, RECON_FORMULAS), no_stream=NO_RECON
        )
        for name in RECON_METRICS
    },
    "reconstruction_summary": Entry(
        recon_case, ("cases",), ours_recon_summary, (RECON_SUMMARY,), no_stream=NO_RECON
    ),
    "paired_difference": Entry(
        recon_case, ("cases",), ours_paired_difference, (PAIRED,), no_stream=NO_RECON
    ),
    # regression (measurements: EF, volumes)
    "regression_metrics": Entry(
        regression_case,
        ("ef", "constant-reference"),
        ours_regression,
        (REGRESSION,),
        no_stream="agreement of values given at once (one per case)",
    ),
}

NOT_METRICS: dict[str, str] = {
    "CLASSIFICATION_TASKS": "constant: the task names",
    "EMPTY_STATES": "constant: the names of the empty-mask states",
    "HEADLINE": "constant: the headline classification metric names (all checked above)",
    "SEGMENTATION_METRICS": "constant: the segmentation metric names (all checked above)",
    "MetricInputError": "the exception the metrics raise on bad input",
    "array_spacing": "helper: ITK-order spacing to array order (see test_segmentation.py)",
    "ece_kind": "helper: says in words which ECE a task gets; the ECE is checked above",
}

# (metric, case) -> why it disagrees with its oracle; each becomes a strict xfail.
# (youden_threshold broke exact ties by the float value of tpr - fpr until it compared counts)
KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}


def _params(pairs: list[tuple[str, str]], suffix: Callable[[str, str], list[Any]] | None = None):
    """Test ids ``metric-case[-oracle]``; known disagreements (oracle tests only) xfail strictly."""
    out = []
    for name, case in pairs:
        marks = []
        if suffix is not None and (name, case) in KNOWN_DISAGREEMENTS:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DISAGREEMENTS[name, case])]
        extra = suffix(name, case) if suffix else [None]
        for item in extra:
            tail = "" if item is None else f"-{item}"
            out.append(pytest.param(name, case, item, marks=marks, id=f"{name}-{case}{tail}"))
    return out


AGREEMENT = _params(
    [(name, case) for name, entry in REGISTRY.items() for case in entry.cases],
    lambda name, case: list(range(len(REGISTRY[name].oracles))),
)
STREAMS = _params([(name, case) for name, entry in REGISTRY.items() for case in entry.stream_cases])
INPUTS = _params(
    [(name, case) for name, entry in REGISTRY.items() for case in entry.cases]
    + [(name, f"stream:{case}") for name, entry in REGISTRY.items() for case in entry.stream_cases]
)


# ---------------------------------------------------------------------------- registry tests


def test_every_public_name_is_registered():
    public = set(M.__all__)
    missing = sorted(public - set(REGISTRY) - set(NOT_METRICS))
    assert not missing, (
        f"public names without an oracle in REGISTRY or a reason in NOT_METRICS: {missing}"
    )
    stale = sorted((set(REGISTRY) | set(NOT_METRICS)) - public)
    assert not stale, f"registered names that are no longer public: {stale}"
    assert not set(REGISTRY) & set(NOT_METRICS)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entry_is_complete(name):
    entry, obj = REGISTRY[name], getattr(M, name)
    assert callable(obj)
    assert entry.cases and entry.oracles and all(o.name for o in entry.oracles)
    assert (entry.stream is not None and entry.stream_cases) or entry.no_stream


@pytest.mark.parametrize("name", sorted(NOT_METRICS))
def test_not_metrics_are_constants_errors_or_helpers(name):
    obj = getattr(M, name)
    if isinstance(obj, tuple):
        assert all(isinstance(v, str) for v in obj)
    elif isinstance(obj, type):
        assert issubclass(obj, Exception)
    else:
        assert name in ("array_spacing", "ece_kind")


def test_oracles_cover_every_headline_and_segmentation_metric():
    cls = classification_case("multiclass")
    covered = set(sklearn_classification(cls)) | set(monai_ece(cls))
    assert set(M.HEADLINE) <= covered
    seg = segmentation_case("3d")
    assert set(M.SEGMENTATION_METRICS) <= set(_pair_oracle("monai", seg["name"]))
    assert set(M.SEGMENTATION_METRICS) <= set(_map_oracle("monai", "3d-labelmap")["mean"])


# ---------------------------------------------------------------------------- common tests


@pytest.mark.parametrize(("name", "case", "oracle"), AGREEMENT)
def test_agrees_with_oracle(name, case, oracle):
    entry = REGISTRY[name]
    reference = entry.oracles[oracle]
    data = entry.make_case(case)
    ours = entry.ours(data)
    expected = reference.expect(data)
    expected = {key: value for key, value in expected.items() if key in ours}
    assert expected, f"{reference.name} checks none of {name}'s outputs"
    assert_agrees(ours, expected, reference.rtol, reference.atol, f"{name}[{case}]")


@pytest.mark.parametrize(("name", "case", "_"), STREAMS)
def test_accumulator_equals_functional_on_concatenation(name, case, _):
    entry = REGISTRY[name]
    assert entry.stream is not None
    streamed, functional = entry.stream(stream_case(case))
    assert_agrees(streamed, functional, STREAM_TOL, STREAM_TOL, f"{name}[{case}]")


@pytest.mark.parametrize(("name", "case", "_"), INPUTS)
def test_inputs_are_not_modified(name, case, _):
    entry = REGISTRY[name]
    streaming = case.startswith("stream:")
    case = case.removeprefix("stream:")
    data = stream_case(case) if streaming else entry.make_case(case)
    before = copy.deepcopy(data)
    (entry.stream if streaming else entry.ours)(data)
    assert_unchanged(before, data, f"{name}[{case}]")


ACCUMULATORS = sorted(n for n in REGISTRY if isinstance(getattr(M, n), type))


def test_accumulators_are_the_expected_classes():
    assert ACCUMULATORS == ["ClassificationMetric", "SegmentationMetric"]


@pytest.mark.parametrize("name", ACCUMULATORS)
def test_accumulator_without_updates_raises_and_keeps_no_alias(name):
    cls = getattr(M, name)
    metric = cls("binary", n_boot=0) if name == "ClassificationMetric" else cls(n_boot=0)
    with pytest.raises(M.MetricInputError):
        metric.compute()
    if name == "ClassificationMetric":
        case = classification_case("binary")
        y, p = case["y"].copy(), case["p"].copy()
        metric.update(y, p)
        before = metric.compute()
        y[:] = 1 - y  # the caller reuses its buffers
        p[:] = 1 - p
    else:
        case = segmentation_case("3d")
        pred = torch.from_numpy(case["pred"].copy())
        metric.update(pred, case["ref"], case["spacing"])
        before = metric.compute()
        pred.logical_not_()
    assert metric.compute() == before
    metric.reset()
    with pytest.raises(M.MetricInputError):
        metric.compute()


def test_youden_exact_tie_goes_to_the_highest_threshold():
    """The smallest case: at 0.45 (sens 2/3, spec 1) and at 0.25 (sens 1, spec 2/3) J = 2/3
    exactly, but ``1 - 1/3`` rounds above ``2/3 - 0`` in floating point."""
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55])
    assert youden_brute_force(y, s)["threshold"] == 0.45
    assert M.youden_threshold(y, s)["threshold"] == 0.45
