"""NumPy ``.npy`` arrays and medlens ``.npz`` images (array plus geometry, no pickles)."""

from __future__ import annotations

import json
import math
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from medlens._atomic import atomic_path
from medlens.errors import ImageReadError
from medlens.image import Image, Role
from medlens.io._checks import require_finite

__all__ = ["read_npy", "read_npz", "write_npz"]

_FORMAT = "medlens-image-1"
_FIELDS = ("array", "spacing", "origin", "direction", "role", "modality", "leading")
# What a damaged .npy or .npz raises while it is parsed (headers, zip structure, inflating).
_ARRAY_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
                 TypeError, SyntaxError, struct.error, OverflowError, MemoryError)  # fmt: skip
_MAX_INFLATION = 1100  # deflate cannot inflate more than about 1032 times


def read_npy(path: str | Path, *, role: Role | str = Role.INTENSITY) -> Image:
    """A bare array: 2D or 3D spatial, or 4D with a leading channel axis; unit spacing."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            shape, dtype = npy_header(handle, path)
            check_declared(shape, dtype, path.stat().st_size - handle.tell(), "array", path)
            handle.seek(0)
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except ImageReadError:
        raise
    except _ARRAY_ERRORS as exc:
        raise ImageReadError(f"not a readable .npy array ({_one_line(exc)})", path) from None
    return _from_bare_array(array, path, role)


def read_npz(path: str | Path, *, role: Role | str | None = None) -> Image:
    """A medlens ``.npz`` image (from :func:`write_npz`), or an archive holding one bare array."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "medlens_format" in keys:
                missing = [key for key in _FIELDS if key not in keys]
                if missing:
                    raise ImageReadError(f"medlens .npz image without {', '.join(missing)}", path)
                fields = {key: npz_member(archive, key, path) for key in keys}
            elif any(key.endswith("_images") for key in keys):
                raise ImageReadError(
                    "is a MedMNIST-style dataset (keys "
                    + ", ".join(sorted(keys))
                    + "), not one image: open it as a dataset",
                    path,
                )
            elif len(keys) == 1:
                array = npz_member(archive, keys[0], path)
                return _from_bare_array(array, path, role or Role.INTENSITY)
            else:
                raise ImageReadError(f"archive holds several arrays ({', '.join(keys)})", path)
    except ImageReadError:
        raise
    except _ARRAY_ERRORS as exc:
        raise ImageReadError(f"not a readable .npz archive ({_one_line(exc)})", path) from None
    array = require_finite(_check_numeric(fields["array"], path), path)
    try:  # the stored geometry and metadata, as write_npz wrote them (or not)
        meta = json.loads(str(fields["meta"])) if "meta" in fields else {}
        if not isinstance(meta, dict):
            raise TypeError(f"meta is a {type(meta).__name__}, not an object")
        meta.update({"path": str(path), "format": "npz"})
        return Image(
            array,
            spacing=tuple(float(v) for v in np.ravel(fields["spacing"])),
            origin=tuple(float(v) for v in np.ravel(fields["origin"])),
            direction=np.asarray(fields["direction"], dtype=np.float64),
            role=role or str(fields["role"]),
            modality=str(fields["modality"]) or None,
            leading=tuple(str(v) for v in np.ravel(fields["leading"])),
            meta=meta,
        )
    except (ValueError, TypeError, OverflowError, SystemError, UnicodeError) as exc:  # Image()
        # checks geometry with the first three; a damaged unicode array fails with the others
        raise ImageReadError(f"invalid medlens .npz image ({_one_line(exc)})", path) from None


def _check_numeric(array: np.ndarray, path: Path) -> np.ndarray:
    """Images hold booleans, integers or real numbers (not text, dates, records or complex)."""
    if array.dtype.kind not in "biuf":
        raise ImageReadError(f"array of {array.dtype} values is not an image", path)
    return array


def npy_header(handle, path: Path, what: str = "array") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header (``handle`` left at the start of the data)."""
    try:  # numpy parses the header's Python literal with tokenize and ast
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
        return tuple(int(n) for n in shape), dtype
    except (*_ARRAY_ERRORS, tokenize.TokenError, RecursionError) as exc:
        raise ImageReadError(f"{what}: unreadable .npy header ({_one_line(exc)})", path) from None


def check_declared(shape, dtype: np.dtype, available: int, what: str, path: Path) -> None:
    """Refuse an array whose header declares more bytes than the file holds (before allocating
    them: a damaged header can claim exabytes) or Python objects (never unpickled)."""
    if dtype.hasobject:
        raise ImageReadError(f"{what} holds Python objects (pickles are never loaded)", path)
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise ImageReadError(
            f"{what} declares shape {tuple(shape)} of {dtype} ({needed} bytes) but the file "
            f"holds {max(available, 0)} bytes of data",
            path,
        )


def npz_member(archive, key: str, path: Path) -> np.ndarray:
    """``archive[key]`` of an open ``np.load`` archive, its declared size checked first against
    the member's stored size, and that against what its compressed bytes can inflate to."""
    names = archive.zip.namelist()
    info = archive.zip.getinfo(key if key in names else f"{key}.npy")
    if info.file_size > info.compress_size * _MAX_INFLATION + (1 << 20):
        raise ImageReadError(
            f"archive member {key!r} claims {info.file_size} bytes from "
            f"{info.compress_size} compressed",
            path,
        )
    with archive.zip.open(info) as member:
        shape, dtype = npy_header(member, path, f"array {key!r}")
        check_declared(shape, dtype, info.file_size - member.tell(), f"array {key!r}", path)
    return archive[key]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def write_npz(image: Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write the array and its geometry; metadata goes in as JSON (never pickled)."""
    path = Path(path)
    meta = {k: v for k, v in image.meta.items() if k not in ("path", "format")}
    payload = {
        "medlens_format": np.array(_FORMAT),
        "array": image.array,
        "spacing": np.asarray(image.spacing),
        "origin": np.asarray(image.origin),
        "direction": image.direction,
        "role": np.array(image.role.value),
        "modality": np.array(image.modality or ""),
        "leading": np.array(image.leading, dtype=str),
        "meta": np.array(json.dumps(meta, default=_jsonable)),
    }
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        save(handle, **payload)
    return path


def _from_bare_array(array: np.ndarray, path: Path, role: Role | str) -> Image:
    if array.dtype == object:
        raise ImageReadError("object arrays are not images", path)
    _check_numeric(array, path)
    require_finite(array, path)
    if array.ndim in (2, 3):
        leading: tuple[str, ...] = ()
    elif array.ndim == 4:
        leading = ("channel",)
    else:
        raise ImageReadError(f"array of shape {array.shape} is not a 2D or 3D image", path)
    return Image(array, role=role, leading=leading, meta={"path": str(path), "format": "npy"})


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
