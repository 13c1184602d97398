"""Instance optimisation: an affine, then a diffeomorphic deformation, coarse to fine.

The transform maps a fixed image's world point ``p`` to the moving image's
``T(p) = A(p + D u(x))``, with ``x`` the fixed index of ``p``, ``D`` the fixed grid's direction
times spacing, ``u`` a displacement in fixed voxels (``exp`` of a stationary velocity, so no
folding) and ``A`` a world affine about the fixed image's centre. Each pyramid level runs Adam on
the similarity plus, for the deformation, ``weight`` times the diffusion (or bending energy) of
the velocity in mm. A stage whose loss turns non-finite, or that ends with a worse similarity than
it started from, raises :class:`RegistrationError` instead of returning a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medlens.errors import MedlensError
from medlens.registration.fields import (
    bending_energy,
    diffusion,
    identity_grid,
    integrate,
    resize_field,
    smoothed,
)
from medlens.registration.pyramid import Grid
from medlens.transforms._warp import apply_matrix, warp_coords

__all__ = ["RegistrationError", "Stage", "affine_stage", "deformable_stage", "moving_coords"]


class RegistrationError(MedlensError):
    """A registration that cannot run on its inputs or did not converge."""


@dataclass
class Stage:
    """What one stage did: its name, the loss per level (first, last), iterations, seconds."""

    name: str
    levels: list[dict] = field(default_factory=list)

    def record(self, shape, first, last, what: str, log: Callable[[str], None]) -> None:
        """Keep (and log) one level's similarity at its first and last step."""
        self.levels.append({"shape": list(shape), "first": first, "last": last})
        log(f"{what}: similarity {first:.4f} -> {last:.4f}")


def moving_coords(
    fixed: Grid, moving: Grid, world: np.ndarray | torch.Tensor, field_vox=None
) -> torch.Tensor:
    """Moving index coordinates ``(1, *fixed.shape, n)`` of each fixed voxel: ``world`` is the
    affine ``A`` (``(n+1, n+1)``, LPS mm), ``field_vox`` ``u`` ``(1, n, *fixed.shape)`` in fixed
    voxels, or ``None``."""
    n = len(fixed.shape)
    to_index = torch.as_tensor(np.linalg.inv(moving.matrix), dtype=torch.float64)
    world = torch.as_tensor(world, dtype=torch.float64) if not torch.is_tensor(world) else world
    pull = to_index @ world.to(torch.float64) @ torch.as_tensor(fixed.matrix, dtype=torch.float64)
    grid = identity_grid(fixed.shape)
    if field_vox is not None:
        grid = grid + field_vox.movedim(1, -1)[..., :n]
    return apply_matrix(pull.to(torch.float32)[None], grid)


def warp_moving(moving: Grid, coords: torch.Tensor):
    """The moving image at ``coords`` and the mask of the fixed voxels that fall inside it."""
    warped = warp_coords(moving.tensor, coords, padding="border")
    sizes = torch.tensor(moving.shape[::-1], dtype=coords.dtype)
    inside = ((coords > -0.5) & (coords < sizes - 0.5)).all(dim=-1)
    return warped, inside[:, None].to(warped.dtype)


def overlap(fixed: Grid, moving: Grid, world) -> float:
    """The fraction of the fixed image's voxels that ``world`` maps inside the moving image."""
    _, inside = warp_moving(moving, moving_coords(fixed, moving, world))
    return float(inside.mean())


def affine_params(n: int, centre: np.ndarray):
    """Parameters (linear part minus identity, translation in mm) and their matrix builder."""
    linear = torch.zeros(n, n, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    c = torch.as_tensor(centre, dtype=torch.float64)

    def matrix(initial: torch.Tensor) -> torch.Tensor:
        a = torch.eye(n, dtype=torch.float64) + linear
        top = torch.cat([a, (c - a @ c + shift)[:, None]], dim=1)
        local = torch.cat([top, torch.eye(n + 1, dtype=torch.float64)[n:]], dim=0)
        return local @ initial

    return linear, shift, matrix


def level_steps(iterations: int, level: int, levels: int) -> int:
    """Steps at ``level`` (0: coarsest): ``iterations`` there, halved at each finer level down
    to at least a quarter (fine levels cost up to 8x more per step and start close)."""
    return max(iterations >> min(level, 2), 1)


def affine_stage(
    levels: list[tuple[Grid, Grid, torch.Tensor | None]],
    initial: np.ndarray,
    loss: Callable,
    *,
    iterations: int = 150,
    rigid_lr: float = 0.01,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[np.ndarray, Stage]:
    """Optimise a world affine over ``levels`` (coarsest first: fixed, moving, fixed mask)."""
    fixed0 = levels[-1][0]
    n = len(fixed0.shape)
    centre = fixed0.matrix @ np.r_[(np.asarray(fixed0.shape[::-1]) - 1) / 2, 1.0]
    linear, shift, matrix = affine_params(n, centre[:n])
    start = torch.as_tensor(initial, dtype=torch.float64)
    stage = Stage("affine")
    extent = float(np.max(np.asarray(fixed0.shape[::-1]) * fixed0.spacing))
    for level, (fixed, moving, mask) in enumerate(levels):
        step = float(np.mean(fixed.spacing))
        optimiser = torch.optim.Adam(
            [{"params": [linear], "lr": rigid_lr}, {"params": [shift], "lr": 0.5 * step}]
        )
        steps = level_steps(iterations, level, len(levels))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        first = last = None
        for i in range(steps):
            optimiser.zero_grad()
            world = matrix(start)
            coords = moving_coords(fixed, moving, world)
            warped, inside = warp_moving(moving, coords)
            weight = inside if mask is None else inside * mask
            value = loss(fixed.tensor, warped, weight)
            if not torch.isfinite(value):
                raise RegistrationError(f"the affine stage diverged (level {level}, step {i})")
            value.backward()
            optimiser.step()
            schedule.step()
            first = float(value.detach()) if first is None else first
            last = float(value.detach())
        stage.record(fixed.shape, first, last, f"affine level {level + 1}/{len(levels)}", log)
        if float(torch.linalg.norm(shift.detach())) > 2 * extent:
            raise RegistrationError("the affine stage diverged (it moved the image out of view)")
    return matrix(start).detach().numpy(), stage


def deformable_stage(
    levels: list[tuple[Grid, Grid, torch.Tensor | None]],
    world: np.ndarray,
    loss: Callable,
    *,
    weight: float = 1.0,
    regulariser: str = "diffusion",
    iterations: int = 100,
    lr: float = 0.5,
    smooth: float = 0.0,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[torch.Tensor, Stage]:
    """Optimise a stationary velocity (mm) after ``world``; returns the displacement ``u`` in
    voxels of the finest fixed grid ``(1, n, *S)``. Each level's velocity lives on a grid of
    half the level's voxels per axis (its control grid: integrating there costs an eighth in 3D),
    and the integrated field is interpolated to the level."""
    regularise = {"diffusion": diffusion, "bending": bending_energy}[regulariser]
    stage = Stage(f"deformable ({regulariser}, weight {weight:g})")
    velocity = None
    scale = None  # the similarity at the start: weights mean the same for every similarity
    for level, (fixed, moving, mask) in enumerate(levels):
        n = len(fixed.shape)
        control = tuple(max(2, (s + 1) // 2) for s in fixed.shape)
        ratio = np.asarray(fixed.shape[::-1], float) / np.asarray(control[::-1], float)
        spacing_mm = fixed.spacing * ratio  # the control grid's mm per voxel, index order
        spacing = torch.as_tensor(spacing_mm, dtype=torch.float32).view(1, n, *[1] * n)
        if velocity is None:
            velocity = torch.zeros(1, n, *control)
        else:
            mode = ("linear", "bilinear", "trilinear")[n - 1]
            velocity = F.interpolate(velocity, size=control, mode=mode, align_corners=False)
        velocity = velocity.detach().requires_grad_(True)
        optimiser = torch.optim.Adam([velocity], lr=lr * float(spacing.mean()))
        first = last = None
        steps = level_steps(iterations, level, len(levels))
        for i in range(steps):
            optimiser.zero_grad()
            u = resize_field(integrate(smoothed(velocity, smooth) / spacing), fixed.shape)
            warped, inside = warp_moving(moving, moving_coords(fixed, moving, world, u))
            mask_i = inside if mask is None else inside * mask
            similarity = loss(fixed.tensor, warped, mask_i)
            if scale is None:
                scale = max(abs(float(similarity.detach())), 1e-6)
            value = similarity / scale + weight * regularise(velocity, spacing_mm)
            if not torch.isfinite(value):
                raise RegistrationError(f"the deformable stage diverged (level {level}, step {i})")
            value.backward()
            optimiser.step()
            first = float(similarity.detach()) if first is None else first
            last = float(similarity.detach())
        stage.record(fixed.shape, first, last, f"deformable level {level + 1}/{len(levels)}", log)
    assert velocity is not None
    with torch.no_grad():
        u = integrate(smoothed(velocity, smooth) / spacing)
        return resize_field(u, levels[-1][0].shape), stage
