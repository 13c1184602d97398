"""Aggregating per-case segmentation records over cases (private; public via segmentation).

Each statistic ignores undefined (None / NaN) values and counts them, so a report can say "HD95
undefined in 3 of 40 cases" instead of silently averaging over fewer cases. The bootstrap
resamples cases (the unit that was sampled), never voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.metrics._bootstrap import percentile_interval
from medlens.metrics._inputs import MetricInputError
from medlens.metrics._surface import EMPTY_STATES, METRICS
from medlens.metrics.classification import _jsonable

_CHUNK_ELEMENTS = 2_000_000  # resampled indices per chunk: bounds memory at a few tens of MB


def aggregate_segmentation(
    cases: Sequence[dict[str, Any]], n_boot: int = 0, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Statistics over cases of per-case records, JSON-ready (NaN becomes None).

    Args:
        cases: records with ``case_id``, ``per_class`` and ``mean``, as
            :meth:`SegmentationMetric.update` returns them (or :func:`segmentation_metrics`
            results with a ``case_id`` added).
        n_boot: bootstrap resamples of the cases for an interval of each mean; 0 skips it.
        seed: seed of the resampling (each statistic starts a fresh generator from it, so
            values do not depend on the order of classes or metrics).
        alpha: 1 - confidence of the percentile interval.

    Returns:
        ``n_cases``, ``cases`` (the records), ``aggregate`` with ``per_class`` (name -> ``label``,
        ``n_cases``, ``empty`` counts and per metric ``{"mean", "median", "std", "n", "n_nan",
        "low", "high"}``) and ``mean`` (the same statistics of the per-case class means),
        ``bootstrap`` (settings, or None) and ``notes``.
    """
    if int(n_boot) != n_boot or n_boot < 0:
        raise MetricInputError(f"n_boot must be an integer >= 0, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise MetricInputError(f"alpha must be between 0 and 1, got {alpha}")
    if not cases:
        raise MetricInputError("no cases to aggregate")
    n_cases = len(cases)
    boot = _Bootstrap(int(n_boot), seed, alpha)
    notes: list[str] = []
    names: list[str] = []
    for case in cases:
        names += [name for name in case["per_class"] if name not in names]
    per_class: dict[str, Any] = {}
    for name in names:
        entries = [case["per_class"][name] for case in cases if name in case["per_class"]]
        metrics = [m for m in METRICS if m in entries[0]]
        states = [entry.get("empty", "none") for entry in entries]
        summary: dict[str, Any] = {
            "label": entries[0].get("label"),
            "n_cases": len(entries),
            "empty": {state: states.count(state) for state in EMPTY_STATES if state != "none"},
        }
        for metric in metrics:
            summary[metric] = boot.stats([entry.get(metric) for entry in entries])
            n_nan = summary[metric]["n_nan"]
            if n_nan:
                notes.append(
                    f"class {name!r}: {metric} undefined in {n_nan} of {len(entries)} cases "
                    "(one mask empty); left out of its statistics"
                )
        if len(entries) < n_cases:
            notes.append(
                f"class {name!r} was scored in {len(entries)} of {n_cases} cases only (absent "
                "from both masks elsewhere); pass labels= to score every class in every case"
            )
        per_class[name] = summary
    mean_metrics = [m for m in METRICS if any(m in case["mean"] for case in cases)]
    mean = {m: boot.stats([case["mean"].get(m) for case in cases]) for m in mean_metrics}
    out = {
        "n_cases": n_cases,
        "cases": list(cases),
        "aggregate": {"per_class": per_class, "mean": mean},
        "bootstrap": boot.describe(),
        "notes": notes,
    }
    return _jsonable(out)


def mean_summary(values: Sequence[Any], n_boot: int = 0, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """``mean``, ``median``, ``std``, ``n``, ``n_nan`` and the percentile bootstrap interval
    (``low``, ``high``; None for ``n_boot=0``) of the mean of per-case (or per-pair) values;
    None and NaN are counted, not averaged."""
    return _Bootstrap(int(n_boot), seed, alpha).stats(values)


class _Bootstrap:
    """Summary statistics and a percentile bootstrap interval of the mean over cases."""

    def __init__(self, n_boot: int, seed: int, alpha: float) -> None:
        self.n_boot, self.seed, self.alpha = n_boot, seed, alpha

    def describe(self) -> dict[str, Any] | None:
        if self.n_boot == 0:
            return None
        return {
            "method": "percentile",
            "unit": "case",
            "n_boot": self.n_boot,
            "confidence": 1.0 - self.alpha,
            "seed": self.seed,
        }

    def stats(self, values: Sequence[Any]) -> dict[str, Any]:
        """Mean, median, std (ddof=1), counts and interval of the defined values."""
        v = np.array([math.nan if x is None else float(x) for x in values], dtype=np.float64)
        finite = v[np.isfinite(v)]
        out: dict[str, Any] = {"n": int(finite.size), "n_nan": int(v.size - finite.size)}
        if finite.size == 0:
            return {"mean": None, "median": None, "std": None, **out, "low": None, "high": None}
        out = {
            "mean": float(finite.mean()),
            "median": float(np.median(finite)),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            **out,
        }
        low, high = self.interval(finite)
        out.update(low=low, high=high)
        return out

    def interval(self, finite: np.ndarray) -> tuple[float | None, float | None]:
        if self.n_boot == 0:
            return None, None
        rng = np.random.default_rng(self.seed)
        n = finite.size
        chunk = max(1, _CHUNK_ELEMENTS // n)
        means = []
        for start in range(0, self.n_boot, chunk):
            idx = rng.integers(0, n, size=(min(chunk, self.n_boot - start), n))
            means.append(finite[idx].mean(axis=1))
        low, high, _ = percentile_interval(np.concatenate(means), self.alpha)
        return low, high
