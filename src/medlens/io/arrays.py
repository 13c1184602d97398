"""NumPy ``.npy`` arrays and medlens ``.npz`` images (array plus geometry, no pickles)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from medlens._atomic import atomic_path
from medlens.errors import ImageReadError
from medlens.image import Image, Role
from medlens.io._checks import require_finite

__all__ = ["read_npy", "read_npz", "write_npz"]

_FORMAT = "medlens-image-1"


def read_npy(path: str | Path, *, role: Role | str = Role.INTENSITY) -> Image:
    """A bare array: 2D or 3D spatial, or 4D with a leading channel axis; unit spacing."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"not a readable .npy array ({exc})", path) from None
    return _from_bare_array(array, path, role)


def read_npz(path: str | Path, *, role: Role | str | None = None) -> Image:
    """A medlens ``.npz`` image (from :func:`write_npz`), or an archive holding one bare array."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "medlens_format" in keys:
                fields = {key: archive[key] for key in keys}
            elif any(key.endswith("_images") for key in keys):
                raise ImageReadError(
                    "is a MedMNIST-style dataset (keys "
                    + ", ".join(sorted(keys))
                    + "), not one image: open it as a dataset",
                    path,
                )
            elif len(keys) == 1:
                return _from_bare_array(archive[keys[0]], path, role or Role.INTENSITY)
            else:
                raise ImageReadError(f"archive holds several arrays ({', '.join(keys)})", path)
    except ImageReadError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ImageReadError(f"not a readable .npz archive ({exc})", path) from None
    meta = json.loads(str(fields["meta"])) if "meta" in fields else {}
    meta.update({"path": str(path), "format": "npz"})
    modality = str(fields["modality"]) or None
    return Image(
        require_finite(fields["array"], path),
        spacing=tuple(fields["spacing"]),
        origin=tuple(fields["origin"]),
        direction=fields["direction"],
        role=role or str(fields["role"]),
        modality=modality,
        leading=tuple(str(v) for v in fields["leading"]),
        meta=meta,
    )


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
