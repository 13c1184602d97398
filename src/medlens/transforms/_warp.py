"""Resampling kernels: one interpolation for a whole chain of spatial transforms.

Coordinates are continuous index coordinates in index order ``(x, y[, z])`` (``x`` along the last
tensor axis) with voxel centres at integers; values outside the input are zero ("zeros" padding)
or the nearest edge value ("border").

For affine chains on the CPU the default kernel is a native one (:mod:`._native`): it computes
each output voxel's source position from the matrix and interpolates in one pass, never
materialising a sampling grid (``affine_grid`` + ``grid_sample`` spend most of their time writing
and reading that grid). Elsewhere (CUDA, gradients, no C compiler, ``MEDLENS_NATIVE=0``) the
``grid_sample`` path gives the same values within float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medlens.transforms import _native

__all__ = ["affine_coords", "apply_matrix", "sample_at", "warp_affine", "warp_coords"]


def apply_matrix(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``(B, n+1, n+1)`` homogeneous matrices to points ``(B, ..., n)``."""
    n = matrix.shape[-1] - 1
    linear = matrix[:, :n, :n].to(points.dtype)
    shift = matrix[:, :n, n].to(points.dtype)
    flat = points.reshape(points.shape[0], -1, n)
    out = torch.einsum("bij,bpj->bpi", linear, flat) + shift[:, None, :]
    return out.reshape(points.shape)


def affine_coords(matrix: torch.Tensor, out_shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Source index coordinates ``(B, *out_shape, n)`` of every output voxel under ``matrix``."""
    axes = [torch.arange(s, dtype=torch.float32, device=device) for s in out_shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)  # (..., n) as x, y, z
    grid = grid.unsqueeze(0).expand(matrix.shape[0], *grid.shape)
    return apply_matrix(matrix.to(device), grid)


def warp_coords(
    x: torch.Tensor, coords: torch.Tensor, *, mode: str = "linear", padding: str = "zeros"
) -> torch.Tensor:
    """Sample ``x`` ``(B, C, *S)`` at index coordinates ``coords`` ``(B, *out, n)``."""
    in_shape = x.shape[2:]
    n = len(in_shape)
    sizes = torch.tensor(in_shape[::-1], dtype=coords.dtype, device=coords.device)
    # align_corners=False normalisation: correct for every size, including single slices
    grid = (2 * coords + 1) / sizes - 1
    torch_mode = {"linear": "bilinear", "nearest": "nearest"}[mode]
    source = x if x.is_floating_point() else x.float()
    out = F.grid_sample(
        source, grid.to(source.dtype), mode=torch_mode, padding_mode=padding, align_corners=False
    )
    if n == 3 and out.shape[2:] != coords.shape[1:4]:  # pragma: no cover - defensive
        raise RuntimeError("unexpected grid_sample output shape")
    return out if x.is_floating_point() else out.round().to(x.dtype)


def warp_affine(
    x: torch.Tensor,
    matrix: torch.Tensor,
    out_shape: tuple[int, ...] | None = None,
    *,
    mode: str = "linear",
    padding: str = "zeros",
) -> torch.Tensor:
    """Resample ``x`` ``(B, C, *S)`` through pull-back matrices ``(B, n+1, n+1)``.

    ``matrix[b]`` maps an output voxel's index coordinates to the input's. Integer inputs are
    resampled by nearest neighbour whatever ``mode`` says.
    """
    out_shape = tuple(x.shape[2:]) if out_shape is None else tuple(out_shape)
    if not x.is_floating_point():
        mode = "nearest"
    exact = index_warp(x, matrix, out_shape, padding)
    if exact is not None:
        return exact
    if padding == "zeros":
        native = _native.warp(x, matrix, out_shape, mode)
        if native is not None:
            return native
    coords = affine_coords(matrix, out_shape, device=x.device)
    return warp_coords(x, coords, mode=mode, padding=padding)


def onehot_linear(labels: torch.Tensor, warp) -> torch.Tensor:
    """Resample a label map class by class (linear on indicators) and take the argmax.

    Values outside the input become the background value 0 (its indicator is padded with ones).
    """
    values = torch.unique(labels)
    if 0 not in values:
        values = torch.cat([values.new_zeros(1), values])
    scores = []
    for value in values.tolist():
        indicator = (labels == value).to(torch.float32)
        if value == 0:  # outside the field of view counts as background
            scores.append(1 - warp(1 - indicator))
        else:
            scores.append(warp(indicator))
    best = torch.stack(scores).argmax(dim=0)
    return values.to(labels.device)[best].to(labels.dtype)


def index_warp(
    x: torch.Tensor, matrix: torch.Tensor, out_shape: tuple[int, ...], padding: str = "zeros"
) -> torch.Tensor | None:
    """Exact resampling by index selection when every matrix is a signed axis permutation with
    integer shifts (identity, flips, quarter turns, integer crops); ``None`` otherwise."""
    n = len(out_shape)
    linear = matrix[:, :n, :n]
    shift = matrix[:, :n, n]
    if not (
        torch.all((linear == 0) | (linear.abs() == 1))
        and torch.all((linear != 0).sum(dim=2) == 1)
        and torch.all((linear != 0).sum(dim=1) == 1)
        and torch.all(shift == torch.round(shift))
    ):
        return None
    in_shape = x.shape[2:]
    outs = []
    for b in range(x.shape[0]):
        source = x[b]
        order, index, valid = [], [], None
        for k, size in enumerate(out_shape):  # output tensor axis k <-> index axis n - 1 - k
            j = n - 1 - k  # output index axis
            i = int(torch.nonzero(linear[b, :, j])[0])  # the input index axis that reads it
            sign = int(linear[b, i, j])
            positions = torch.arange(size, device=x.device) * sign + int(shift[b, i])
            src_axis = n - 1 - i
            limit = in_shape[src_axis]
            ok = (positions >= 0) & (positions < limit)
            if padding == "border":
                ok = torch.ones_like(ok)
            order.append(src_axis)
            index.append(positions.clamp(0, limit - 1))
            shape = [1] * n
            shape[k] = size
            valid = ok.view(shape) if valid is None else valid & ok.view(shape)
        picked = source.permute(0, *(a + 1 for a in order))
        for k in range(n):
            picked = picked.index_select(k + 1, index[k])
        if not bool(valid.all()):
            picked = picked * valid.unsqueeze(0).to(picked.dtype)
        outs.append(picked)
    return torch.stack(outs)


def sample_at(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linearly sample ``field`` ``(B, C, *S)`` at index points ``(B, N, n)`` -> ``(B, N, C)``."""
    n = points.shape[-1]
    shaped = points.reshape(points.shape[0], points.shape[1], *([1] * (n - 1)), n)
    values = warp_coords(field, shaped, mode="linear", padding="border")
    return values.reshape(field.shape[0], field.shape[1], -1).transpose(1, 2)
