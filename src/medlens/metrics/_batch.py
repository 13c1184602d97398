"""Classification metrics for many resamples at once, from counts (private).

A resample is a row of sample indices, ``idx`` of shape ``(B, n)``; the full data set is the single
row ``arange(N)``. Each score column is encoded once as ``2 * rank(score) + label``, so one
``np.bincount`` over all rows gives, per resample, how many negatives and positives sit at every
distinct score. Everything else follows from those counts without another pass over the samples:
the confusion matrix at a threshold (a threshold splits the sorted scores in two), the
Mann-Whitney AUC with ties counted one half (equal to the trapezoidal ROC AUC of scikit-learn),
average precision, and the calibration bins (the scores are sorted, so each bin is a run). This
keeps 1000 bootstrap resamples to a few NumPy calls per column instead of 1000 scikit-learn calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens.metrics._inputs import Prepared

N_BINS = 15
HEADLINE = (
    "auc",
    "auc_pr",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "kappa",
    "ece",
)
RANKING = ("auc", "auc_pr")


@dataclass(frozen=True, eq=False)
class Column:
    """One score column: ``code = 2 * rank + label`` per sample, ignored samples -> last code."""

    code: np.ndarray
    uniq: np.ndarray

    @property
    def n_codes(self) -> int:
        return 2 * self.uniq.size + 1


def make_column(labels: np.ndarray, scores: np.ndarray) -> Column:
    """Encode binary ``labels`` (-1 = ignored) and ``scores`` of one column for counting."""
    uniq, inv = np.unique(scores, return_inverse=True)
    code = inv.reshape(-1).astype(np.int64) * 2 + labels
    code[labels < 0] = 2 * uniq.size
    return Column(code, uniq)


def column_counts(col: Column, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Negatives and positives at each distinct score, per resample: two ``(B, U)`` arrays."""
    b, m = idx.shape[0], col.n_codes
    flat = (np.arange(b, dtype=np.int64)[:, None] * m + col.code[idx]).ravel()
    c = np.bincount(flat, minlength=b * m).reshape(b, m)[:, :-1].reshape(b, -1, 2)
    return c[..., 0], c[..., 1]


@dataclass(frozen=True, eq=False)
class Plan:
    """Inputs encoded once, reused for the point estimate and every bootstrap chunk."""

    prep: Prepared
    columns: list[Column] | None  # one per class; None when ranking metrics are not needed
    top: Column | None  # multi-class / ordinal: top-class confidence, label = prediction right
    pred: np.ndarray | None  # multi-class / ordinal: argmax class
    kappa_weights: np.ndarray


def make_plan(prep: Prepared, ranking: bool = True) -> Plan:
    """Encode ``prep``; ``ranking=False`` skips the per-class columns when AUCs are not wanted."""
    k = prep.n_classes
    idx = np.arange(k)
    if prep.task == "ordinal":
        weights = (idx[:, None] - idx[None, :]).astype(np.float64) ** 2
    else:
        weights = (idx[:, None] != idx[None, :]).astype(np.float64)
    if prep.task in ("binary", "multilabel"):
        if prep.task == "binary":
            labels = [1 - prep.y, prep.y]
        else:
            labels = [prep.y[:, j].astype(np.int64) for j in range(k)]
        cols = [make_column(labels[j], prep.prob[:, j]) for j in range(k)]
        return Plan(prep, cols, None, None, 1.0 - np.eye(2))
    pred = np.argmax(prep.prob, axis=1)
    correct = (pred == prep.y).astype(np.int64)
    top = make_column(correct, prep.prob[np.arange(prep.n), pred])
    cols = [make_column((prep.y == j).astype(np.int64), prep.prob[:, j]) for j in range(k)]
    return Plan(prep, cols if ranking else None, top, pred, weights)


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` with NaN where ``b == 0`` (an undefined rate, not a zero one)."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b != 0)
    return out


def nanmean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the defined (non-NaN) entries; NaN where none is defined. No warnings."""
    ok = ~np.isnan(a)
    return div(np.where(ok, a, 0.0).sum(axis=axis), ok.sum(axis=axis))


def bin_of(scores: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Calibration bin of each score: ``(b/n, (b+1)/n]``, with 0 in the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, scores, side="left") - 1, 0, n_bins - 1)


def _per_bin(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Sums of ``(B, U)`` values over the calibration bins of the (ascending) scores."""
    starts = np.flatnonzero(np.r_[True, bins[1:] != bins[:-1]])
    out = np.zeros((values.shape[0], n_bins))
    out[:, bins[starts]] = np.add.reduceat(values, starts, axis=1)
    return out


def column_stats(
    col: Column,
    neg: np.ndarray,
    pos: np.ndarray,
    *,
    ranking: bool = True,
    threshold: float | None = None,
    ece: bool = False,
    calibration: bool = False,
    n_bins: int = N_BINS,
) -> dict[str, np.ndarray]:
    """Metrics of one column from its ``(B, U)`` negative / positive counts per distinct score.

    ``auc`` is P(score_pos > score_neg) + P(tie) / 2, equal to scikit-learn's trapezoidal ROC AUC;
    ``ap`` is scikit-learn's step-wise average precision; ``cm`` is ``[[tn, fp], [fn, tp]]`` for
    ``score >= threshold``; ``ece_diff`` holds per-bin sums of (outcome - score), whose absolute
    values add up to n * ECE, and with ``calibration`` also the per-bin outcome sums, score sums
    and counts.
    """
    cneg, cpos = np.cumsum(neg, axis=1), np.cumsum(pos, axis=1)
    n_pos, n_neg = cpos[:, -1], cneg[:, -1]
    out = {"n_pos": n_pos, "n_neg": n_neg}
    if ranking:  # both sums run over the scores held by positives only
        rows, cols = np.nonzero(pos)
        b, p, tied = pos.shape[0], pos[rows, cols], neg[rows, cols]
        below = cneg[rows, cols] - tied  # negatives scoring strictly lower
        auc_num = np.bincount(rows, weights=p * (below + 0.5 * tied), minlength=b)
        out["auc"] = div(auc_num, n_pos * n_neg.astype(np.float64))
        tps = n_pos[rows] - cpos[rows, cols] + p  # positives scoring at least this value
        precision = tps / (tps + n_neg[rows] - below)
        out["ap"] = div(np.bincount(rows, weights=p * precision, minlength=b), n_pos)
    if threshold is not None:
        s = int(np.searchsorted(col.uniq, threshold, side="left"))  # first score >= threshold
        fn = cpos[:, s - 1] if s else np.zeros_like(n_pos)
        tn = cneg[:, s - 1] if s else np.zeros_like(n_neg)
        row0, row1 = np.stack([tn, n_neg - tn], axis=-1), np.stack([fn, n_pos - fn], axis=-1)
        out["cm"] = np.stack([row0, row1], axis=-2)
    if ece:
        bins = bin_of(col.uniq, n_bins)
        total = neg + pos
        out["ece_diff"] = _per_bin(pos - total * col.uniq, bins, n_bins)
        out["total"] = n_pos + n_neg
        if calibration:
            sums = [pos, total * col.uniq, total]
            out["calibration"] = np.stack([_per_bin(v, bins, n_bins) for v in sums], axis=1)
    return out


def kappa_from_cm(cm: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa (weighted by ``weights``) of confusion matrices ``(..., K, K)``."""
    cm = cm.astype(np.float64)
    n = cm.sum(axis=(-1, -2))
    expected = cm.sum(axis=-1)[..., :, None] * cm.sum(axis=-2)[..., None, :]
    expected = expected * div(1.0, n)[..., None, None]
    observed = (weights * cm).sum(axis=(-1, -2))
    return 1.0 - div(observed, (weights * expected).sum(axis=(-1, -2)))


def compute(
    plan: Plan, idx: np.ndarray, n_bins: int = N_BINS, calibration: bool = False
) -> dict[str, np.ndarray]:
    """Every metric for each resample row of ``idx``.

    Returns headline metrics as ``(B,)`` arrays, per-class ones as ``pc_<name>`` ``(B, K)``
    arrays, ``cm`` (``(B, K, K)``, or ``(B, K, 2, 2)`` for multi-label), ``n_pos``/``n_neg``
    ``(B, K)`` label counts per column and, if asked, ``calibration`` ``(B, 3, n_bins)``: per bin
    the sum of outcomes, the sum of confidences and the count.
    """
    prep = plan.prep
    out: dict[str, np.ndarray] = {}
    opts = {"n_bins": n_bins, "calibration": calibration}
    if prep.task in ("binary", "multilabel"):
        assert plan.columns is not None and prep.threshold is not None
        pos = prep.positive  # binary: the threshold applies to the positive class's column
        thresholds = list(prep.threshold) if prep.task == "multilabel" else [None, None]
        if prep.task == "binary":
            thresholds[pos] = prep.threshold[0]
        stats = [
            column_stats(c, *column_counts(c, idx), threshold=t, ece=t is not None, **opts)
            for c, t in zip(plan.columns, thresholds, strict=True)
        ]
        calibrated = [st for st in stats if "ece_diff" in st]
        if prep.task == "binary":  # [[tn, fp], [fn, tp]] of the positive class, in class order
            out["cm"] = stats[pos]["cm"] if pos == 1 else stats[pos]["cm"][..., ::-1, ::-1]
            out.update(_single_label_metrics(out["cm"], plan.kappa_weights))
        else:
            out["cm"] = np.stack([st["cm"] for st in stats], axis=1)
            out.update(_multilabel_metrics(out["cm"], plan.kappa_weights))
    else:
        assert plan.top is not None and plan.pred is not None
        k, b = prep.n_classes, idx.shape[0]
        code = prep.y * k + plan.pred
        flat = (np.arange(b, dtype=np.int64)[:, None] * (k * k) + code[idx]).ravel()
        out["cm"] = np.bincount(flat, minlength=b * k * k).reshape(b, k, k)
        out.update(_single_label_metrics(out["cm"], plan.kappa_weights))
        calibrated = [column_stats(plan.top, *column_counts(plan.top, idx), ranking=False,
                                   ece=True, **opts)]  # fmt: skip
        stats = []
        if plan.columns is not None:
            stats = [column_stats(c, *column_counts(c, idx)) for c in plan.columns]
    diff = sum(st["ece_diff"] for st in calibrated)
    out["ece"] = div(np.abs(diff).sum(axis=1), sum(st["total"] for st in calibrated))
    if calibration:
        out["calibration"] = sum(st["calibration"] for st in calibrated)
    if stats:
        out["pc_auc"] = np.stack([st["auc"] for st in stats], axis=1)
        out["pc_auc_pr"] = np.stack([st["ap"] for st in stats], axis=1)
        if prep.task == "binary":
            pos = prep.positive
            out["auc"], out["auc_pr"] = out["pc_auc"][:, pos], out["pc_auc_pr"][:, pos]
        else:
            out["auc"], out["auc_pr"] = nanmean(out["pc_auc"]), nanmean(out["pc_auc_pr"])
    if prep.task == "binary":
        for name in ("sensitivity", "precision", "f1"):
            out[name] = out[f"pc_{name}"][:, prep.positive]
        out["specificity"] = out["pc_sensitivity"][:, 1 - prep.positive]
    else:
        for name in ("sensitivity", "specificity", "precision", "f1"):
            out[name] = nanmean(out[f"pc_{name}"])
    return out


def _single_label_metrics(cm: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diagonal(cm, axis1=1, axis2=2)
    row, col = cm.sum(axis=2), cm.sum(axis=1)
    n = row.sum(axis=1)
    tn = n[:, None] - row - col + tp
    recall = div(tp, row)
    return {
        "n_pos": row,
        "n_neg": n[:, None] - row,
        "pc_sensitivity": recall,
        "pc_specificity": div(tn, n[:, None] - row),
        "pc_precision": div(tp, col),
        "pc_f1": div(2 * tp, row + col),
        "accuracy": div(tp.sum(axis=1), n),
        "balanced_accuracy": nanmean(recall),
        "kappa": kappa_from_cm(cm, weights),
    }


def _multilabel_metrics(cm: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    tn, fp, fn, tp = cm[..., 0, 0], cm[..., 0, 1], cm[..., 1, 0], cm[..., 1, 1]
    n_pos, n_neg = tp + fn, tn + fp
    sens, spec = div(tp, n_pos), div(tn, n_neg)
    out = {
        "n_pos": n_pos,
        "n_neg": n_neg,
        "pc_accuracy": div(tp + tn, n_pos + n_neg),
        "pc_balanced_accuracy": nanmean(np.stack([sens, spec], axis=-1)),
        "pc_sensitivity": sens,
        "pc_specificity": spec,
        "pc_precision": div(tp, tp + fp),
        "pc_f1": div(2 * tp, 2 * tp + fp + fn),
        "pc_kappa": kappa_from_cm(cm, weights),
    }
    for name in ("accuracy", "balanced_accuracy", "kappa"):
        out[name] = nanmean(out[f"pc_{name}"])
    return out
