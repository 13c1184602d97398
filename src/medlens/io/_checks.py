"""Checks every reader applies to the arrays it returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.errors import ImageReadError

__all__ = ["require_finite"]


def require_finite(array: np.ndarray, path: str | Path, *, what: str = "image") -> np.ndarray:
    """Refuse NaN and infinite values in ``array`` (read from ``path``); return ``array``.

    Integer arrays pass at no cost. A float array is summed in float64 first (finite float32
    values cannot overflow that), so the common clean case allocates nothing; only a failing or
    overflowing sum counts the offending values for the message.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "fc" or array.size == 0:
        return array
    wide = np.complex128 if array.dtype.kind == "c" else np.float64
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(array, axis=None, dtype=wide)):
            return array
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad == 0:  # float64 values so large that their sum overflowed: all finite
        return array
    nan = int(np.count_nonzero(np.isnan(array)))
    raise ImageReadError(
        f"{what} holds {bad} non-finite values ({nan} NaN, {bad - nan} infinite) of "
        f"{array.size}: clean or mask them before use",
        path,
    )
