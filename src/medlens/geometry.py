"""Reorientation and resampling of :class:`~medlens.image.Image` objects.

Both keep every voxel's world position: reorientation only permutes and flips axes (a view, no
interpolation); resampling maps the output grid into the input's index space with one affine and
interpolates once (linear for intensities, nearest for labels so no new label values appear).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from medlens.image import _OPPOSITE, Image, Role

__all__ = ["reorient", "resample"]


def reorient(image: Image, target: str = "RAS") -> Image:
    """Permute and flip axes so ``image.orientation == target`` (up to oblique rounding)."""
    n = image.spatial_dims
    target = target.upper()
    current = image.orientation
    if (
        len(target) != n
        or any(c not in _OPPOSITE for c in target)  # unknown letters: a clear error, not KeyError
        or sorted(_group(c) for c in target) != sorted(_group(c) for c in current)
    ):
        raise ValueError(f"cannot reorient a {n}D image with axes {current!r} to {target!r}")
    perm, flips = [], []
    for letter in target:
        axis = next(i for i, c in enumerate(current) if c in (letter, _OPPOSITE[letter]))
        perm.append(axis)
        flips.append(current[axis] != letter)
    if perm == list(range(n)) and not any(flips):
        return image

    lead = len(image.leading)
    size = image.size
    array = image.array
    for axis, flip in zip(perm, flips, strict=True):
        if flip:
            array = np.flip(array, axis=lead + n - 1 - axis)
    # new index axis t comes from old index axis perm[t]; array axes are index axes reversed.
    order = list(range(lead)) + [lead + n - 1 - perm[t] for t in reversed(range(n))]
    array = np.transpose(array, order)

    first_voxel = np.array([size[a] - 1 if f else 0 for a, f in zip(perm, flips, strict=True)])
    old_index = np.zeros(n)
    old_index[perm] = first_voxel
    origin = image.index_to_world(old_index)
    direction = image.direction[:, perm] * np.where(flips, -1.0, 1.0)[None, :]
    spacing = tuple(image.spacing[a] for a in perm)
    return image.replace(array=array, spacing=spacing, origin=tuple(origin), direction=direction)


def resample(
    image: Image,
    *,
    spacing: float | tuple[float, ...] | None = None,
    like: Image | None = None,
    shape: tuple[int, ...] | None = None,
    order: int | None = None,
    fill: float = 0.0,
) -> Image:
    """Resample ``image`` to ``spacing`` (same origin and direction) or onto ``like``'s grid.

    Args:
        spacing: target spacing in index order, one value for isotropic.
        like: an image whose grid (shape, spacing, origin, direction) the output takes.
        shape: output spatial shape ``(z, y, x)`` with ``spacing``; by default the extent is kept.
        order: spline order; default 1 (linear) for intensities and 0 (nearest) for label maps.
        fill: value outside the input's field of view.
    """
    n = image.spatial_dims
    if (spacing is None) == (like is None):
        raise ValueError("give exactly one of spacing or like")
    if order is None:
        order = 0 if image.role is Role.LABEL else 1
    if like is not None:
        if like.spatial_dims != n:
            raise ValueError(f"cannot resample a {n}D image onto a {like.spatial_dims}D grid")
        out_spacing = np.asarray(like.spacing)
        out_origin = np.asarray(like.origin)
        out_direction = like.direction
        out_shape = like.spatial_shape
    else:
        out_spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (n,)).copy()
        if np.any(out_spacing <= 0):
            raise ValueError(f"spacing must be positive, got {spacing}")
        out_origin = np.asarray(image.origin)
        out_direction = image.direction
        if shape is None:
            size = np.asarray(image.size) * np.asarray(image.spacing) / out_spacing
            shape = tuple(int(v) for v in np.maximum(np.round(size), 1).astype(int)[::-1])
        out_shape = tuple(shape)

    # output index p -> world -> input index q = matrix @ p + offset (index order)
    in_linear = image.direction * np.asarray(image.spacing)[None, :]
    out_linear = out_direction * out_spacing[None, :]
    inv_in = np.linalg.inv(in_linear)
    matrix = inv_in @ out_linear
    offset = inv_in @ (out_origin - np.asarray(image.origin))
    # scipy works in array-axis order, which is index order reversed
    matrix_arr = matrix[::-1, ::-1]
    offset_arr = offset[::-1]

    source = image.array
    if image.role is not Role.LABEL and not np.issubdtype(source.dtype, np.floating):
        source = source.astype(np.float32)
    lead_shape = source.shape[: len(image.leading)]
    flat = source.reshape((-1, *image.spatial_shape))
    out = np.empty((flat.shape[0], *out_shape), dtype=source.dtype)
    # The field of view reaches half a voxel beyond the outer voxel centres (as in ITK). SciPy's
    # "constant" mode fills everything outside the centres' box exactly, so a border voxel mapped
    # to -1e-15 by rounding became ``fill`` (resampling onto the image's own grid lost its
    # border). Interpolate with edge extension, then fill what lies outside the field of view.
    for c in range(flat.shape[0]):
        ndimage.affine_transform(
            flat[c],
            matrix_arr,
            offset=offset_arr,
            output_shape=out_shape,
            output=out[c],
            order=order,
            mode="nearest" if order > 0 else "grid-constant",
            cval=fill,
            prefilter=order > 1,
        )
    if order > 0 and not _inside_field_of_view(matrix_arr, offset_arr, out_shape, image):
        inside = ndimage.affine_transform(
            np.ones(image.spatial_shape, dtype=np.uint8),
            matrix_arr,
            offset=offset_arr,
            output_shape=out_shape,
            order=0,
            mode="grid-constant",
            cval=0,
        ).astype(bool)
        out[:, ~inside] = fill
    return image.replace(
        array=out.reshape((*lead_shape, *out_shape)),
        spacing=tuple(out_spacing),
        origin=tuple(out_origin),
        direction=np.array(out_direction),
    )


def _inside_field_of_view(matrix: np.ndarray, offset: np.ndarray, out_shape, image: Image) -> bool:
    """Whether every output voxel maps inside the input's field of view (checked at the corners,
    which suffices for an affine map into a box), so no voxel needs ``fill``."""
    corners = np.array(list(itertools.product(*[(0, size - 1) for size in out_shape])), dtype=float)
    mapped = corners @ matrix.T + offset
    limit = np.asarray(image.spatial_shape, dtype=float) - 0.5
    return bool(np.all((mapped >= -0.5 + 1e-6) & (mapped < limit - 1e-6)))


def _group(letter: str) -> str:
    return {"L": "x", "R": "x", "P": "y", "A": "y", "S": "z", "I": "z"}[letter]
