"""Transforms in the files other tools read: ITK ``.tfm`` affines and ITK displacement fields.

Both map a point of the fixed image (LPS millimetres) to the moving image, as ITK's resampler
expects, so ``sitk.Resample(moving, fixed, sitk.ReadTransform("affine.tfm"))`` and 3D Slicer
reproduce ``warped.nii.gz``:

- ``.tfm``: ``AffineTransform_double_N_N`` with the matrix (row by row) and translation as its
  parameters and a zero centre;
- ``displacement.nii.gz``: the vectors ``T(p) - p`` in LPS mm on the fixed grid, stored as ITK
  writes displacement fields (a 5D NIfTI ``(x, y, z, 1, n)``, intent vector, mm), which
  SimpleITK reads as a ``DisplacementFieldTransform``'s field and Slicer as a grid transform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens._atomic import atomic_path
from medlens.errors import MedlensError
from medlens.image import Image

__all__ = ["read_affine", "read_displacement", "write_affine", "write_displacement"]

_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_affine(path, matrix: np.ndarray) -> Path:
    """Write the world affine ``matrix`` ``(n+1, n+1)`` (fixed LPS -> moving LPS) as ``.tfm``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0] - 1
    values = [*matrix[:n, :n].reshape(-1), *matrix[:n, n]]
    text = (
        "#Insight Transform File V1.0\n#Transform 0\n"
        f"Transform: AffineTransform_double_{n}_{n}\n"
        f"Parameters: {' '.join(repr(float(v)) for v in values)}\n"
        f"FixedParameters: {' '.join(['0'] * n)}\n"
    )
    path = Path(path)
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
    return path


def read_affine(path) -> np.ndarray:
    """The ``(n+1, n+1)`` world matrix of an ITK affine ``.tfm`` (matrix, offset or Euler
    transforms written as ``AffineTransform``/``MatrixOffsetTransformBase``, with any centre)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MedlensError(f"cannot read the transform ({error})", path) from error
    fields = dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))
    kind = fields.get("Transform", "").strip()
    if not kind.startswith(("AffineTransform_", "MatrixOffsetTransformBase_")):
        raise MedlensError(f"transform {kind or 'missing'}: only ITK affine .tfm files", path)
    n = int(kind.rsplit("_", 1)[-1])
    try:
        values = np.array(fields["Parameters"].split(), dtype=np.float64)
        centre = np.array(fields.get("FixedParameters", "").split() or [0] * n, np.float64)
    except (KeyError, ValueError) as error:
        raise MedlensError("malformed Parameters/FixedParameters", path) from error
    if values.size != n * n + n or centre.size != n:
        raise MedlensError(f"{values.size} parameters for a {n}D affine", path)
    linear, shift = values[: n * n].reshape(n, n), values[n * n :]
    out = np.eye(n + 1)
    out[:n, :n] = linear
    out[:n, n] = shift + centre - linear @ centre
    return out


def write_displacement(path, vectors: np.ndarray, grid: Image) -> Path:
    """Write LPS-mm vectors ``(n, *grid.spatial_shape)`` (channel 0 along world x) on ``grid``
    as an ITK displacement field."""
    import nibabel as nib

    vectors = np.asarray(vectors, dtype=np.float32)
    n = grid.spatial_dims
    data = np.moveaxis(vectors, 0, -1)  # (z, y, x, n) array order
    data = np.transpose(data, (*range(n - 1, -1, -1), n))  # (x, y, z, n)
    if n == 2:
        data = data[:, :, None]
    data = data[:, :, :, None, :]  # (x, y, z, 1, n): ITK's vector layout
    affine = grid.ras_affine
    image = nib.Nifti1Image(data, affine)
    image.header.set_intent("vector")
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    path = Path(path)
    with atomic_path(path) as temporary:
        nib.save(image, str(temporary))
    return path


def read_displacement(path) -> tuple[np.ndarray, Image]:
    """The LPS-mm vectors ``(n, *S)`` and grid (an :class:`Image` of zeros) of an ITK
    displacement field NIfTI."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises several types for bad files
        raise MedlensError(f"cannot read the displacement field ({error})", path) from error
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] not in (2, 3):
        raise MedlensError(
            f"shape {data.shape}: a displacement field is (x, y, z, 1, n) as ITK writes it", path
        )
    n = data.shape[4]
    vectors = data[:, :, :, 0, :]
    if n == 2:
        if vectors.shape[2] != 1:
            raise MedlensError("a 2D displacement field must have one slice", path)
        vectors = vectors[:, :, 0]
    array = np.moveaxis(np.transpose(vectors, (*range(n - 1, -1, -1), n)), -1, 0)
    lps = _RAS @ image.affine
    grid = Image.from_affine(np.zeros(array.shape[1:], np.float32), _lps_nd(lps, n))
    return np.ascontiguousarray(array), grid


def _lps_nd(lps: np.ndarray, n: int) -> np.ndarray:
    if n == 3:
        return lps
    out = np.eye(3)
    out[:2, :2], out[:2, 2] = lps[:2, :2], lps[:2, 3]
    return out
