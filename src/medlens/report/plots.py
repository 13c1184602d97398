"""Report figures, each returned as PNG bytes ready to embed in a static page.

Every function builds its own :class:`matplotlib.figure.Figure` on the Agg canvas, never pyplot,
so nothing global (backend, open figures, rcParams) changes and the functions are safe to call
from a training script or a headless server. Labels and probabilities go through the same checks
as :mod:`medlens.metrics`, so a curve and the number beside it in the report agree: multi-label
entries of -1 or NaN (uncertain / blank) are left out of that class only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.metrics import calibration_curve_data, pr_curve_data, roc_curve_data
from medlens.metrics._inputs import Prepared, prepare
from medlens.report._examples import example_grid
from medlens.report.figures import DPI, colors, new_figure, plain, to_png

__all__ = [
    "DPI",
    "calibration_plot",
    "confusion_matrix_plot",
    "example_grid",
    "learning_curves",
    "pr_curves",
    "roc_curves",
]

_MAX_LEGEND = 10  # classes named in a legend; more make it unreadable
_MAX_SMALL_MULTIPLES = 24  # multi-label confusion matrices drawn


# ---------------------------------------------------------------------- learning curves
def _series(history: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    out = []
    for record in history:
        value = record.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        out.append(float(value) if ok else math.nan)
    return np.asarray(out, dtype=float)


def best_epoch(
    history: Sequence[dict[str, Any]], monitor: str, mode: str | None = None
) -> int | None:
    """Index into ``history`` of the best ``monitor`` value (``mode`` guessed from the name)."""
    values = _series(history, monitor)
    if not np.isfinite(values).any():
        return None
    if mode is None:
        mode = "min" if any(w in monitor for w in ("loss", "mae", "ece", "error")) else "max"
    return int(np.nanargmin(values) if mode == "min" else np.nanargmax(values))


def curve_layout(
    history: Sequence[dict[str, Any]], monitor: str | None = None, mode: str | None = None
) -> tuple[list[str], list[str], str, int | None]:
    """What :func:`learning_curves` draws: the loss keys (left), the validation metric keys
    (right), the monitored key and the index of its best record (None: no dashed line).

    Raises:
        ValueError: no records, or no numeric loss or metric in them.
    """
    if not history:
        raise ValueError("no training history to plot")
    keys = list(dict.fromkeys(k for r in history for k in r))
    numeric = [
        k for k in keys if k not in ("epoch", "time") and np.isfinite(_series(history, k)).any()
    ]
    losses = [k for k in numeric if "loss" in k]
    metrics = [k for k in numeric if k.startswith("val_") and "loss" not in k]
    if not losses and not metrics:
        raise ValueError("the history holds no loss or validation metric to plot")
    if monitor is None:
        monitor = "val_loss" if "val_loss" in numeric else (numeric[0] if numeric else "")
    return losses, metrics, monitor, best_epoch(history, monitor, mode)


def learning_curves(
    history: Sequence[dict[str, Any]], monitor: str | None = None, mode: str | None = None
) -> bytes:
    """Losses (left) and validation metrics (right) per epoch, with the best epoch marked.

    Args:
        history: the ``history.jsonl`` records (``epoch``, ``train_loss``, ``val_*``, ...).
        monitor: the key deciding the best epoch; default ``val_loss`` (else ``train_loss``).
        mode: ``"min"`` or ``"max"``; default guessed from the name (losses and errors: min).

    Raises:
        ValueError: no records, or no numeric loss or metric in them.
    """
    from matplotlib.ticker import MaxNLocator

    losses, metrics, monitor, best = curve_layout(history, monitor, mode)
    epochs = np.asarray([r.get("epoch", i) for i, r in enumerate(history)], dtype=float)
    panels = [p for p in (losses, metrics) if p]
    fig = new_figure(5.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, keys_ in zip(axes, panels, strict=True):
        for key in keys_:
            values = _series(history, key)
            marker = "o" if len(history) <= 30 else None
            ax.plot(epochs, values, marker=marker, markersize=3, label=plain(key))
        if best is not None:
            ax.axvline(epochs[best], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Loss" if keys_ is losses else "Validation metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    title = "Training progress"
    if best is not None:
        title += f" (best epoch {epochs[best]:g} by {plain(monitor)}, dashed line)"
    fig.suptitle(title)
    return to_png(fig)


# ---------------------------------------------------------------------- ROC and PR curves
def _operating_point(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float, float]:
    """Sensitivity, false-positive rate and precision (NaN if undefined) at ``s >= t``."""
    called = s >= t
    tp, fp = float(np.sum(called & (y == 1))), float(np.sum(called & (y == 0)))
    sens = tp / max(float(np.sum(y == 1)), 1.0)
    fpr = fp / max(float(np.sum(y == 0)), 1.0)
    precision = tp / (tp + fp) if tp + fp else math.nan
    return sens, fpr, precision


def _columns(prep: Prepared) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The (class, labels, scores) columns to draw: the positive class alone for binary."""
    ks = [prep.positive] if prep.task == "binary" else range(prep.n_classes)
    return [(k, *prep.column(k)) for k in ks]


def _curves(
    kind: str,
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: list[str] | None,
    threshold: float | Sequence[float] | None,
    positive: int | None,
) -> bytes:
    thr = None if task in ("multiclass", "ordinal") else threshold
    prep = prepare(y_true, y_prob, task, thr, class_names, positive)
    fig = new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    columns = _columns(prep)
    palette = colors(len(columns))
    scores, skipped = [], 0
    binary = prep.task == "binary"
    for i, (k, y, s) in enumerate(columns):
        if y.size == 0 or y.min() == y.max():
            skipped += 1
            continue
        if kind == "roc":
            data = roc_curve_data(y, s)
            x, yy, score = data["fpr"], data["tpr"], data["auc"]
        else:
            data = pr_curve_data(y, s)
            x, yy, score = data["recall"], data["precision"], data["average_precision"]
        scores.append(score)
        what = "AUC" if kind == "roc" else "AP"
        label = (
            f"{what} = {score:.3f}" if binary else f"{plain(prep.class_names[k], 24)} ({score:.3f})"
        )
        ax.plot(
            x,
            yy,
            color=palette[i],
            linewidth=1.8 if binary else 1.3,
            drawstyle="default" if kind == "roc" else "steps-post",
            label=label if binary or len(scores) <= _MAX_LEGEND else None,
        )
        if kind == "pr" and binary:
            prevalence = data["prevalence"]
            ax.axhline(
                prevalence,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"no skill (prevalence {prevalence:.2f})",
            )
        if prep.threshold is not None:
            t = float(prep.threshold[0] if binary else prep.threshold[k])
            sens, fpr, precision = _operating_point(y, s, t)
            point = (fpr, sens) if kind == "roc" else (sens, precision)
            op_label = None
            if binary and kind == "roc":
                op_label = f"threshold {t:.3g}: sensitivity {sens:.2f}, specificity {1 - fpr:.2f}"
            elif binary:
                op_label = f"threshold {t:.3g}: recall {sens:.2f}, precision {precision:.2f}"
            if not math.isnan(point[1]):
                ax.plot(
                    *point,
                    marker="o",
                    markersize=8 if binary else 5,
                    linestyle="none",
                    color="black" if binary else palette[i],
                    markeredgecolor="black",
                    label=op_label,
                    zorder=5,
                )
    if not scores:
        raise ValueError("no class has both positive and negative cases, so there is no curve")
    if not binary and len(scores) > _MAX_LEGEND:
        ax.plot([], [], " ", label=f"+ {len(scores) - _MAX_LEGEND} more classes")
    if skipped:
        ax.plot([], [], " ", label=f"{skipped} class(es) lack both labels: not drawn")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xlabel("1 − specificity (false-positive rate)")
        ax.set_ylabel("Sensitivity (true-positive rate)")
    else:
        ax.set_xlabel("Recall (sensitivity)")
        ax.set_ylabel("Precision (positive predictive value)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right" if kind == "roc" else "lower left")
    macro = f"{np.mean(scores):.3f}"
    name = "ROC curve" if kind == "roc" else "Precision-recall curve"
    what = "AUC" if kind == "roc" else "AP"
    if binary:
        ax.set_title(f"{name} (positive class '{plain(prep.class_names[prep.positive], 24)}')")
    elif prep.task == "multilabel":
        ax.set_title(f"{name}s per class (macro {what} {macro})")
    else:
        ax.set_title(f"{name}s, one-vs-rest (macro {what} {macro})")
    return to_png(fig)


def roc_curves(
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: list[str] | None = None,
    threshold: float | Sequence[float] | None = None,
    positive: int | None = None,
) -> bytes:
    """ROC curve(s) with AUC; binary and multi-label also mark the operating point.

    Binary: one curve of the ``positive`` class (index; None = 1) and the point where
    ``P(positive) >= threshold`` (its sensitivity against 1 - specificity). Multi-class /
    ordinal: one-vs-rest curves, macro AUC in the title. Multi-label: one curve per class on its
    labelled entries, each class's threshold marked. ``threshold`` is ignored for argmax tasks;
    None means 0.5 where one applies.
    """
    return _curves("roc", y_true, y_prob, task, class_names, threshold, positive)


def pr_curves(
    y_true: Any,
    y_prob: Any,
    task: str,
    class_names: list[str] | None = None,
    threshold: float | Sequence[float] | None = None,
    positive: int | None = None,
) -> bytes:
    """Precision-recall curve(s) with average precision, as :func:`roc_curves` lays them out.

    Binary also draws the prevalence, the precision of a model that cannot tell the classes
    apart, because a rare condition makes every PR curve look poor.
    """
    return _curves("pr", y_true, y_prob, task, class_names, threshold, positive)


# ---------------------------------------------------------------------- calibration
def calibration_plot(
    y_true: Any, y_prob: Any, task: str, n_bins: int = 15, positive: int | None = None
) -> bytes:
    """Reliability diagram with the diagonal, and the number of cases per bin beneath it.

    Binary and multi-label compare P(positive) with the observed positive rate (binary: of the
    ``positive`` class, index 1 unless given); multi-class and ordinal compare the top-class
    probability with the accuracy (see :func:`ece_kind`).
    """
    data = calibration_curve_data(y_true, y_prob, task, n_bins, positive)
    edges = np.asarray(data["bin_edges"])
    width = np.diff(edges)
    observed = np.array([math.nan if v is None else v for v in data["accuracy"]])
    confidence = np.array([math.nan if v is None else v for v in data["confidence"]])
    counts = np.asarray(data["counts"])
    positive = task in ("binary", "multilabel")
    fig = new_figure(5.4, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        edges[:-1],
        np.nan_to_num(observed),
        width=width,
        align="edge",
        color="#9ecae1",
        edgecolor="#3182bd",
        label="observed, per bin",
    )
    ok = np.isfinite(observed)
    top.plot(
        confidence[ok],
        observed[ok],
        marker="o",
        color="#08519c",
        linewidth=1.2,
        label="observed vs mean predicted",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    top.set_ylabel("Observed fraction positive" if positive else "Observed accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.grid(alpha=0.3)
    top.legend(fontsize="small", loc="upper left")
    top.set_title(f"Calibration (ECE {data['ece']:.3f})")
    bottom.bar(edges[:-1], counts, width=width, align="edge", color="#bdbdbd", edgecolor="#636363")
    bottom.set_ylabel("Cases")
    bottom.set_xlabel(
        "Predicted probability of the positive class" if positive else "Top-class probability"
    )
    return to_png(fig)


# ---------------------------------------------------------------------- confusion matrix
def _annotate(ax: Any, shown: np.ndarray, counts: np.ndarray, normalize: bool, vmax: float) -> None:
    k = shown.shape[0]
    if k > 25:
        return
    size = 9 if k <= 6 else (7 if k <= 12 else 5)
    for i in range(k):
        for j in range(shown.shape[1]):
            text = f"{counts[i, j]:d}"
            if normalize and k <= 12:
                text += f"\n{100 * shown[i, j]:.0f}%"
            dark = shown[i, j] > 0.55 * vmax
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=size,
                color="white" if dark else "black",
            )


def _row_fractions(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def confusion_matrix_plot(matrix: Any, class_names: Sequence[str], normalize: bool = True) -> bytes:
    """Confusion matrix, rows true and columns predicted: counts and row percentages.

    ``normalize`` colours each cell by its share of the true class (the row), so a rare class is
    as readable as a common one. A ``(K, 2, 2)`` matrix (multi-label, ``[[tn, fp], [fn, tp]]``
    per class) is drawn as one small 2x2 matrix per class, at most 24.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    names = [plain(c, 20) for c in class_names]
    if counts.ndim == 3:
        return _multilabel_matrices(counts, names, normalize)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(names):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {len(names)} classes")
    k = counts.shape[0]
    shown = _row_fractions(counts) if normalize else counts.astype(float)
    side = min(max(4.8, 0.55 * k + 2.5), 14.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
    _annotate(ax, shown, counts, normalize, vmax)
    ticks = np.arange(k)
    ax.set_xticks(
        ticks,
        names if k <= 40 else [""] * k,
        rotation=45 if k > 4 else 0,
        ha="right" if k > 4 else "center",
        fontsize=9 if k <= 12 else 7,
    )
    ax.set_yticks(ticks, names if k <= 40 else [""] * k, fontsize=9 if k <= 12 else 7)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title("Confusion matrix" + (" (colour: share of the true class)" if normalize else ""))
    fig.colorbar(image, ax=ax, shrink=0.8, label="Fraction of true class" if normalize else "Cases")
    return to_png(fig)


def _multilabel_matrices(counts: np.ndarray, names: list[str], normalize: bool) -> bytes:
    if counts.shape[1:] != (2, 2) or counts.shape[0] != len(names):
        raise ValueError(
            f"multi-label confusion matrices of shape {counts.shape} for "
            f"{len(names)} classes; expected ({len(names)}, 2, 2)"
        )
    k = min(counts.shape[0], _MAX_SMALL_MULTIPLES)
    cols = min(k, 4)
    rows = math.ceil(k / cols)
    fig = new_figure(2.6 * cols + 0.8, 2.5 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for idx, ax in enumerate(axes.ravel()):
        if idx >= k:
            ax.axis("off")
            continue
        shown = _row_fractions(counts[idx]) if normalize else counts[idx].astype(float)
        vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
        image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
        _annotate(ax, shown, counts[idx], normalize, vmax)
        ax.set_xticks([0, 1], ["neg", "pos"], fontsize=8)
        ax.set_yticks([0, 1], ["neg", "pos"], fontsize=8)
        ax.set_title(names[idx], fontsize=9)
    more = f" (first {k} of {counts.shape[0]} classes)" if counts.shape[0] > k else ""
    fig.suptitle(f"Confusion matrix per class: rows true, columns predicted{more}")
    if image is not None and normalize:
        fig.colorbar(image, ax=axes, shrink=0.6, label="Fraction of true class")
    return to_png(fig)
