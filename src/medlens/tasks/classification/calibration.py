"""Calibrated probabilities and a new site's class prior.

- **Bias-corrected temperature scaling** (Guo et al. 2017; Alexandari et al. 2020): one scalar
  ``T`` divides the log-probabilities before the softmax and one bias per class is added (the
  first class's is 0), fitted by minimising the negative log-likelihood of predictions the
  model did not train on (the tuning part of each fold: out of fold). The biases correct a
  model that favours one class (short training, label smoothing, class imbalance); Alexandari
  et al. show that this calibration is what makes prior adaptation below work. Multi-label
  outputs get a temperature per run on their logits (no bias).
- **Prior adaptation** (Saerens, Latinne and Decaestecker 2002): when a hospital's share of
  each class differs from the training set's (PneumoniaMNIST's training split has fewer normal
  images than its test split), the posteriors of unlabelled target images are re-weighted by
  the ratio of the target prior to the training prior, and the target prior is re-estimated
  from them until it settles (EM). Off unless asked for, and always recorded.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "adapt_prior",
    "apply_temperature",
    "calibrate_out_of_fold",
    "fit_calibration",
    "fit_temperature",
    "mirroring_helps",
]

_EPS = 1e-12
T_RANGE = (0.01, 100.0)


def _log_probs(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p)) if multilabel else np.log(p)


def apply_temperature(
    probs: np.ndarray, temperature: float, task: str, bias: np.ndarray | None = None
) -> np.ndarray:
    """``probs`` ``(N, K)`` with their logits divided by ``temperature`` and ``bias`` added
    (``1`` and none: unchanged)."""
    probs = np.asarray(probs, dtype=np.float64)
    no_bias = bias is None or not np.any(bias)
    if (temperature == 1.0 and no_bias) or probs.size == 0:
        return probs
    multilabel = task == "multilabel"
    z = _log_probs(probs, multilabel) / float(temperature)
    if not no_bias:
        z = z + np.asarray(bias, dtype=np.float64)
    if multilabel:
        return 1.0 / (1.0 + np.exp(-z))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, labels: np.ndarray, temperature: float, task: str,
         bias: np.ndarray | None = None) -> float:  # fmt: skip
    p = np.clip(apply_temperature(probs, temperature, task, bias), _EPS, 1 - _EPS)
    if task == "multilabel":
        y = np.asarray(labels, dtype=np.float64)
        known = np.isfinite(y) & (y >= 0)
        y = np.where(known, y, 0.0)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        return float(loss[known].mean()) if known.any() else 0.0
    index = np.asarray(labels).reshape(-1).astype(np.int64)
    return float(-np.log(p[np.arange(len(index)), index]).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, task: str) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (bounded search
    over ``log T`` in :data:`T_RANGE`); 1.0 when there is nothing to fit on."""
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] < 2:
        return 1.0
    low, high = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    found = minimize_scalar(
        lambda log_t: _nll(probs, labels, float(np.exp(log_t)), task),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    t = float(np.exp(found.x))
    return t if _nll(probs, labels, t, task) < _nll(probs, labels, 1.0, task) else 1.0


def fit_calibration(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, object]:
    """Bias-corrected temperature scaling of single-label outputs (temperature only for
    multi-label): ``{"temperature": T, "bias": [b_0 = 0, b_1, ...]}`` minimising the negative
    log-likelihood of ``labels``; no change when that does not lower it."""
    from scipy.optimize import minimize

    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1] if probs.ndim == 2 else 0
    if task == "multilabel" or probs.shape[0] < 2 or k < 2:
        return {"temperature": fit_temperature(probs, labels, task), "bias": None}
    low, high = np.log(T_RANGE[0]), np.log(T_RANGE[1])

    def loss(theta: np.ndarray) -> float:
        bias = np.concatenate([[0.0], theta[1:]])
        return _nll(probs, labels, float(np.exp(theta[0])), task, bias)

    start = np.zeros(k)
    start[0] = np.log(fit_temperature(probs, labels, task))
    bounds = [(low, high)] + [(-20.0, 20.0)] * (k - 1)
    found = minimize(loss, start, method="L-BFGS-B", bounds=bounds)
    theta = found.x if loss(found.x) < loss(start) else start
    if loss(theta) >= loss(np.zeros(k)):
        return {"temperature": 1.0, "bias": None}
    return {"temperature": float(np.exp(theta[0])), "bias": [0.0, *map(float, theta[1:])]}


def adapt_prior(
    probs: np.ndarray, train_prior: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-8
) -> tuple[np.ndarray, np.ndarray, int]:
    """Posteriors under the target's class prior, estimated from them by EM (Saerens et al.).

    Args:
        probs: calibrated posteriors ``(N, K)`` of the target images under the training prior.
        train_prior: the training set's class frequencies ``(K,)``.

    Returns:
        The adapted posteriors ``(N, K)``, the estimated target prior ``(K,)`` and the
        iterations used.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    base = np.clip(np.asarray(train_prior, dtype=np.float64), _EPS, 1.0)
    base = base / base.sum()
    prior = base.copy()
    adapted = p / p.sum(axis=1, keepdims=True)
    for step in range(1, max_iter + 1):
        weighted = p * (prior / base)
        adapted = weighted / weighted.sum(axis=1, keepdims=True)
        new = adapted.mean(axis=0)
        if np.abs(new - prior).max() < tol:
            return adapted, new, step
        prior = new
    return adapted, prior, max_iter


# ------------------------------------------------------------------ in a training run
def mirroring_helps(oof, oof_tta, tuned, data, task: str, positive, log) -> bool:
    """Whether mirroring at test time raises the out-of-fold AUC (kappa for ordinal)."""
    from medlens.metrics import classification_metrics

    labels = np.asarray(data.labels)[tuned]
    if task != "multilabel":
        labels = labels.reshape(-1).astype(int)
    key = "kappa" if task == "ordinal" else "auc"
    plain = classification_metrics(labels, oof[tuned], task, positive=positive).get(key)
    mirrored = classification_metrics(labels, oof_tta[tuned], task, positive=positive).get(key)
    if plain is None or mirrored is None:
        return False
    helps = float(mirrored) > float(plain)
    log(f"test-time mirroring: out-of-fold {key} {plain:.4f} -> {mirrored:.4f} "
        f"({'kept' if helps else 'not used'})")  # fmt: skip
    return helps


def calibrate_out_of_fold(oof: np.ndarray, tuned: np.ndarray, data, task: str, log):
    """Bias-corrected temperature scaling fitted on the out-of-fold tuning predictions; the
    calibrated predictions (thresholds are chosen on what prediction will output)."""
    from medlens.metrics import expected_calibration_error

    if not tuned.any():
        return {"temperature": 1.0, "bias": None}, oof
    labels = np.asarray(data.labels)[tuned]
    if task != "multilabel":
        labels = labels.reshape(-1).astype(int)
    fitted = fit_calibration(oof[tuned], labels, task)
    calibrated = oof.copy()
    calibrated[tuned] = apply_temperature(oof[tuned], fitted["temperature"], task, fitted["bias"])
    before = expected_calibration_error(labels, oof[tuned], task)
    after = expected_calibration_error(labels, calibrated[tuned], task)
    bias = "" if fitted["bias"] is None else " and class biases"
    log(f"calibration: temperature {fitted['temperature']:.3f}{bias} fitted out of fold "
        f"(tuning ECE {before:.3f} -> {after:.3f})")  # fmt: skip
    return fitted, calibrated
