"""Percentile bootstrap over samples, many resamples per NumPy call (private).

Resamples are drawn in chunks of index rows and scored together by :func:`_batch.compute`. For
single-label tasks the draw is stratified by class by default (every resample keeps the class
counts of the data), so no resample loses a class. Multi-label draws resample whole rows; a draw in
which a class that had both labels in the data ends up with only one is degenerate (its AUC is
undefined) and is replaced by a fresh draw, and the number replaced is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medlens.metrics._batch import Plan, compute

_CHUNK_ELEMENTS = 2_000_000  # sample indices per chunk: bounds memory at a few tens of MB
_MAX_DRAW_FACTOR = 10  # give up after drawing this many times n_boot (and report fewer)
_DROP = ("cm", "n_pos", "n_neg")


@dataclass(frozen=True)
class BootstrapResult:
    """Metric values of the kept resamples: ``(n_used,)`` headline or ``(n_used, K)`` per class."""

    values: dict[str, np.ndarray]
    n_requested: int
    n_used: int
    n_redrawn: int
    stratified: bool


def run_bootstrap(
    plan: Plan, n_boot: int, seed: int = 0, stratified: bool = True
) -> BootstrapResult:
    """Draw ``n_boot`` non-degenerate resamples of the samples in ``plan`` and score them all."""
    prep = plan.prep
    n, k = prep.n, prep.n_classes
    stratified = stratified and prep.single_label
    if prep.single_label:
        class_counts = np.bincount(prep.y, minlength=k)
        strata = [np.flatnonzero(prep.y == j) for j in range(k) if class_counts[j]]
        full_pos, full_neg = class_counts, n - class_counts
    else:
        strata = []
        full_pos, full_neg = (prep.y == 1).sum(axis=0), (prep.y == 0).sum(axis=0)
    must_keep = (full_pos > 0) & (full_neg > 0)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    kept: list[dict[str, np.ndarray]] = []
    used = redrawn = drawn = 0
    while used < n_boot and drawn < _MAX_DRAW_FACTOR * n_boot:
        size = min(chunk, n_boot - used)
        idx = _draw(rng, n, strata if stratified else None, size)
        drawn += size
        res = compute(plan, idx)
        ok = np.all((res["n_pos"] > 0) | ~must_keep, axis=1)
        ok &= np.all((res["n_neg"] > 0) | ~must_keep, axis=1)
        redrawn += int(size - ok.sum())
        kept.append({key: v[ok] for key, v in res.items() if key not in _DROP})
        used += int(ok.sum())
    values = {key: np.concatenate([part[key] for part in kept]) for key in kept[0]} if kept else {}
    return BootstrapResult(values, n_boot, used, redrawn, stratified)


def _draw(
    rng: np.random.Generator, n: int, strata: list[np.ndarray] | None, size: int
) -> np.ndarray:
    """``(size, n)`` sample indices; with strata, each class is resampled within itself."""
    if strata is None:
        return rng.integers(0, n, size=(size, n))
    parts = [m[rng.integers(0, m.size, size=(size, m.size))] for m in strata]
    return np.concatenate(parts, axis=1)


def percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """``(low, high, n)``: the ``alpha/2`` and ``1 - alpha/2`` quantiles of the finite values."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    low, high = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), int(v.size)
