"""Left-ventricular volumes and ejection fraction from segmented short-axis cine MRI.

The volume of the cavity at each phase is the sum over the short-axis slices of its area times
the slice spacing: the summation-of-discs (modified Simpson's) rule of cardiac MR, where each
slice stands for the slab between it and the next. End-diastole is the phase of the largest
volume and end-systole that of the smallest (the definition by volume that cine analysis uses
when the ECG trigger is not trusted); from them the end-diastolic and end-systolic volumes (EDV,
ESV), the stroke volume ``SV = EDV - ESV`` and the ejection fraction ``EF = SV / EDV``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = ["cardiac_indices", "cavity_areas", "volume_curve"]


def cavity_areas(masks: np.ndarray, spacing: Sequence[float], label: int = 1) -> np.ndarray:
    """Areas (mm^2) of ``label`` in label maps ``(t, z, y, x)``: ``(t, z)``; ``spacing`` is
    ``(dx, dy[, dz])`` in mm."""
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise MedlensError(f"label maps of shape {masks.shape}: need (time, slice, y, x)")
    pixel = float(spacing[0]) * float(spacing[1])
    return (masks == label).sum(axis=(2, 3)).astype(np.float64) * pixel


def volume_curve(areas: np.ndarray, slice_spacing: float) -> np.ndarray:
    """Volumes (ml) per phase from slice areas ``(t, z)`` in mm^2 (discs: area x spacing)."""
    if not np.isfinite(slice_spacing) or slice_spacing <= 0:
        raise MedlensError(f"slice spacing {slice_spacing} mm: the stack needs a positive one")
    return np.asarray(areas, np.float64).sum(axis=1) * float(slice_spacing) / 1000.0


def cardiac_indices(volumes: Sequence[float], phases: Sequence[int] | None = None
                    ) -> dict[str, Any]:  # fmt: skip
    """EDV, ESV, SV (ml), EF (%) and the end-diastolic and end-systolic phases of a volume curve
    (``phases``: the phase number of each volume, ``0..t-1`` by default)."""
    v = np.asarray(volumes, np.float64)
    numbers = list(range(len(v))) if phases is None else [int(p) for p in phases]
    if v.ndim != 1 or len(v) < 2 or len(numbers) != len(v):
        raise MedlensError(f"a volume curve of {v.size} value(s): EF needs at least two phases")
    if not np.isfinite(v).all() or (v < 0).any():
        raise MedlensError("volume curve with negative or missing values")
    ed, es = int(np.argmax(v)), int(np.argmin(v))
    edv, esv = float(v[ed]), float(v[es])
    if edv <= 0:
        raise MedlensError("no left ventricle found in any phase (end-diastolic volume 0)")
    return {"edv_ml": edv, "esv_ml": esv, "sv_ml": edv - esv,
            "ef_percent": 100.0 * (edv - esv) / edv,
            "ed_phase": numbers[ed], "es_phase": numbers[es]}  # fmt: skip
