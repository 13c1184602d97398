"""Resampling kernels: one interpolation for a whole chain of spatial transforms.

Coordinates are continuous index coordinates in index order ``(x, y[, z])`` (``x`` along the last
tensor axis) with voxel centres at integers; values outside the input are zero ("zeros" padding)
or the nearest edge value ("border").

For affine chains on the CPU the default kernel is a fused one compiled with ``torch.compile``:
it computes each output voxel's source position from the matrix and interpolates in one pass,
never materialising a sampling grid (``affine_grid`` + ``grid_sample`` spend most of their time
writing and reading that grid). It compiles once per input shape (cached on disk by Inductor) and
falls back to ``grid_sample``, which gives the same values, when compilation is unavailable or
switched off with ``MEDLENS_COMPILE=0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medlens.transforms import _compile

_STATE = _compile.STATE  # the shared compile switch (tests patch it here too)

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
    kernel = _compiled_kernel(x, out_shape, mode, padding)
    if kernel is not None:
        n = len(out_shape)
        rows = matrix[:, :n, :].to(device=x.device, dtype=torch.float32).contiguous()
        try:
            out = kernel(x, rows, out_shape)
        except Exception as exc:  # compilation can fail on machines without a C++ toolchain
            _compile.disable(exc)
        else:
            return out
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


# ---------------------------------------------------------------------------- compiled kernels
def _compiled_kernel(x: torch.Tensor, out_shape, mode: str, padding: str):
    voxels = 1
    for s in out_shape:
        voxels *= s
    if padding != "zeros" or not _compile.enabled_for(x, voxels) or len(out_shape) not in (2, 3):
        return None
    if x.dtype not in (torch.float32, torch.uint8, torch.int16, torch.int32, torch.int64):
        return None
    if x[0, 0].numel() > 1 << 24:  # flat offsets are computed exactly in float32 below 2**24
        return None
    function = {
        (3, "linear"): _linear_3d,
        (2, "linear"): _linear_2d,
        (3, "nearest"): _nearest,
        (2, "nearest"): _nearest,
    }[(len(out_shape), mode)]
    return _compile.compiled_or_none(function)


def _source_coords(rows: torch.Tensor, out_shape, device) -> list[torch.Tensor]:
    """Per index axis (x, y[, z]) the source coordinate of every output voxel, broadcastable."""
    n = len(out_shape)
    b = rows.shape[0]
    axes = []
    for k, size in enumerate(out_shape):  # tensor axis k is index axis n - 1 - k
        view = [1] * n
        view[k] = size
        axes.append(torch.arange(size, device=device, dtype=torch.float32).view(1, *view))
    index_axes = axes[::-1]  # x, y[, z]
    coords = []
    for i in range(n):
        value = rows[:, i, n].view(b, *([1] * n))
        for j in range(n):
            value = value + rows[:, i, j].view(b, *([1] * n)) * index_axes[j]
        coords.append(value)
    return coords


def _axis_terms(start: torch.Tensor, frac: torch.Tensor, size: int, stride: int):
    """Weights (zero outside the input) and flat offsets of the two neighbours along one axis.

    ``start`` is the floored coordinate as a float: the offsets stay in float32 (exact for
    indices below 2**24, which the callers check) so the vectorised arithmetic runs at full
    SIMD width and converts to integers once per corner.
    """
    low_ok = (start >= 0) & (start <= size - 1)
    high_ok = (start >= -1) & (start <= size - 2)
    weights = (torch.where(low_ok, 1 - frac, 0.0), torch.where(high_ok, frac, 0.0))
    offsets = (start.clamp(0, size - 1) * stride, (start + 1).clamp(0, size - 1) * stride)
    return weights, offsets


def _linear_3d(x: torch.Tensor, rows: torch.Tensor, out_shape: tuple[int, int, int]):
    b, c, d, h, w = x.shape
    sx, sy, sz = _source_coords(rows, out_shape, x.device)
    fx, fy, fz = sx.floor(), sy.floor(), sz.floor()
    wx, ox = _axis_terms(fx, sx - fx, w, 1)
    wy, oy = _axis_terms(fy, sy - fy, h, w)
    wz, oz = _axis_terms(fz, sz - fz, d, h * w)
    flat = x.reshape(b, c, -1)
    out = None
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                index = (oz[dz] + oy[dy] + ox[dx]).long().view(b, 1, -1).expand(b, c, -1)
                values = torch.gather(flat, 2, index).view(b, c, *out_shape)
                term = values * (wz[dz] * wy[dy] * wx[dx]).unsqueeze(1)
                out = term if out is None else out + term
    return out


def _linear_2d(x: torch.Tensor, rows: torch.Tensor, out_shape: tuple[int, int]):
    b, c, h, w = x.shape
    sx, sy = _source_coords(rows, out_shape, x.device)
    fx, fy = sx.floor(), sy.floor()
    wx, ox = _axis_terms(fx, sx - fx, w, 1)
    wy, oy = _axis_terms(fy, sy - fy, h, w)
    flat = x.reshape(b, c, -1)
    out = None
    for dy in (0, 1):
        for dx in (0, 1):
            index = (oy[dy] + ox[dx]).long().view(b, 1, -1).expand(b, c, -1)
            values = torch.gather(flat, 2, index).view(b, c, *out_shape)
            term = values * (wy[dy] * wx[dx]).unsqueeze(1)
            out = term if out is None else out + term
    return out


def _nearest(x: torch.Tensor, rows: torch.Tensor, out_shape: tuple[int, ...]):
    """Nearest neighbour; exact halves round up (``floor(c + 0.5)``, which vectorises, where
    ``grid_sample`` rounds half to even: the two differ only at exact ties)."""
    b, c = x.shape[:2]
    in_shape = x.shape[2:]
    n = len(out_shape)
    coords = _source_coords(rows, out_shape, x.device)  # x, y[, z]
    index, valid, stride = None, None, 1
    for axis in range(n):  # tensor axis n - 1 - axis holds index axis `axis`
        size = in_shape[n - 1 - axis]
        rounded = torch.floor(coords[axis] + 0.5)
        ok = (rounded >= 0) & (rounded <= size - 1)
        term = rounded.clamp(0, size - 1).long() * stride
        stride *= size
        index = term if index is None else index + term
        valid = ok if valid is None else valid & ok
    flat = x.reshape(b, c, -1)
    values = torch.gather(flat, 2, index.view(b, 1, -1).expand(b, c, -1)).view(b, c, *out_shape)
    return torch.where(valid.unsqueeze(1), values, torch.zeros((), dtype=x.dtype))
