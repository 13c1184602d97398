"""The images of a registration as tensors on their physical grids, and their pyramids.

:class:`Grid` is one level of an image: its tensor ``(1, C, *S)`` and the matrix from its index
coordinates (index order ``x, y[, z]``) to LPS world millimetres. A pyramid halves each axis
longer than ``min_size`` voxels per level by averaging pairs of voxels, so the coarse voxel
``i`` sits at fine index ``2 i + 0.5`` and its matrix follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Grid", "grid_of", "pyramid"]


@dataclass
class Grid:
    """One image (or one level of it) on its grid."""

    tensor: torch.Tensor  # (1, C, *S), array order
    matrix: np.ndarray  # (n+1, n+1): index (x, y[, z]) -> LPS mm

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape[2:])

    @property
    def spacing(self) -> np.ndarray:
        """mm per voxel along each index axis (x, y[, z])."""
        n = len(self.shape)
        return np.linalg.norm(self.matrix[:n, :n], axis=0)


def grid_of(image, tensor: torch.Tensor | None = None) -> Grid:
    """The :class:`~medlens.image.Image` ``image`` as a grid (its tensor, or ``tensor``)."""
    if tensor is None:
        array = np.asarray(image.array, dtype=np.float32)
        array = array.reshape(-1, *image.spatial_shape) if image.leading else array[None]
        tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    return Grid(tensor, np.asarray(image.affine, dtype=np.float64))


def _halve(grid: Grid, axes: list[int]) -> Grid:
    """Average pairs of voxels along ``axes`` (array order); an odd last voxel is kept alone."""
    x = grid.tensor
    n = x.ndim - 2
    scale = np.eye(n + 1)
    for axis in axes:
        size = x.shape[2 + axis]
        if size % 2:
            pad = [0, 0] * n
            pad[2 * (n - 1 - axis) + 1] = 1  # F.pad lists the last axis first
            x = F.pad(x, pad, mode="replicate")
        kernel = [1] * n
        kernel[axis] = 2
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        x = pool(x, kernel_size=tuple(kernel), stride=tuple(kernel))
        index_axis = n - 1 - axis
        scale[index_axis, index_axis] = 2.0
        scale[index_axis, n] = 0.5
    return Grid(x, grid.matrix @ scale)


def pyramid(grid: Grid, levels: int, min_size: int = 16) -> list[Grid]:
    """``levels`` grids, finest first: each halves the axes still longer than ``2 * min_size``
    voxels (so coarse levels of anisotropic images first become near-isotropic)."""
    out = [grid]
    for _ in range(levels - 1):
        last = out[-1]
        spacing = last.spacing[::-1]  # array order
        axes = [
            a
            for a, s in enumerate(last.shape)
            if s >= 2 * min_size and spacing[a] < 1.9 * spacing.min()
        ]
        if not axes:
            break
        out.append(_halve(last, axes))
    return out
