"""Agreement of predicted and reference values (EF, volumes, any number a model regresses).

:func:`regression_metrics` gives what a measurement study reports, each with a percentile
bootstrap interval over cases (the same resamples for every metric):

* ``mae``, ``rmse``: mean absolute and root mean squared error;
* ``bias``: mean of prediction minus reference; ``loa_low`` and ``loa_high``: Bland and Altman's
  95% limits of agreement, bias -/+ 1.96 standard deviations of the differences;
* ``r``: Pearson's correlation; ``r2``: the coefficient of determination of the predictions
  (scikit-learn's ``r2_score``: 1 - residual / total sum of squares, negative when worse than
  the reference's mean).

Undefined values (a correlation of constant values) are None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = ["regression_metrics"]

KEYS = ("mae", "rmse", "bias", "loa_low", "loa_high", "r", "r2")


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of each row of ``truth``/``pred`` ``(R, n)``."""
    diff = pred - truth
    sd = diff.std(axis=1, ddof=1) if diff.shape[1] > 1 else np.full(len(diff), np.nan)
    bias = diff.mean(axis=1)
    t, p = truth - truth.mean(axis=1, keepdims=True), pred - pred.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (t * p).sum(axis=1) / np.sqrt((t * t).sum(axis=1) * (p * p).sum(axis=1))
        r2 = 1 - (diff * diff).sum(axis=1) / (t * t).sum(axis=1)
    return {"mae": np.abs(diff).mean(axis=1), "rmse": np.sqrt((diff * diff).mean(axis=1)),
            "bias": bias, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd,
            "r": r, "r2": r2}  # fmt: skip


def regression_metrics(truth: Sequence[float], pred: Sequence[float], *, n_boot: int = 1000,
                       seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Each of :data:`KEYS` as ``{"value", "low", "high"}`` (module notes), and ``n``."""
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    if t.shape != p.shape or t.size == 0:
        raise MedlensError(f"regression metrics need as many predictions as references "
                           f"({p.size} and {t.size}), at least one")  # fmt: skip
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise MedlensError("regression metrics: values that are not finite")
    point = {k: float(v[0]) for k, v in _scores(t[None], p[None]).items()}
    samples: dict[str, np.ndarray] = {}
    if n_boot > 0 and t.size > 1:
        idx = np.random.default_rng(seed).integers(0, t.size, (int(n_boot), t.size))
        samples = _scores(t[idx], p[idx])
    out: dict[str, Any] = {"n": int(t.size), "n_boot": int(n_boot)}
    for key in KEYS:
        value = point[key] if np.isfinite(point[key]) else None
        low = high = None
        if key in samples:
            finite = samples[key][np.isfinite(samples[key])]
            if finite.size:
                low, high = (float(q) for q in np.quantile(finite, [alpha / 2, 1 - alpha / 2]))
        out[key] = {"value": value, "low": low, "high": high}
    return out
