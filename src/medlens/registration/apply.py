"""Transforms applied to images, label maps and points; composed and inverted.

A :class:`WorldTransform` maps points of a fixed (reference) image's world to a moving image's,
LPS millimetres, as ITK's transforms do: a chain of affines (``.tfm``) and displacement fields
(ITK NIfTI, ``T(p) = p + u(p)``, ``u`` sampled linearly on its grid, constant beyond it), applied
in the order given (the first maps the reference's points). Resampling pulls every reference voxel
through the chain; points and boxes of the moving image go the other way, through the inverse
(exact for affines, Newton's method for fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.registration.register import on_grid
from medlens.registration.transform_io import read_affine, read_displacement

__all__ = ["INTERPOLATIONS", "WorldTransform", "index_points", "read_transform", "resample_through"]

INTERPOLATIONS = ("linear", "bspline", "nearest", "onehot")


@dataclass
class _Field:
    grid: Image  # the field's grid
    vectors: np.ndarray  # (n, *S) LPS mm

    def index_field(self) -> torch.Tensor:
        """The displacement in the grid's index units ``(1, n, *S)``, channel 0 along i."""
        n = self.grid.spatial_dims
        linear = self.grid.direction * np.asarray(self.grid.spacing)[None, :]
        flat = self.vectors.reshape(n, -1)
        index = np.linalg.solve(linear, flat).reshape(self.vectors.shape)
        return torch.from_numpy(index.astype(np.float32))[None]


@dataclass
class WorldTransform:
    """A chain of world maps (``("affine", matrix)`` or ``("field", _Field)``)."""

    steps: list

    @classmethod
    def affine(cls, matrix: np.ndarray) -> WorldTransform:
        return cls([("affine", np.asarray(matrix, dtype=np.float64))])

    @classmethod
    def field(cls, vectors: np.ndarray, grid: Image) -> WorldTransform:
        return cls([("field", _Field(grid, np.asarray(vectors, dtype=np.float64)))])

    @property
    def spatial_dims(self) -> int:
        kind, value = self.steps[0]
        return value.shape[0] - 1 if kind == "affine" else value.grid.spatial_dims

    def then(self, other: WorldTransform) -> WorldTransform:
        """This chain followed by ``other`` (points go through this one first)."""
        if other.spatial_dims != self.spatial_dims:
            raise MedlensError(f"a {self.spatial_dims}D and a {other.spatial_dims}D transform")
        return WorldTransform([*self.steps, *other.steps])

    def inverted(self) -> WorldTransform:
        """The inverse chain: affines inverted exactly, fields by Newton's method at each of
        their grid's points (on the same grid)."""
        steps = []
        for kind, value in reversed(self.steps):
            if kind == "affine":
                steps.append(("affine", np.linalg.inv(value)))
                continue
            grid = value.grid
            world = grid.index_to_world(index_points(grid.spatial_shape))
            back = WorldTransform([("field", value)]).inverse_map(world)
            vectors = (back - world).T.reshape(grid.spatial_dims, *grid.spatial_shape)
            steps.append(("field", _Field(grid, vectors)))
        return WorldTransform(steps)

    def map(self, points: np.ndarray) -> np.ndarray:
        """Reference world points ``(N, n)`` to the moving image's world."""
        from medlens.transforms._warp import sample_at

        out = np.asarray(points, dtype=np.float64)
        for kind, value in self.steps:
            if kind == "affine":
                out = out @ value[:-1, :-1].T + value[:-1, -1]
            else:
                index = value.grid.world_to_index(out)
                field = torch.from_numpy(value.vectors.astype(np.float32))[None]
                shift = sample_at(field, torch.from_numpy(index.astype(np.float32))[None])
                out = out + shift[0].double().numpy()
        return out

    def inverse_map(self, points: np.ndarray) -> np.ndarray:
        """Moving world points ``(N, n)`` to the reference's (the inverse, step by step)."""
        from medlens.transforms._inverse import invert_pull

        out = np.asarray(points, dtype=np.float64)
        for kind, value in reversed(self.steps):
            if kind == "affine":
                out = (out - value[:-1, -1]) @ np.linalg.inv(value[:-1, :-1]).T
                continue
            n = value.grid.spatial_dims
            stage = ("field", torch.eye(n + 1)[None], value.index_field(), None)
            target = torch.from_numpy(value.grid.world_to_index(out))  # (N, n) float64
            index = invert_pull([stage], target).numpy()
            out = value.grid.index_to_world(index)
        return out


def index_points(shape) -> np.ndarray:
    """Index coordinates ``(N, n)`` (x first) of every voxel of an array ``shape``, in the
    array's (C) order."""
    axes = [np.arange(s, dtype=np.float64) for s in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij")[::-1], axis=-1).reshape(-1, len(axes))


def read_transform(path) -> WorldTransform:
    """A ``.tfm`` affine, an ITK displacement field NIfTI, or a ``medlens register`` output
    folder (its ``displacement.nii.gz``: the whole transform)."""
    path = Path(path)
    if path.is_dir():
        path = path / "displacement.nii.gz"
    if not path.exists():
        raise MedlensError("no such transform", path)
    if path.suffix.lower() == ".tfm":
        return WorldTransform.affine(read_affine(path))
    if path.name.lower().endswith((".nii", ".nii.gz")):
        vectors, grid = read_displacement(path)
        return WorldTransform.field(vectors, grid)
    raise MedlensError("not a transform: use a .tfm, a displacement .nii.gz or a run folder", path)


def resample_through(
    transform: WorldTransform, image: Image, reference: Image, interpolation: str = "linear"
) -> Image:
    """``image`` (on the moving world) on ``reference``'s grid through ``transform``:
    ``linear``, ``bspline`` (cubic), ``nearest``, or ``onehot`` (each label linearly, then the
    most likely: labels without staircases). Outside the moving image: 0."""
    if interpolation not in INTERPOLATIONS:
        raise MedlensError(f"interpolation {interpolation!r}: use {', '.join(INTERPOLATIONS)}")
    if image.spatial_dims != reference.spatial_dims or transform.spatial_dims != image.spatial_dims:
        raise MedlensError(
            f"a {image.spatial_dims}D image, a {reference.spatial_dims}D reference and a "
            f"{transform.spatial_dims}D transform"
        )
    n = reference.spatial_dims
    shape = reference.spatial_shape
    array = np.asarray(image.array)
    channels = array.reshape(-1, *image.spatial_shape)
    out = np.zeros((channels.shape[0], *shape), dtype=np.float32)
    labels = interpolation in ("nearest", "onehot")
    step = max(1, 2_000_000 // max(1, int(np.prod(shape[1:]))))  # slabs of ~2 M voxels
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        index = index_points((stop - start, *shape[1:]))
        index[:, -1] += start  # the slab's first array axis is the last index axis
        moved = image.world_to_index(transform.map(reference.index_to_world(index)))
        inside = np.all((moved > -0.5) & (moved < np.asarray(image.size) - 0.5), axis=1)
        coords = moved[:, ::-1].T  # array order for scipy
        for c, channel in enumerate(channels):
            out[c, start:stop] = _sample(channel, coords, inside, interpolation).reshape(
                stop - start, *shape[1:]
            )
    result = out.reshape(*array.shape[: array.ndim - n], *shape)
    if np.issubdtype(array.dtype, np.integer) or (labels and array.dtype == bool):
        info = np.iinfo(array.dtype) if array.dtype != bool else np.iinfo(np.uint8)
        result = np.clip(np.rint(result), info.min, info.max).astype(array.dtype)
    return on_grid(result, reference, image)


def _sample(channel: np.ndarray, coords: np.ndarray, inside: np.ndarray, how: str) -> np.ndarray:
    """``channel`` at ``coords`` (array order, ``(n, N)``), 0 outside."""
    from scipy.ndimage import map_coordinates

    if how != "onehot":
        order = {"linear": 1, "bspline": 3, "nearest": 0}[how]
        values = map_coordinates(channel.astype(np.float64), coords, order=order, mode="nearest")
        return np.where(inside, values, 0.0)
    chosen = np.zeros(coords.shape[1])
    score = np.full(coords.shape[1], -np.inf)
    for value in np.unique(channel):
        indicator = (channel == value).astype(np.float32)
        p = map_coordinates(indicator, coords, order=1, mode="nearest")
        p = np.where(inside, p, 1.0 if value == 0 else 0.0)  # outside is background
        better = p > score
        chosen[better], score[better] = value, p[better]
    return chosen
