"""Resample every field of a batch through a chain of stages at once (see :mod:`._inverse`).

Images and spatial maps are interpolated linearly, label maps by nearest neighbour (or one-hot
linear), displacement fields linearly with their vectors mapped into the output's index space,
and boxes and points are pushed forward. A time axis is folded into the channels for the warp,
so every frame of a sample moves through exactly the same sampling positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medlens.transforms import _warp
from medlens.transforms._inverse import invert_pull, pull, select
from medlens.transforms.batch import Batch

__all__ = ["pull_grid", "resample"]


def resample(batch: Batch, stages: list, label_mode: str = "nearest") -> Batch:
    """Resample every field of ``batch`` through ``stages`` (applied first to last) at once."""
    out = batch.copy()
    out_shape = stages[-1][-1]
    n = len(out_shape)
    has_field = any(stage[0] == "field" for stage in stages)
    total = None
    if not has_field:
        total = stages[0][1]
        for stage in stages[1:]:
            total = total @ stage[1]
    coords = None if total is not None else pull_grid(stages, out_shape, batch.device)

    def warp(value: torch.Tensor, mode: str) -> torch.Tensor:
        if total is not None:
            return _warp.warp_affine(value, total, out_shape, mode=mode)
        return _warp.warp_coords(value, coords, mode=mode)

    def dense(name: str, function: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        value = batch[name]
        if not batch.timed(name):
            return function(value)
        frames = value.shape[1]  # (B, T, C, *S) -> (B, T * C, *S): one warp for all frames
        return function(value.flatten(1, 2)).unflatten(1, (frames, -1))

    for name in batch.names("image"):
        out[name] = dense(name, lambda v: warp(v, "linear"))
    for name in batch.names("label"):
        if label_mode == "onehot":
            out[name] = dense(name, lambda v: _warp.onehot_linear(v, lambda w: warp(w, "linear")))
        else:
            out[name] = dense(name, lambda v: warp(v, "nearest"))
    for name in batch.names("spatial"):
        out[name] = dense(name, lambda v: warp(v, "linear"))
    for name in batch.names("displacement"):
        moved = dense(name, lambda v: warp(v, "linear"))
        out[name] = _move_vectors(moved, batch.timed(name), stages, total, coords)
    for name in batch.names("points"):
        out[name] = _push_points(stages, batch[name], n)
    for name in batch.names("boxes"):
        visible = float(batch.meta.get(f"{name}_min_visible", 0.0))
        moved, kept = _push_boxes(stages, batch[name], out_shape, has_field, visible)
        out[name] = moved
        out.meta[f"{name}_kept"] = kept
    return out


def pull_grid(stages: list, out_shape, device) -> torch.Tensor:
    """Source coordinates of every output voxel through a chain with displacement fields."""
    b = stages[0][1].shape[0]
    coords = _index_grid(out_shape, torch.float32, device)
    coords = coords.unsqueeze(0).expand(b, *coords.shape).contiguous()
    for stage in reversed(stages):
        coords = pull(stage, coords)
    return coords


def _index_grid(shape, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Index coordinates ``(*shape, n)`` in index order ``(x, y[, z])`` of every voxel."""
    axes = [torch.arange(s, dtype=dtype, device=device) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)


def _move_vectors(
    moved: torch.Tensor,
    timed: bool,
    stages: list,
    total: torch.Tensor | None,
    coords: torch.Tensor | None,
) -> torch.Tensor:
    """Map displacement vectors, already resampled to the output grid, into its index space.

    ``moved`` ``(B, [T,] n, *out)`` holds ``u(x)`` at each output voxel's source ``x``; the new
    field is ``F(x + u(x)) - y`` with ``F`` the chain's forward map (``F(x) = y``). Affine chains
    give ``L u`` with ``L`` the linear part of ``F`` (exact for flips and quarter turns); with
    displacement stages ``F`` is solved for by Newton's method, started at ``y``.
    """
    frames = moved if timed else moved.unsqueeze(1)  # (B, T, n, *out)
    n = frames.shape[2]
    if total is not None:
        linear = torch.linalg.inv(total[:, :n, :n]).to(frames.device, frames.dtype)
        out = torch.einsum("bij,btj...->bti...", linear, frames)
        return out if timed else out[:, 0]
    b, t = frames.shape[:2]
    out_shape = tuple(frames.shape[3:])
    grid = _index_grid(out_shape, torch.float64).reshape(-1, n)  # y, as x, y[, z]
    starts = grid.repeat(t, 1)
    targets = coords[:, None].to(torch.float32) + frames.movedim(2, -1).to(torch.float32)
    moved_all = []
    for k in range(b):
        points = targets[k].reshape(-1, n).to("cpu", torch.float64)  # solves run on the CPU
        single = [select(stage, k) for stage in stages]
        landed = invert_pull(single, points, guess=starts)
        vectors = (landed - starts).reshape(t, *out_shape, n).movedim(-1, 1)
        moved_all.append(vectors.to(frames.device, frames.dtype))
    out = torch.stack(moved_all)
    return out if timed else out[:, 0]


def _push_points(stages: list, points: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Where input points land in the output: invert the pull-back chain."""
    out = []
    for b, pts in enumerate(points):
        if pts.numel() == 0:
            out.append(pts.clone())
            continue
        single = [select(stage, b) for stage in stages]
        moved = invert_pull(single, pts.to("cpu", torch.float64))  # matrices live on the CPU
        out.append(moved.to(pts.device, pts.dtype))
    return out


def _push_boxes(
    stages: list, boxes: list[torch.Tensor], out_shape, has_field: bool, min_visible: float = 0.0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Move boxes: the bounding box of their moved corners (a surface lattice under fields).

    Boxes are clipped to the output's extent; those left empty, or with less than
    ``min_visible`` of their moved volume inside (``batch.meta["<name>_min_visible"]``: an
    object cut by a crop is no longer the object), are dropped, and the indices of the boxes
    kept are returned per sample so their class labels can follow.
    """
    n = len(out_shape)
    upper = torch.tensor(out_shape[::-1], dtype=torch.float64) - 0.5
    steps = torch.linspace(0, 1, 7 if has_field else 2, dtype=torch.float64)
    lattice = torch.stack(torch.meshgrid(*([steps] * n), indexing="ij"), dim=-1).reshape(-1, n)
    moved_all, kept_all = [], []
    for b, box in enumerate(boxes):
        if box.numel() == 0:
            moved_all.append(box.clone())
            kept_all.append(torch.zeros(0, dtype=torch.long))
            continue
        device = box.device
        box = box.to("cpu", torch.float64)  # matrices and fields' solves live on the CPU
        low, high = box[:, :n], box[:, n:]
        points = low[:, None, :] + lattice[None] * (high - low)[:, None, :]
        single = [select(stage, b) for stage in stages]
        moved = invert_pull(single, points.reshape(-1, n)).reshape(points.shape)
        whole_low, whole_high = moved.min(dim=1).values, moved.max(dim=1).values
        new_low = whole_low.clamp(min=-0.5).minimum(upper)
        new_high = whole_high.clamp(min=-0.5).minimum(upper)
        keep = torch.all(new_high > new_low, dim=1)
        if min_visible > 0:
            inside = (new_high - new_low).clamp(min=0).prod(dim=1)
            whole = (whole_high - whole_low).prod(dim=1).clamp(min=1e-12)
            keep &= inside / whole >= min_visible
        moved_all.append(torch.cat([new_low, new_high], dim=1)[keep].to(device, torch.float32))
        kept_all.append(torch.nonzero(keep).flatten())
    return moved_all, kept_all
