"""Registration metrics: the deformation's regularity and landmark errors.

- :func:`jacobian_determinant` of ``x -> x + u(x)`` by central differences (one-sided at the
  edges), as Learn2Reg computes it; the determinant is the same whether ``u`` and ``x`` are
  counted in voxels or in mm, provided both are;
- :func:`folding_fraction`: the share of voxels where it is ``<= 0`` (the map folds);
- :func:`sdlogj`: the standard deviation of its logarithm (clipped to ``[1e-9, 1e9]``), the
  smoothness figure of Learn2Reg;
- :func:`target_registration_error`: distances between mapped and target landmarks, in mm and
  relative to an image's diagonal (ANHIR's rTRE).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = ["folding_fraction", "jacobian_determinant", "sdlogj", "target_registration_error"]


def jacobian_determinant(field: np.ndarray) -> np.ndarray:
    """``det(I + grad u)`` per voxel of a displacement ``(n, *S)`` (channel ``a`` along index
    axis ``a``: x first; ``S`` in array order), in voxels."""
    field = np.asarray(field, dtype=np.float64)
    n = field.shape[0]
    if field.ndim != n + 1 or n not in (2, 3):
        raise MedlensError(f"a displacement field is (n, *S) with n = 2 or 3, got {field.shape}")
    jac = np.empty((n, n, *field.shape[1:]))
    for a in range(n):  # component along index axis a
        for b in range(n):  # derivative along index axis b = array axis n - 1 - b
            axis = n - 1 - b
            if field.shape[1 + axis] < 2:
                jac[a, b] = 0.0
            else:
                jac[a, b] = np.gradient(field[a], axis=axis)
        jac[a, a] += 1.0
    if n == 2:
        return jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]
    return (
        jac[0, 0] * (jac[1, 1] * jac[2, 2] - jac[1, 2] * jac[2, 1])
        - jac[0, 1] * (jac[1, 0] * jac[2, 2] - jac[1, 2] * jac[2, 0])
        + jac[0, 2] * (jac[1, 0] * jac[2, 1] - jac[1, 1] * jac[2, 0])
    )


def _masked(values: np.ndarray, mask) -> np.ndarray:
    if mask is None:
        return values.reshape(-1)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != values.shape:
        raise MedlensError(f"mask of shape {mask.shape} for a field on {values.shape}")
    return values[mask]


def folding_fraction(field: np.ndarray, mask=None) -> float:
    """The fraction of voxels (within ``mask``) whose Jacobian determinant is ``<= 0``."""
    values = _masked(jacobian_determinant(field), mask)
    return float(np.mean(values <= 0)) if values.size else 0.0


def sdlogj(field: np.ndarray, mask=None) -> float:
    """The standard deviation of the log Jacobian determinant (within ``mask``)."""
    values = _masked(jacobian_determinant(field), mask)
    return float(np.std(np.log(np.clip(values, 1e-9, 1e9)))) if values.size else 0.0


def target_registration_error(
    mapped: np.ndarray, target: np.ndarray, *, diagonal: float | None = None
) -> dict[str, Any]:
    """Per landmark ``|mapped - target|`` (same units, mm for world points) with its mean,
    median and maximum, and divided by ``diagonal`` when given (rTRE)."""
    mapped, target = np.asarray(mapped, float), np.asarray(target, float)
    if mapped.shape != target.shape or mapped.ndim != 2:
        raise MedlensError(
            f"landmarks of shapes {mapped.shape} and {target.shape}: give matching (N, n) lists"
        )
    errors = np.linalg.norm(mapped - target, axis=1)
    out: dict[str, Any] = {
        "n": int(errors.size),
        "tre": errors.tolist(),
        "mean": float(errors.mean()) if errors.size else None,
        "median": float(np.median(errors)) if errors.size else None,
        "max": float(errors.max()) if errors.size else None,
    }
    if diagonal:
        relative = errors / float(diagonal)
        out.update(
            rtre_median=float(np.median(relative)) if errors.size else None,
            rtre_mean=float(relative.mean()) if errors.size else None,
        )
    return out
