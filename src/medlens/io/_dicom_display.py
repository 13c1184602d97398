"""What a DICOM viewer shows: VOI windows and LUTs, MONOCHROME1, palettes, pixel spacing.

Projection X-ray (CR, DX, MG, XA, RF) is read by radiologists through its VOI transform (a
window or a VOI LUT) and with MONOCHROME1 inverted. :func:`presentation` applies both to modality
values and scales to [0, 1] so that brighter always means denser. Windows are computed here (the
three functions of PS3.3 C.11.2.1.2, straight to [0, 1]); VOI LUT and palette tables go through
pydicom's own implementations, with their descriptors checked first so that a bad table is
refused with one line instead of giving wrong pixels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ImageReadError

__all__ = [
    "PROJECTION_XRAY",
    "modality_lut",
    "palette_to_rgb",
    "pixel_spacing",
    "presentation",
    "window",
]

PROJECTION_XRAY = frozenset({"CR", "DX", "MG", "XA", "RF", "IO", "PX"})
_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The VOI window of PS3.3 C.11.2.1.2 mapped to [0, 1] (float32)."""
    x = np.asarray(values, dtype=np.float32)
    c, w = np.float32(center), np.float32(width)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
    # LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), 0 below and 1 above the window's edges
    span = max(float(w) - 1.0, 1e-6)
    return np.clip((x - (c - 0.5)) / np.float32(span) + 0.5, 0.0, 1.0).astype(np.float32)


def presentation(values: np.ndarray, ds, path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality values of one image (any leading frames) as the viewer shows them, in [0, 1].

    The VOI LUT Sequence wins over a window (as pydicom and most viewers do); with neither, the
    data's own range is the window. MONOCHROME1 is inverted last.
    """
    path = Path(path)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    details: dict[str, Any] = {"photometric": photometric}
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        out = _voi_lut(values, ds, path)
        details["voi"] = "VOI LUT Sequence"
    else:
        found = _window_values(ds, path)
        if found is None:
            lo, hi = float(np.min(values)), float(np.max(values))
            center, width, function = (lo + hi) / 2, max(hi - lo, 1.0), "LINEAR_EXACT"
            details["voi"] = "data range (no window in the file)"
        else:
            center, width, function = found
            details["voi"] = "window"
        details["window"] = {"center": center, "width": width, "function": function}
        out = window(values, center, width, function)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32, copy=False), details


def _window_values(ds, path: Path) -> tuple[float, float, str] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in _FUNCTIONS:
        raise ImageReadError(f"VOILUTFunction {function!r} is not one of {_FUNCTIONS}", path)
    if center is None or width is None:
        raise ImageReadError("WindowCenter or WindowWidth is not a number", path)
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ImageReadError(f"WindowWidth {width} is not a valid {function} window", path)
    return center, width, function


def _first(value) -> float | None:
    try:
        number = float(value[0] if not isinstance(value, (str, bytes, float, int)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _voi_lut(values: np.ndarray, ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[0]
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(
            "VOI LUT without a readable LUT Descriptor and LUT Data", path
        ) from None
    entries = entries or 65536  # 0 means 2^16 entries
    if isinstance(data, (bytes, bytearray)):  # LUT Data as OW
        data = np.frombuffer(data, dtype="<u2" if bits > 8 else np.uint8)
    count = len(data)
    if count != entries:
        raise ImageReadError(
            f"VOI LUT descriptor says {entries} entries but the table holds {count}", path
        )
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi < first or lo > first + entries - 1:
        raise ImageReadError(
            f"VOI LUT covers values {first}..{first + entries - 1}, the image holds "
            f"{lo:g}..{hi:g}: it does not belong to this image",
            path,
        )
    values = np.asarray(values)
    if values.dtype.kind == "f":  # the table is indexed by whole values (PS3.3 C.11.2.1.1)
        values = np.floor(values).astype(np.int64)
    try:
        out = apply_voi(values, ds)
    except Exception as exc:  # pydicom's table checks
        raise ImageReadError(f"cannot apply the VOI LUT ({exc})", path) from None
    top = float(2 ** min(max(bits, 1), 16) - 1)
    table_max = float(np.max(np.asarray(data))) if count else top
    scale = top if table_max <= top else table_max  # some writers misstate the bit depth
    return (np.asarray(out, dtype=np.float32) / np.float32(scale)).clip(0.0, 1.0)


def modality_lut(stored: np.ndarray, ds, path: str | Path) -> np.ndarray:
    """Stored values through the Modality LUT Sequence (pydicom's), its descriptor checked."""
    from pydicom.pixels import apply_modality_lut

    item = ds.ModalityLUTSequence[0]
    try:
        entries = int(item.LUTDescriptor[0]) or 65536
        data = item.LUTData
    except (AttributeError, TypeError, ValueError, IndexError):
        raise ImageReadError("Modality LUT without a readable descriptor and data", path) from None
    count = len(data) // 2 if isinstance(data, (bytes, bytearray)) else len(data)
    if count != entries:
        raise ImageReadError(
            f"Modality LUT descriptor says {entries} entries but the table holds {count}", path
        )
    try:
        return np.asarray(apply_modality_lut(np.asarray(stored), ds))
    except Exception as exc:  # pydicom's table checks
        raise ImageReadError(f"cannot apply the Modality LUT ({exc})", path) from None


def palette_to_rgb(indices: np.ndarray, ds, path: str | Path) -> np.ndarray:
    """PALETTE COLOR indices ``(..., y, x)`` to RGB ``(..., y, x, 3)`` through the file's LUT."""
    from pydicom.pixels import apply_color_lut

    path = Path(path)
    for colour in ("Red", "Green", "Blue"):
        descriptor = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
        if descriptor is None or len(descriptor) != 3:
            raise ImageReadError(f"palette colour image without a valid {colour} descriptor", path)
        bits = int(descriptor[2])
        if bits not in (8, 16):
            raise ImageReadError(
                f"{colour} palette descriptor gives {bits} bits per entry (8 or 16 allowed)", path
            )
    try:
        return np.asarray(apply_color_lut(np.asarray(indices), ds))
    except Exception as exc:  # pydicom's palette checks: lengths, segments
        text = " ".join(str(exc).split())[:200]
        raise ImageReadError(f"cannot apply the colour palette ({text})", path) from None


def pixel_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """``((dy, dx) in mm, source)`` of a 2D acquisition, patient-plane spacing first.

    Projection X-ray without PixelSpacing has ImagerPixelSpacing at the detector: divided by the
    Estimated Radiographic Magnification Factor it becomes the spacing at the patient. Ultrasound
    gives physical spacing per region (cm) in the Sequence of Ultrasound Regions.
    """
    spacing = _pair(ds.get("PixelSpacing"))
    if spacing is not None:
        return spacing, "PixelSpacing"
    imager = _pair(ds.get("ImagerPixelSpacing"))
    if imager is not None:
        factor = _first(ds.get("EstimatedRadiographicMagnificationFactor")) if (
            "EstimatedRadiographicMagnificationFactor" in ds) else None  # fmt: skip
        if factor is not None and factor > 0:
            return (imager[0] / factor, imager[1] / factor), (
                "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"
            )
        return imager, "ImagerPixelSpacing (at the detector: no magnification factor)"
    regions = ds.get("SequenceOfUltrasoundRegions")
    for region in regions or ():
        if (
            int(region.get("PhysicalUnitsXDirection", 0) or 0) == 3
            and int(region.get("PhysicalUnitsYDirection", 0) or 0) == 3
        ):  # centimetres
            dx, dy = _first(region.get("PhysicalDeltaX")), _first(region.get("PhysicalDeltaY"))
            if dx and dy and dx > 0 and dy > 0:
                return (abs(dy) * 10.0, abs(dx) * 10.0), "SequenceOfUltrasoundRegions (cm)"
    return None, "none (pixels)"


def _pair(value) -> tuple[float, float] | None:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        return None
    return a, b
