"""Spatial transforms: affine (rotation, scaling, shear, translation), flips, 90-degree rotations,
elastic deformation and patch cropping with foreground oversampling.

Each returns a pull-back matrix (output index -> input index, float64) so that a chain of them is
resampled once. Axes are given as *tensor* spatial axes (``0`` is the first axis after the
channel: ``z`` in 3D, ``y`` in 2D), as MONAI does; matrices work in index order ``(x, y[, z])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medlens.transforms.base import Params, SpatialTransform
from medlens.transforms.batch import Batch

__all__ = ["Affine", "RandomAffine", "RandomCrop", "RandomElastic", "RandomFlip", "RandomRot90"]


def _identity(b: int, n: int) -> torch.Tensor:
    return torch.eye(n + 1, dtype=torch.float64).repeat(b, 1, 1)


def _translation(offset: torch.Tensor) -> torch.Tensor:
    b, n = offset.shape
    out = _identity(b, n)
    out[:, :n, n] = offset
    return out


def _center(in_shape: tuple[int, ...], b: int) -> torch.Tensor:
    sizes = torch.tensor(in_shape[::-1], dtype=torch.float64)
    return ((sizes - 1) / 2).expand(b, -1)


def _rotation(angles: torch.Tensor, n: int) -> torch.Tensor:
    """Rotation matrices ``(B, n, n)`` from angles in radians (3D: about x, then y, then z)."""
    b = angles.shape[0]
    if n == 2:
        c, s = torch.cos(angles[:, 0]), torch.sin(angles[:, 0])
        return torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)
    out = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    for axis in range(3):  # R = Rz @ Ry @ Rx
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        i, j = [k for k in range(3) if k != axis]
        rot = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
        sign = -1.0 if axis == 1 else 1.0  # right-handed rotation about y
        rot[:, i, i], rot[:, j, j] = c, c
        rot[:, i, j], rot[:, j, i] = -sign * s, sign * s
        out = rot @ out
    return out


def _range(value: float | Sequence[float], count: int, name: str) -> torch.Tensor:
    """(count, 2) low/high from a symmetric half-width, one per axis, or explicit pairs."""
    if isinstance(value, (int, float)):
        pairs = [(-float(value), float(value))] * count
    else:
        values = list(value)
        if len(values) == count and all(isinstance(v, (int, float)) for v in values):
            pairs = [(-float(v), float(v)) for v in values]
        elif len(values) == count:
            pairs = [(float(lo), float(hi)) for lo, hi in values]
        else:
            raise ValueError(f"{name} needs one value or {count} values, got {value!r}")
    return torch.tensor(pairs, dtype=torch.float64)


def _uniform(ranges: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(b, ranges.shape[0], generator=generator, dtype=torch.float64)
    return ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0])


class Affine(SpatialTransform):
    """A fixed affine transform given as forward matrices in index coordinates.

    Args:
        forward: ``(n+1, n+1)`` or ``(B, n+1, n+1)``: where the content at input index ``q`` moves
            to (output index ``forward @ q``).
    """

    def __init__(self, forward: torch.Tensor) -> None:
        self.forward = torch.as_tensor(forward, dtype=torch.float64)

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        forward = self.forward.expand(batch.batch_size, *self.forward.shape[-2:])
        return {"forward": forward.clone()}

    def matrix(self, in_shape, params: Params, spacing: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(params["forward"])


class RandomAffine(SpatialTransform):
    """Random rotation, scaling, shear and translation about the image centre.

    Args:
        rotate: maximum rotation in degrees (one value, one per rotation axis, or (low, high)
            pairs); 3D rotates about x, y and z, 2D about one axis.
        scale: relative scaling half-range (0.1 gives factors in [0.9, 1.1]), per axis or one.
        isotropic: one scale factor for all axes.
        shear: shear half-range (fraction), applied to each off-diagonal term.
        translate: translation half-range in voxels, per axis (index order) or one.
        p: probability per sample.

    With the batch's spacing, rotation and shear happen in millimetres, so anisotropic volumes
    rotate without distortion.
    """

    def __init__(
        self,
        rotate: float | Sequence = 0.0,
        scale: float | Sequence = 0.0,
        *,
        isotropic: bool = False,
        shear: float = 0.0,
        translate: float | Sequence = 0.0,
        p: float = 1.0,
    ) -> None:
        self.rotate, self.scale, self.isotropic = rotate, scale, isotropic
        self.shear, self.translate, self.p = shear, translate, p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        n, b = batch.spatial_dims, batch.batch_size
        applied = self._coin(b, generator)
        angles = _uniform(_range(self.rotate, 1 if n == 2 else 3, "rotate"), b, generator)
        scales = 1 + _uniform(_range(self.scale, 1 if self.isotropic else n, "scale"), b, generator)
        shears = _uniform(_range(self.shear, n * (n - 1), "shear"), b, generator)
        shifts = _uniform(_range(self.translate, n, "translate"), b, generator)
        off = ~applied
        angles[off], scales[off], shears[off], shifts[off] = 0.0, 1.0, 0.0, 0.0
        return {
            "applied": applied,
            "angles_deg": angles,
            "scales": scales.expand(b, n).clone(),
            "shears": shears,
            "translation": shifts,
        }

    def matrix(self, in_shape, params: Params, spacing: torch.Tensor) -> torch.Tensor:
        b, n = params["translation"].shape
        linear = _rotation(torch.deg2rad(params["angles_deg"]), n)
        shear = torch.eye(n, dtype=torch.float64).repeat(b, 1, 1)
        k = 0
        for i in range(n):
            for j in range(n):
                if i != j:
                    shear[:, i, j] = params["shears"][:, k]
                    k += 1
        linear = linear @ torch.diag_embed(params["scales"]) @ shear
        mm = torch.diag_embed(spacing.to(torch.float64))
        linear = torch.linalg.inv(mm) @ linear @ mm  # rotate in millimetres
        center = _center(in_shape, b)
        forward = _identity(b, n)
        forward[:, :n, :n] = linear
        forward = _translation(center + params["translation"]) @ forward @ _translation(-center)
        return torch.linalg.inv(forward)


class RandomFlip(SpatialTransform):
    """Flip along each given tensor axis independently with probability ``p``."""

    def __init__(self, axes: int | Sequence[int] = 0, p: float = 0.5) -> None:
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        self.p = p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        for axis in self.axes:
            if not 0 <= axis < batch.spatial_dims:
                raise ValueError(f"flip axis {axis} out of range for {batch.spatial_dims}D data")
        flips = torch.rand(b, len(self.axes), generator=generator) < self.p
        return {"applied": flips.any(dim=1), "flips": flips}

    def matrix(self, in_shape, params: Params, spacing: torch.Tensor) -> torch.Tensor:
        n = len(in_shape)
        flips = params["flips"]
        out = _identity(flips.shape[0], n)
        for k, axis in enumerate(self.axes):
            index_axis = n - 1 - axis
            flip = flips[:, k]
            out[flip, index_axis, index_axis] = -1.0
            out[flip, index_axis, n] = in_shape[axis] - 1
        return out


class RandomRot90(SpatialTransform):
    """Rotate by a random multiple of 90 degrees in the plane of two tensor axes (square plane)."""

    def __init__(self, axes: tuple[int, int] = (-2, -1), p: float = 0.5) -> None:
        self.axes, self.p = tuple(axes), p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        n, b = batch.spatial_dims, batch.batch_size
        a1, a2 = (a % n for a in self.axes)
        shape = batch.spatial_shape
        turns = torch.randint(1, 4, (b,), generator=generator)
        applied = self._coin(b, generator)
        if shape[a1] != shape[a2]:
            turns = (turns // 2) * 2  # quarter turns need a square plane: only half turns here
        turns[~applied] = 0
        return {"applied": applied & (turns > 0), "turns": turns}

    def matrix(self, in_shape, params: Params, spacing: torch.Tensor) -> torch.Tensor:
        n = len(in_shape)
        turns = params["turns"]
        b = turns.shape[0]
        i, j = (n - 1 - (a % n) for a in self.axes)
        angles = turns.to(torch.float64) * (math.pi / 2)
        forward = _identity(b, n)
        c, s = torch.round(torch.cos(angles)), torch.round(torch.sin(angles))
        forward[:, i, i], forward[:, j, j] = c, c
        forward[:, i, j], forward[:, j, i] = -s, s
        center = _center(in_shape, b)
        forward = _translation(center) @ forward @ _translation(-center)
        return torch.linalg.inv(forward)


class RandomElastic(SpatialTransform):
    """Smooth random deformation: a coarse grid of random displacements, cubically upsampled.

    Args:
        magnitude: standard deviation of the control-point displacements, in voxels.
        control_points: control points per axis (fewer: smoother, larger-scale deformation).
        p: probability per sample.
    """

    invertible = False

    def __init__(self, magnitude: float = 4.0, control_points: int = 6, p: float = 1.0) -> None:
        if control_points < 2:
            raise ValueError("control_points must be at least 2")
        self.magnitude, self.control_points, self.p = magnitude, control_points, p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        n, b = batch.spatial_dims, batch.batch_size
        applied = self._coin(b, generator)
        grid = torch.randn(b, n, *([self.control_points] * n), generator=generator)
        grid = grid * self.magnitude * applied.view(b, *([1] * (n + 1)))
        return {"applied": applied, "control": grid}

    def matrix(self, in_shape, params: Params, spacing: torch.Tensor) -> torch.Tensor:
        return _identity(params["control"].shape[0], len(in_shape))

    def displacement(self, out_shape, params: Params) -> torch.Tensor:
        control = params["control"]
        mode = "bicubic" if len(out_shape) == 2 else "trilinear"
        field = F.interpolate(control, size=tuple(out_shape), mode=mode, align_corners=True)
        if len(out_shape) == 3:  # smooth the trilinear kinks with a second, coarser pass
            field = F.avg_pool3d(field, 3, stride=1, padding=1, count_include_pad=False)
        return field


class RandomCrop(SpatialTransform):
    """Crop patches of ``size``, centred on foreground with probability ``foreground``.

    Foreground is any non-zero voxel of the label field ``label`` (or one of ``classes``; in any
    frame of a time series), drawn uniformly; other patches are placed uniformly at random.
    Volumes smaller than the patch are padded with zeros around the centre. Put it first in a
    chain: it looks at the batch as given.
    """

    def __init__(
        self,
        size: Sequence[int],
        *,
        foreground: float = 1 / 3,
        label: str = "label",
        classes: Sequence[int] | None = None,
    ) -> None:
        self.size = tuple(int(s) for s in size)
        self.foreground, self.label = foreground, label
        self.classes = None if classes is None else tuple(classes)

    def out_shape(self, in_shape, params: Params) -> tuple[int, ...]:
        return self.size

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        n, b = batch.spatial_dims, batch.batch_size
        shape = batch.spatial_shape
        if len(self.size) != n:
            raise ValueError(f"crop size {self.size} does not match {n}D data")
        label = batch.get(self.label)
        timed = label is not None and batch.timed(self.label)
        if label is not None and tuple(label.shape[-n:]) != tuple(shape):
            raise ValueError("RandomCrop must come before other shape-changing transforms")
        sizes = torch.tensor(shape, dtype=torch.float64)
        patch = torch.tensor(self.size, dtype=torch.float64)
        span = (sizes - patch).clamp(min=0)
        starts = torch.floor(
            torch.rand(b, n, generator=generator, dtype=torch.float64) * (span + 1)
        )
        starts = torch.where(sizes >= patch, starts, torch.floor((sizes - patch) / 2))
        use_fg = torch.rand(b, generator=generator) < self.foreground
        for i in range(b):
            if label is None or not use_fg[i]:
                continue
            values = label[i, :, 0] if timed else label[i, 0]
            mask = (
                values != 0
                if self.classes is None
                else torch.isin(values, torch.tensor(self.classes, device=label.device))
            )
            if timed:  # foreground in any frame
                mask = mask.any(dim=0)
            voxels = torch.nonzero(mask)
            if voxels.shape[0] == 0:
                use_fg[i] = False
                continue
            pick = voxels[torch.randint(voxels.shape[0], (1,), generator=generator).item()]
            start = pick.cpu().to(torch.float64) - torch.floor((patch - 1) / 2)
            inside = torch.maximum(torch.minimum(start, sizes - patch), torch.zeros(n).double())
            # along axes shorter than the patch the volume stays centred (padded evenly)
            starts[i] = torch.where(sizes >= patch, inside, starts[i])
        return {"applied": torch.ones(b, dtype=torch.bool), "start": starts, "foreground": use_fg}

    def matrix(self, in_shape, params: Params, spacing: torch.Tensor) -> torch.Tensor:
        return _translation(params["start"].flip(-1))  # tensor order -> index order
