"""Plain-JSON summaries of images, for ``medlens info`` and for logs beside trained models.

Summaries never include identifying attributes (names, IDs, dates): they describe the voxels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.image import Image

__all__ = ["image_summary"]

_AXES = {2: ["y", "x"], 3: ["z", "y", "x"]}
_SAMPLE = 2_000_000  # voxels used for percentiles of large images


def image_summary(image: Image, *, seed: int = 0) -> dict[str, Any]:
    """Shape, geometry, orientation, modality and intensity statistics of ``image``."""
    array = image.array
    leading_axes = ["c" if name == "channel" else "t" for name in image.leading]
    out: dict[str, Any] = {
        "path": image.meta.get("path"),
        "format": image.meta.get("format"),
        "shape": list(array.shape),
        "axes": leading_axes + _AXES[image.spatial_dims],
        "dtype": str(array.dtype),
        "spatial_dims": image.spatial_dims,
        "size": list(image.size),
        "spacing": [round(v, 6) for v in image.spacing],
        "origin": [round(v, 4) for v in image.origin],
        "direction": (np.round(image.direction, 6) + 0.0).tolist(),
        "orientation": image.orientation,
        "extent_mm": [round(n * s, 3) for n, s in zip(image.size, image.spacing, strict=True)],
        "modality": image.modality,
        "role": image.role.value,
        "channels": image.num_channels,
        "time_points": image.num_time_points,
    }
    if "time_points" in image.meta:
        out["time_points_s"] = [round(t, 4) for t in image.meta["time_points"]]
    for key in ("series_uid", "series_description", "transfer_syntax", "photometric",
                "window_center", "window_width", "voi_function", "pixel_spacing_source",
                "units", "suv_factor", "voi", "window"):  # fmt: skip
        if key in image.meta:
            out[key] = image.meta[key]
    if "files" in image.meta:
        out["files"] = len(image.meta["files"])
    out["intensity"] = _intensity(array, seed)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        values = np.unique(
            array if array.size <= 50_000_000 else array[:: max(1, array.shape[0] // 8)]
        )
        if values.size <= 64:
            out["unique_values"] = values.tolist()
    return out


def _intensity(array: np.ndarray, seed: int) -> dict[str, Any]:
    if array.size == 0:
        return {}
    flat = array.reshape(-1)
    if flat.dtype == bool:  # a mask: its values as 0 and 1 (percentiles need arithmetic)
        flat = flat.view(np.uint8)
    stats: dict[str, Any] = {}
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(flat)
        bad = int(flat.size - np.count_nonzero(finite))
        if bad:
            stats["non_finite"] = bad
            flat = flat[finite]
        if flat.size == 0:
            return stats
    sample = flat
    if flat.size > _SAMPLE:
        rng = np.random.default_rng(seed)
        sample = flat[rng.integers(0, flat.size, _SAMPLE)]
    low, high = np.percentile(sample, [0.5, 99.5])
    stats.update(
        {
            "min": _num(flat.min()),
            "max": _num(flat.max()),
            "mean": round(float(flat.mean(dtype=np.float64)), 4),
            "std": round(float(sample.std(dtype=np.float64)), 4),
            "p0_5": round(float(low), 4),
            "p99_5": round(float(high), 4),
        }
    )
    return stats


def _num(value: Any) -> float | int:
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, int) else round(float(value), 4)
