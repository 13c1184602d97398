"""PNG, JPEG, TIFF and BMP images (grayscale and RGB), and PNG writing.

Photographic formats carry no patient geometry. medlens writes spacing and origin into a PNG text
chunk (``medlens:geometry``) so its own round trips keep them; a pixel density from other software
(often a meaningless 72 dpi) is kept in ``meta["dpi"]`` but never taken as spacing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from medlens._atomic import atomic_path
from medlens.errors import ImageReadError, MedlensError
from medlens.image import Image, Role
from medlens.io._checks import require_finite

__all__ = ["read_raster", "read_tiff", "write_png"]

_GEOMETRY_KEY = "medlens:geometry"
_MAX_INFLATION = 1100  # deflate (the strongest TIFF compression in practice) inflates ~1032x


def read_raster(path: str | Path, *, role: Role | str | None = None) -> Image:
    """Read a PNG, JPEG or BMP (or single-page TIFF) with Pillow.

    ``role=None`` takes the role :func:`write_png` stored, else intensity.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    path = Path(path)
    try:
        with PILImage.open(path) as pil:
            _check_stored_size(pil, path)
            pil.load()
            info = dict(pil.info)
            array = _to_array(pil)
    except (
        UnidentifiedImageError,
        PILImage.DecompressionBombError,  # more pixels than Pillow's limit (179 million)
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
        zlib.error,
    ) as exc:
        raise ImageReadError(f"corrupt or unreadable image ({_one_line(exc)})", path) from None
    return _make_image(array, path, info, role)


def _check_stored_size(pil, path: Path) -> None:
    """An uncompressed image needs at least one bit per pixel in the file: refuse a header that
    declares more pixels than that before Pillow allocates them all."""
    tiles = getattr(pil, "tile", None) or []
    if tiles and all(tile[0] == "raw" for tile in tiles):
        width, height = pil.size
        stored = path.stat().st_size
        if width * height > 8 * stored:
            raise ImageReadError(
                f"header declares {width}x{height} pixels, more than the {stored} bytes of the "
                "file can hold (corrupt or truncated)",
                path,
            )


def _check_tiff_size(tif, path: Path) -> None:
    """The bytes the first series declares, against what the file can hold (uncompressed) or
    inflate to (compressed): checked before tifffile allocates them."""
    series = tif.series[0]
    needed = math.prod(int(n) for n in series.shape) * np.dtype(series.dtype).itemsize
    stored = path.stat().st_size
    compressed = int(getattr(tif.pages[0], "compression", 1) or 1) != 1
    limit = stored * _MAX_INFLATION + (64 << 20) if compressed else stored
    if needed > limit:
        raise ImageReadError(
            f"declares an image of {tuple(series.shape)} {series.dtype} ({needed} bytes), more "
            f"than the {stored} bytes of the file can hold (corrupt or truncated)",
            path,
        )


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs each damaged tag it meets to stderr; the one-line error says enough."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def read_tiff(path: str | Path, *, role: Role | str = Role.INTENSITY) -> Image:
    """Read a TIFF with tifffile: 8/16/32-bit, float, multi-page stacks become volumes."""
    import tifffile

    path = Path(path)
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            _check_tiff_size(tif, path)
            array = tif.asarray()
            page = tif.pages[0]
            photometric = getattr(page, "photometric", None)
            samples = int(getattr(page, "samplesperpixel", 1))
            planar = int(getattr(page, "planarconfig", 1) or 1)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises several types for malformed files
        raise ImageReadError(f"corrupt or unreadable TIFF ({_one_line(exc)})", path) from None
    array = np.asarray(array)
    # contiguous samples: (..., y, x, s); separate planes (planarconfig 2): (..., s, y, x), which
    # was taken for a volume of ``s`` slices
    axis = -3 if planar == 2 else -1
    if samples > 1 and array.ndim >= 3 and array.shape[axis] == samples:
        array = np.moveaxis(array, axis, 0)  # -> (s, ..., y, x)
        if samples == 4 and str(photometric).endswith("RGB"):
            array = array[:3]
        return _make_image(np.ascontiguousarray(array), path, {}, role, channels=True)
    return _make_image(array, path, {}, role)


def write_png(image: Image, path: str | Path) -> Path:
    """Write a 2D image (grayscale or RGB, 8 or 16 bit) as PNG, atomically.

    Float images must be scaled by the caller: silently rounding them would lose data.
    """
    from PIL import Image as PILImage
    from PIL import PngImagePlugin

    path = Path(path)
    if image.spatial_dims != 2 or image.leading not in ((), ("channel",)):
        raise MedlensError(f"PNG holds 2D images; this one is {image.array.shape}", path)
    array = image.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise MedlensError(f"PNG holds integers; scale or cast the {array.dtype} image first", path)
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise MedlensError(f"values {lo}..{hi} do not fit a PNG (0..65535)", path)
    if image.leading == ("channel",):
        if array.shape[0] not in (3, 4) or hi > 255:
            raise MedlensError("PNG colour images need 3 or 4 channels of 8-bit values", path)
        pil = PILImage.fromarray(np.moveaxis(array, 0, -1).astype(np.uint8))
    elif hi > 255 or array.dtype == np.uint16:
        pil = PILImage.fromarray(array.astype(np.uint16))
    else:
        pil = PILImage.fromarray(array.astype(np.uint8))
    chunk = PngImagePlugin.PngInfo()
    geometry = {
        "spacing": list(image.spacing),
        "origin": list(image.origin),
        "direction": image.direction.tolist(),
        "role": image.role.value,
        "modality": image.modality,
    }
    chunk.add_text(_GEOMETRY_KEY, json.dumps(geometry))
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG", pnginfo=chunk)
    return path


def _to_array(pil) -> np.ndarray:
    mode = pil.mode
    if mode == "P":
        pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
        array = np.asarray(pil)
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
            array[..., 1], array[..., 2]
        ):
            return np.array(array[..., 0])
        return np.array(array[..., :3])
    if mode == "1":
        return np.asarray(pil, dtype=np.uint8)
    if mode in ("LA", "La"):
        return np.array(np.asarray(pil)[..., 0])
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(pil).astype(np.uint16)
    if mode == "CMYK" or mode == "YCbCr":
        pil = pil.convert("RGB")
    if mode == "RGBA":
        return np.array(np.asarray(pil)[..., :3])
    return np.array(pil)


def _make_image(
    array: np.ndarray, path: Path, info: dict, role: Role | str | None, *, channels: bool = False
) -> Image:
    if array.dtype.kind not in "biuf":  # complex or record samples (a TIFF may declare them)
        raise ImageReadError(f"{array.dtype} samples are not an image", path)
    meta: dict = {"path": str(path), "format": path.suffix.lower().lstrip(".") or "raster"}
    if "dpi" in info:
        meta["dpi"] = tuple(float(v) for v in info["dpi"])
    leading: tuple[str, ...] = ()
    if channels:
        leading = ("channel",)
    elif array.ndim == 3 and array.shape[-1] in (3, 4) and meta["format"] not in ("tif", "tiff"):
        array = np.ascontiguousarray(np.moveaxis(array[..., :3], -1, 0))
        leading = ("channel",)
    if array.ndim - len(leading) not in (2, 3):
        raise ImageReadError(f"unsupported image layout {array.shape}", path)
    require_finite(array, path)
    kwargs: dict = {}
    stored_role = None
    geometry = info.get(_GEOMETRY_KEY)
    if geometry:
        try:
            stored = json.loads(geometry)
            kwargs = {
                "spacing": tuple(stored["spacing"]),
                "origin": tuple(stored["origin"]),
                "direction": np.asarray(stored["direction"]),
                "modality": stored.get("modality"),
            }
            stored_role = stored.get("role")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            kwargs = {}
    if "spacing" not in kwargs:  # unit spacing stands in: nothing may take it for millimetres
        meta["spacing_known"] = False
    try:  # an explicit role wins over the stored one
        return Image(array, role=role or stored_role or Role.INTENSITY, leading=leading,
                     meta=meta, **kwargs)  # fmt: skip
    except (ValueError, TypeError, OverflowError):  # Image() refuses the stored geometry or role
        if not kwargs and stored_role is None:
            raise
    # damaged geometry text is ignored, as unreadable text is
    return Image(array, role=role or Role.INTENSITY, leading=leading, meta=meta)
