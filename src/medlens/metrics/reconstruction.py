"""Image quality of MRI reconstructions: NMSE, PSNR and SSIM as fastMRI defines them.

The definitions are fastMRI's (``fastmri.evaluate``), so numbers can be compared with its
leaderboard and papers:

- ``nmse = ||target - output||^2 / ||target||^2`` over the whole array;
- ``psnr``: scikit-image's ``peak_signal_noise_ratio`` with ``data_range = maxval``, by default
  the target's maximum;
- ``ssim``: the mean over slices of scikit-image's ``structural_similarity`` (7x7 window) of a
  ``(S, H, W)`` volume, ``data_range = maxval``, by default the whole volume's target maximum
  (not each slice's), so quiet edge slices are not judged on their own scale.

The metrics compare magnitude images; complex inputs are refused rather than silently reduced,
since taking the magnitude (or the real part) is a choice that changes the numbers. Values are
computed in float64. :func:`reconstruction_summary` and :func:`paired_difference` summarise
per-case records over cases with the percentile bootstrap of :func:`mean_summary`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medlens.metrics._inputs import MetricInputError, to_numpy
from medlens.metrics._seg_summary import mean_summary

__all__ = ["nmse", "paired_difference", "psnr", "reconstruction_summary", "ssim"]

_SSIM_WINDOW = 7  # scikit-image's default, fastMRI's choice


def _pair(target: Any, output: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 arrays of equal shape; complex inputs and shape mismatches refused."""
    t, o = to_numpy(target), to_numpy(output)
    for name, a in (("target", t), ("output", o)):
        if np.iscomplexobj(a):
            raise MetricInputError(
                f"{name} is complex ({a.dtype}): the metrics compare magnitude images; "
                "pass abs() of the image"
            )
    if t.shape != o.shape:
        raise MetricInputError(f"target and output differ in shape: {t.shape} and {o.shape}")
    if t.size == 0:
        raise MetricInputError(f"target and output are empty (shape {t.shape})")
    return t.astype(np.float64, copy=False), o.astype(np.float64, copy=False)


def _maxval(t: np.ndarray, maxval: float | None) -> float:
    """The data range: the caller's, or the target's maximum; must be positive."""
    value = float(t.max()) if maxval is None else float(maxval)
    if not value > 0 or not math.isfinite(value):
        where = "the target's maximum" if maxval is None else "maxval"
        raise MetricInputError(f"{where} is {value:g}: the data range must be positive and finite")
    return value


def nmse(target: Any, output: Any) -> float:
    """Normalised mean squared error ``||t - o||^2 / ||t||^2`` (fastMRI's NMSE).

    Scale-free, so volumes of different intensity scales compare; 0 for identical images.
    """
    t, o = _pair(target, output)
    norm = float(np.sum(t * t))
    if norm == 0.0:
        raise MetricInputError("the target is all zero: NMSE is undefined")
    return float(np.sum((t - o) ** 2) / norm)


def psnr(target: Any, output: Any, maxval: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (fastMRI's PSNR): ``maxval`` defaults to the target's
    maximum, so the number does not depend on the file's intensity scale; inf when equal."""
    t, o = _pair(target, output)
    data_range = _maxval(t, maxval)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(t, o, data_range=data_range))


def ssim(target: Any, output: Any, maxval: float | None = None) -> float:
    """Structural similarity (fastMRI's SSIM): the mean over the slices of an ``(S, H, W)``
    volume (a 2D ``(H, W)`` image is one slice) with one data range for the whole volume."""
    t, o = _pair(target, output)
    if t.ndim == 2:
        t, o = t[None], o[None]
    if t.ndim != 3:
        raise MetricInputError(f"SSIM takes an (H, W) image or (S, H, W) volume, got {t.shape}")
    if min(t.shape[1:]) < _SSIM_WINDOW:
        raise MetricInputError(
            f"slices of {t.shape[1]}x{t.shape[2]}: SSIM's {_SSIM_WINDOW}x{_SSIM_WINDOW} window "
            "needs at least 7 pixels per side"
        )
    data_range = _maxval(t, maxval)
    values = [structural_similarity(t[s], o[s], data_range=data_range) for s in range(len(t))]
    return float(np.mean(values))


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def reconstruction_summary(rows: Sequence[Mapping[str, Any]], n_boot: int = 1000,
                           seed: int = 0, *, keys: Sequence[str] | None = None,
                           alpha: float = 0.05) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per metric, the mean over cases with its percentile bootstrap interval.

    The case (a volume, a subject) is the unit that was sampled, so cases are resampled, never
    slices or pixels.

    Args:
        rows: one record per case, e.g. ``{"id": ..., "psnr": ..., "ssim": ..., "nmse": ...}``.
        n_boot: bootstrap resamples of the cases; 0 skips the interval.
        seed: seed of the resampling (each metric starts afresh from it).
        keys: the metrics to summarise; by default every key with numeric values but ``id``.
        alpha: 1 - confidence of the interval.

    Returns:
        ``{metric: mean_summary(...)}``: ``mean``, ``median``, ``std``, ``n``, ``n_nan``,
        ``low``, ``high`` (None and NaN values are counted in ``n_nan``, not averaged).
    """
    if not rows:
        raise MetricInputError("no cases to summarise")
    if keys is None:
        keys = []
        for row in rows:
            keys += [k for k, v in row.items() if k != "id" and k not in keys and _is_number(v)]
        keys = [k for k in keys if all(_is_number(row.get(k)) for row in rows)]
    out = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        if not all(_is_number(v) for v in values):
            raise MetricInputError(f"{key!r} has non-numeric values: cannot summarise it")
        out[key] = mean_summary(values, n_boot=n_boot, seed=seed, alpha=alpha)
    return out


def _by_id(rows: Sequence[Mapping[str, Any]], which: str) -> dict[Any, Mapping[str, Any]]:
    out: dict[Any, Mapping[str, Any]] = {}
    for i, row in enumerate(rows):
        if "id" not in row:
            raise MetricInputError(f"row {i} of {which} has no 'id': cases are paired by id")
        if row["id"] in out:
            raise MetricInputError(f"id {row['id']!r} appears twice in {which}")
        out[row["id"]] = row
    return out


def paired_difference(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
                      key: str, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """The mean per-case difference ``a - b`` of ``key`` with a percentile bootstrap interval.

    Pairing by case removes the between-case spread that dominates each method's own interval,
    so "medlens vs zero-filled: +4.1 dB [3.8, 4.4]" is the honest comparison.

    Args:
        rows_a, rows_b: per-case records of two methods on the same cases, each with an ``id``.
        key: the metric to compare (``"psnr"`` gives dB).
        n_boot, seed, alpha: as in :func:`reconstruction_summary`.

    Returns:
        :func:`mean_summary` of the differences, with ``key`` added.

    Raises:
        MetricInputError: when the two sets of ids differ, repeat, or are missing.
    """
    a, b = _by_id(rows_a, "rows_a"), _by_id(rows_b, "rows_b")
    if a.keys() != b.keys():
        only_a = [i for i in a if i not in b][:5]
        only_b = [i for i in b if i not in a][:5]
        raise MetricInputError(
            f"the two sets of cases differ: only in rows_a {only_a}, only in rows_b {only_b}"
        )
    if not a:
        raise MetricInputError("no cases to compare")
    diffs = []
    for case_id, row in a.items():
        va, vb = row.get(key), b[case_id].get(key)
        if not (_is_number(va) and _is_number(vb)):
            raise MetricInputError(f"case {case_id!r}: {key!r} is not numeric in both rows")
        diffs.append(None if va is None or vb is None else float(va) - float(vb))
    return {"key": key, **mean_summary(diffs, n_boot=n_boot, seed=seed, alpha=alpha)}
