"""Pulling coordinates through a chain of resampling stages, and pushing points forward.

A *stage* is ``("affine", matrix, out_shape)`` or ``("field", matrix, displacement, out_shape)``:
it maps an output index coordinate ``y`` to the input's, ``matrix @ (y + displacement(y))``. A
chain's pull-back is what resampling needs; where points, boxes and displacement vectors land is
its inverse, solved here (exactly for affine chains, by Newton's method with fields).
"""

from __future__ import annotations

import torch

from medlens.transforms import _warp

__all__ = ["collapse", "invert_pull", "pull", "pull_chain", "select"]


def pull(stage, coords: torch.Tensor) -> torch.Tensor:
    """Map coordinates in a stage's output space to its input space."""
    if stage[0] == "field":
        field = stage[2].to(coords.device, torch.float32)
        n = coords.shape[-1]
        flat = coords.reshape(coords.shape[0], -1, n)
        shift = _warp.sample_at(field, flat)
        coords = (flat + shift).reshape(coords.shape)
    return _warp.apply_matrix(stage[1].to(coords.device), coords)


def select(stage, b: int):
    if stage[0] == "field":
        return ("field", stage[1][b : b + 1], stage[2][b : b + 1], stage[3])
    return ("affine", stage[1][b : b + 1], stage[2])


def invert_pull(
    stages: list, points: torch.Tensor, guess: torch.Tensor | None = None
) -> torch.Tensor:
    """Solve pull(y) = points for y: exact for affine chains, Newton's method with fields.

    ``guess`` (same shape as ``points``) starts the iterations with fields (the inverse of the
    chain's affine part otherwise): a good one (for displacement vectors, the voxel whose pull
    the vector starts from) saves most of them.

    A plain fixed-point iteration converges only where the field's Jacobian has spectral radius
    below one; strong (still invertible) deformations exceed that, so the steps here use the
    chain's Jacobian (central differences) and are halved where they would not reduce the error.
    Points in folded regions, which have no proper inverse, keep their best estimate.
    """
    total = stages[0][1]
    for stage in stages[1:]:
        total = total @ stage[1]
    inverse = torch.linalg.inv(total[0].to(torch.float64))
    n = points.shape[-1]
    affine_guess = points @ inverse[:n, :n].T + inverse[:n, n]
    if all(stage[0] == "affine" for stage in stages):
        return affine_guess
    guess = affine_guess if guess is None else guess.to(torch.float64).clone()
    stages = collapse(stages)
    residual = points - pull_chain(stages, guess)
    active = torch.arange(points.shape[0])
    for _ in range(40):
        error = residual[active].norm(dim=-1)
        active, error = active[error >= 1e-4], error[error >= 1e-4]
        if active.numel() == 0:
            break
        start, target = guess[active], points[active]
        step = _newton_step(stages, start, residual[active], inverse[:n, :n])
        for _ in range(10):
            trial = start + step
            trial_residual = target - pull_chain(stages, trial)
            better = trial_residual.norm(dim=-1) < error
            if bool(better.all()):
                break
            step = torch.where(better[:, None], step, step / 2)
        guess[active[better]] = trial[better]
        residual[active[better]] = trial_residual[better]
        active = active[better]  # those that cannot improve any more stop here
    return guess


def _newton_step(
    stages: list, guess: torch.Tensor, residual: torch.Tensor, linear_inverse: torch.Tensor
) -> torch.Tensor:
    """Solve ``J step = residual`` with the pull chain's Jacobian ``J`` at each point (central
    differences); the affine part's inverse stands in where ``J`` is singular."""
    n = guess.shape[-1]
    h = 1e-2
    columns = []
    for k in range(n):
        offset = torch.zeros(n, dtype=guess.dtype)
        offset[k] = h
        ahead, behind = pull_chain(stages, guess + offset), pull_chain(stages, guess - offset)
        columns.append((ahead - behind) / (2 * h))
    jacobian = torch.stack(columns, dim=-1)  # (N, n, n): d pull_i / d y_k
    rows = jacobian.unbind(dim=1)
    if n == 2:  # Cramer's rule: much faster than a batched LAPACK call for tiny systems
        (a, b), (c, d) = rows[0].unbind(-1), rows[1].unbind(-1)
        det = a * d - b * c
        step = torch.stack([d * residual[:, 0] - b * residual[:, 1],
                            a * residual[:, 1] - c * residual[:, 0]], dim=-1)  # fmt: skip
    else:
        cofactors = [
            torch.linalg.cross(rows[1], rows[2]),
            torch.linalg.cross(rows[2], rows[0]),
            torch.linalg.cross(rows[0], rows[1]),
        ]
        det = (rows[0] * cofactors[0]).sum(dim=-1)
        step = sum(c * residual[:, k, None] for k, c in enumerate(cofactors))
    fallback = residual @ linear_inverse.T
    usable = det.abs() > 1e-6
    return torch.where(usable[:, None], step / torch.where(usable, det, 1.0)[:, None], fallback)


def collapse(stages: list) -> list:
    """The same pull with each run of affine stages multiplied into one matrix (into the next
    field stage's matrix where one follows): fewer steps for the iterations above."""
    out, run, last = [], None, None
    for stage in stages:
        if stage[0] == "affine":
            run, last = (stage[1] if run is None else run @ stage[1]), stage
            continue
        if run is not None:
            stage = ("field", run @ stage[1], stage[2], stage[3])
            run = None
        out.append(stage)
    if run is not None:
        out.append(("affine", run, last[2]))
    return out


def pull_chain(stages: list, points: torch.Tensor) -> torch.Tensor:
    coords = points[None].to(torch.float32)
    for stage in reversed(stages):
        coords = pull(stage, coords)
    return coords[0].to(torch.float64)
