"""Displacement and velocity fields on a grid: warping, scaling and squaring, regularisers.

A field is ``(B, n, *S)``: per voxel of the fixed grid the displacement along each index axis,
channel 0 along ``x`` (the last tensor axis), in voxels of that grid, as the transform engine's
``displacement`` kind is. ``x -> x + u(x)`` maps a fixed voxel to the point it is compared with.
A stationary velocity field ``v`` becomes the diffeomorphism ``exp(v)`` by scaling and squaring
(Arsigny et al. 2006): ``u = v / 2^N``, then ``N`` times ``u <- u + u o (id + u)``; its inverse is
``exp(-v)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medlens.transforms._warp import warp_coords

__all__ = [
    "bending_energy",
    "compose",
    "diffusion",
    "identity_grid",
    "integrate",
    "resize_field",
    "smoothed",
    "warp_field",
]


def identity_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Index coordinates ``(1, *shape, n)`` in index order (x, y[, z])."""
    axes = [torch.arange(s, dtype=dtype, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)[None]


def _points(field: torch.Tensor) -> torch.Tensor:
    """``id + u`` as coordinates ``(B, *S, n)``."""
    n = field.shape[1]
    return identity_grid(field.shape[2:], field.device, field.dtype) + field.movedim(1, -1)[..., :n]


def warp_field(x: torch.Tensor, field: torch.Tensor, *, mode="linear", padding="border"):
    """``x`` ``(B, C, *S')`` sampled at ``id + field`` (the field's grid, in ``x``'s voxels)."""
    return warp_coords(x, _points(field), mode=mode, padding=padding)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The field of ``x -> y + second(y)`` with ``y = x + first(x)``, both on one grid."""
    return first + warp_field(second, first)


def integrate(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """``exp(velocity)`` by scaling and squaring in ``steps`` squarings."""
    field = velocity / (2**steps)
    for _ in range(steps):
        field = compose(field, field)
    return field


def smoothed(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """``field`` smoothed by a Gaussian of ``sigma`` voxels of its grid (0: as it is); the
    kernel reaches two standard deviations, edges repeat."""
    if sigma <= 0:
        return field
    from medlens.transforms._filters import gaussian_blur

    return gaussian_blur(field, torch.full((field.shape[0],), float(sigma)), truncate=2.0)


def resize_field(field: torch.Tensor, shape) -> torch.Tensor:
    """A field on a grid of ``shape`` covering the same extent (voxel centres aligned as
    ``align_corners=False`` does), its vectors rescaled to the new voxels."""
    shape = tuple(int(s) for s in shape)
    old = field.shape[2:]
    if tuple(old) == shape:
        return field
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    out = F.interpolate(field, size=shape, mode=mode, align_corners=False)
    scale = torch.tensor(
        [new / was for new, was in zip(shape[::-1], old[::-1], strict=True)],
        dtype=field.dtype,
        device=field.device,
    )
    return out * scale.view(1, -1, *([1] * len(shape)))


def _differences(field: torch.Tensor, spacing) -> list[torch.Tensor]:
    """Forward differences of ``field`` along each spatial axis (array order), per mm."""
    n = field.ndim - 2
    out = []
    for axis in range(n):
        d = torch.diff(field, dim=2 + axis)
        out.append(d / float(spacing[n - 1 - axis]))  # spacing in index order (x, y, z)
    return out


def diffusion(field: torch.Tensor, spacing=None) -> torch.Tensor:
    """The mean squared gradient of a field given in mm (``spacing`` in index order, mm per
    voxel; ``None``: 1)."""
    n = field.ndim - 2
    spacing = [1.0] * n if spacing is None else spacing
    return sum(d.pow(2).mean() for d in _differences(field, spacing))


def bending_energy(field: torch.Tensor, spacing=None) -> torch.Tensor:
    """The mean squared second derivatives of a field in mm (mixed terms counted twice)."""
    n = field.ndim - 2
    spacing = [1.0] * n if spacing is None else spacing
    first = _differences(field, spacing)
    total = field.new_zeros(())
    for i, d in enumerate(first):
        for j, dd in enumerate(_differences(d, spacing)):
            if j < i:
                continue
            total = total + (1 if i == j else 2) * dd.pow(2).mean()
    return total
