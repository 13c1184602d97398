"""Separable linear operators with per-sample weights, and smooth polynomial fields.

A 1D linear operator along an axis of length ``L`` (a Gaussian filter, a down- then upsampling) is
applied as a product with an ``(L, L)`` matrix per sample, the boundary rule folded into the
matrix. On the CPU one batched matrix product per axis beats a depthwise convolution with
per-sample kernels several times over (the convolution streams the volume once per tap and
needs a padded copy), and it handles any kernel width and any boundary rule the same way. Past
``DENSE_LIMIT`` voxels along an axis the dense product costs more than it saves, and filters
fall back to one multiply-add per tap on an edge-extended copy.

Taps follow :func:`scipy.ndimage.gaussian_filter` (radius ``int(truncate * sigma + 0.5)``, same
boundary modes), so results match it to float precision; resize matrices reproduce
:func:`torch.nn.functional.interpolate`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

__all__ = [
    "DENSE_LIMIT",
    "MODES",
    "apply_along",
    "band_matrices",
    "filter_axis",
    "gaussian_blur",
    "gaussian_kernels",
    "monomials",
    "polynomial_field",
    "resize_matrix",
]

MODES = ("nearest", "reflect", "mirror", "constant")
DENSE_LIMIT = 256


def gaussian_kernels(
    sigma: torch.Tensor, *, truncate: float = 4.0, radius: int | None = None
) -> torch.Tensor:
    """Normalised Gaussian taps ``(N, 2r+1)`` (float64) for ``N`` standard deviations in voxels.

    Each kernel is cut at its own radius ``int(truncate * sigma + 0.5)`` as SciPy does and padded
    with zero taps to the common radius (the largest, or ``radius``). A zero sigma gives the
    identity kernel.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    own = torch.floor(truncate * sigma + 0.5)
    if radius is None:
        radius = int(own.max()) if sigma.numel() else 0
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-12)[:, None]) ** 2)
    taps = torch.where(offsets.abs() <= own[:, None], taps, 0.0)
    return taps / taps.sum(dim=1, keepdim=True)


def _source_index(index: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Where an out-of-range index reads from under a boundary mode (``-1``: a zero)."""
    if mode == "nearest":
        return index.clamp(0, length - 1)
    if mode == "constant":
        return torch.where((index >= 0) & (index < length), index, -1)
    if mode == "reflect":  # d c b a | a b c d | d c b a  (half-sample symmetric)
        period = 2 * length
        index = index % period
        return torch.where(index >= length, period - 1 - index, index)
    if mode == "mirror":  # d c b | a b c d | c b a  (whole-sample symmetric)
        if length == 1:
            return torch.zeros_like(index)
        period = 2 * length - 2
        index = index % period
        return torch.where(index >= length, period - index, index)
    raise ValueError(f"unknown boundary mode {mode!r}; choose from {MODES}")


def band_matrices(kernels: torch.Tensor, length: int, mode: str = "nearest") -> torch.Tensor:
    """``(N, L, L)`` matrices ``A`` with ``(A @ x)[i] = sum_t k[t] x[i + t - r]`` under ``mode``."""
    n, size = kernels.shape
    radius = size // 2
    rows = torch.arange(length)[:, None]
    source = _source_index(rows + torch.arange(-radius, radius + 1)[None], length, mode)
    weights = kernels[:, None, :].expand(n, length, size)
    if mode == "constant":
        weights = weights * (source >= 0)
        source = source.clamp(min=0)
    out = torch.zeros(n, length, length, dtype=kernels.dtype)
    return out.scatter_add_(2, source.expand(n, length, size), weights)


def apply_along(x: torch.Tensor, matrices: torch.Tensor, axis: int) -> torch.Tensor:
    """``out[.., i, ..] = sum_j M[b, i, j] * x[.., j, ..]`` along tensor ``axis``, per sample.

    ``matrices`` is ``(B, L_out, L_in)``; one batched matrix product, no padding or gathering.
    (An infinite value reaches the whole line through the zero weights, where a convolution
    would spread it over the kernel's width only.)
    """
    b, length = x.shape[0], x.shape[axis]
    size = matrices.shape[1]
    matrices = matrices.to(x.device, x.dtype)
    shape = (*x.shape[:axis], size, *x.shape[axis + 1 :])
    pre = math.prod(x.shape[1:axis])
    post = math.prod(x.shape[axis + 1 :])
    if post == 1:  # the last axis: rows times the transposed matrix
        return torch.bmm(x.reshape(b, -1, length), matrices.transpose(1, 2)).view(shape)
    view = x.reshape(b, pre, length, post)
    if pre == 1:
        return torch.bmm(matrices, view[:, 0]).view(shape)
    parts = [torch.bmm(matrices[i].expand(pre, size, length), view[i]) for i in range(b)]
    return torch.stack(parts).view(shape)


def filter_axis(x: torch.Tensor, kernels: torch.Tensor, axis: int, mode: str = "nearest"):
    """Correlate ``x`` ``(B, C, *S)`` along tensor ``axis`` with per-sample taps ``(B, K)``."""
    length = x.shape[axis]
    if length > DENSE_LIMIT and length > kernels.shape[1]:
        return _filter_taps(x, kernels, axis, mode)
    return apply_along(x, band_matrices(kernels, length, mode), axis)


def resize_matrix(length: int, size: int, mode: str, dtype=torch.float32) -> torch.Tensor:
    """``(size, length)`` matrix of :func:`torch.nn.functional.interpolate` along one axis.

    Modes: ``nearest`` (``nearest-exact``), ``area``, ``linear`` and ``cubic`` (bicubic's 1D
    weights), all with ``align_corners=False``. Built by resizing unit impulses, so it reproduces
    PyTorch's weights and index rounding exactly; the N-D resizes are products of these.
    """
    impulses = torch.eye(length, dtype=dtype).view(length, 1, length)
    if mode == "cubic":
        out = F.interpolate(impulses[:, :, None], size=(1, size), mode="bicubic")[:, 0, 0]
    else:
        mode = {"nearest": "nearest-exact"}.get(mode, mode)
        out = F.interpolate(impulses, size=size, mode=mode)[:, 0]
    return out.T.contiguous()


def _filter_taps(x: torch.Tensor, kernels: torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """The same filter as one multiply-add per tap (for long axes)."""
    b, length = x.shape[0], x.shape[axis]
    size = kernels.shape[1]
    radius = size // 2
    source = _source_index(torch.arange(-radius, length + radius), length, mode)
    if mode == "constant":
        zero_shape = list(x.shape)
        zero_shape[axis] = 1
        padded = torch.cat([x, x.new_zeros(zero_shape)], dim=axis)
        source = torch.where(source < 0, length, source)
    else:
        padded = x
    padded = padded.index_select(axis, source.to(x.device))
    weights = kernels.to(x.device, x.dtype).view(b, *([1] * (x.ndim - 1)), size)
    out = padded.narrow(axis, 0, length) * weights[..., 0]
    for t in range(1, size):
        out.addcmul_(padded.narrow(axis, t, length), weights[..., t])
    return out


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor, *, truncate: float = 4.0, mode: str = "nearest"
) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` ``(B, C, *S)`` with per-sample sigmas in voxels.

    Args:
        sigma: ``(B,)`` (one per sample) or ``(B, ndim)`` (per sample and tensor axis), any
            device; zero leaves an axis as it is.
        truncate: kernel radius in standard deviations, as in SciPy.
        mode: boundary rule, SciPy's name: ``nearest`` (edge repeats), ``reflect``, ``mirror``
            or ``constant`` (zeros).
    """
    if mode not in MODES:
        raise ValueError(f"unknown boundary mode {mode!r}; choose from {MODES}")
    ndim = x.ndim - 2
    sigma = torch.as_tensor(sigma, dtype=torch.float64).cpu()
    sigma = sigma.reshape(x.shape[0], -1).expand(x.shape[0], ndim)
    out = x
    for k in range(ndim):
        column = sigma[:, k]
        if not bool((column > 0).any()):
            continue
        out = filter_axis(out, gaussian_kernels(column, truncate=truncate), 2 + k, mode)
    return out


def monomials(order: int, ndim: int) -> list[tuple[int, ...]]:
    """Exponents of the monomials of total degree at most ``order`` in ``ndim`` variables."""

    def rest(left: int, count: int) -> list[tuple[int, ...]]:
        if count == 0:
            return [()]
        return [(e, *tail) for e in range(left + 1) for tail in rest(left - e, count - 1)]

    return rest(order, ndim)


def polynomial_field(
    coefficients: torch.Tensor,
    exponents: Sequence[tuple[int, ...]],
    shape: Sequence[int],
    *,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """``sum_m c[b, m] * prod_k u_k ** e[m][k]`` on a grid ``(B, 1, *shape)``.

    ``u_k`` runs over ``[-1, 1]`` along tensor axis ``k``. The sum is contracted one axis at a
    time (a small tensor product), so the cost is a few passes over the output, not one per term.
    """
    b = coefficients.shape[0]
    ndim = len(shape)
    order = max((max(e) for e in exponents), default=0)
    dense = torch.zeros(b, *([order + 1] * ndim), dtype=torch.float64)
    for m, exponent in enumerate(exponents):
        dense[(slice(None), *exponent)] = coefficients[:, m].to(torch.float64)
    field = dense.to(device, dtype)
    powers = torch.arange(order + 1, device=device, dtype=dtype)
    for k, size in enumerate(shape):  # contract the exponent of axis k against its grid
        grid = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype) if size > 1 else None
        if grid is None:
            grid = torch.zeros(1, device=device, dtype=dtype)
        vander = grid[:, None] ** powers  # (size, order + 1); 0 ** 0 == 1
        field = torch.tensordot(field, vander, dims=([1 + k], [1]))  # exponent axis -> last
        field = field.movedim(-1, 1 + k)
    return field.unsqueeze(1)


_POOL: list = []


def seeded_normal(
    shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise; sample ``b`` from its own generator seeded by ``(seed, b)``.

    The values depend only on the seed and the sample's index, not on the number of threads: on
    the CPU samples are drawn in parallel (one generator draws on one core, and torch releases
    the GIL), which halves the time of a single ``torch.randn`` over the batch on two cores.
    """
    out = torch.empty(shape, device=device, dtype=dtype)

    def fill(index: int) -> None:
        generator = torch.Generator(device=device)
        generator.manual_seed((seed + index * 0x9E3779B97F4A7C15) % (1 << 63))
        out[index].normal_(generator=generator)

    workers = min(shape[0], os.cpu_count() or 1) if device.type == "cpu" else 1
    if workers > 1 and out[0].numel() >= 1 << 15:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1))
        list(_POOL[0].map(fill, range(shape[0])))
    else:
        for index in range(shape[0]):
            fill(index)
    return out
