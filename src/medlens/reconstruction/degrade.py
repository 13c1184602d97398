"""The degradation model of super-resolution, and the interpolations it is compared with.

A low-resolution image is modelled as the high-resolution one averaged over blocks of
``factor`` pixels along each degraded axis (a rectangular slice profile as thick as the new
pixel: what a thick MR slice or a coarse detector element integrates), plus Gaussian noise.
Pixel ``i`` of the low-resolution grid is then centred on high-resolution coordinate
``i * f + (f - 1) / 2``; :func:`upsample` maps back with the same convention (``align_corners``
off), so an upsampled image lies on the high-resolution grid, pixel for pixel. Axes are array
axes of ``(N, C, *spatial)`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["degrade", "lr_shape", "upsample"]


def lr_shape(shape: Sequence[int], factors: Sequence[int]) -> list[int]:
    """The low-resolution spatial shape (whole blocks only)."""
    return [int(s) // int(f) for s, f in zip(shape, factors, strict=True)]


def degrade(x: torch.Tensor, factors: Sequence[int], *, noise: float = 0.0,
            generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """``x`` ``(N, C, *spatial)`` averaged over blocks of ``factors`` (trailing pixels that make
    no whole block are dropped), plus noise of standard deviation ``noise``."""
    n = x.ndim - 2
    if len(factors) != n or any(int(f) < 1 for f in factors):
        raise ValueError(f"factors {list(factors)}: need {n} integers >= 1")
    low = lr_shape(x.shape[2:], factors)
    keep = [slice(None), slice(None)]
    keep += [slice(0, s * int(f)) for s, f in zip(low, factors, strict=True)]
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    out = pool(x[tuple(keep)], tuple(int(f) for f in factors))
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return out


def upsample(x: torch.Tensor, factors: Sequence[int], mode: str = "cubic") -> torch.Tensor:
    """``x`` ``(N, C, *spatial)`` on the grid ``factors`` times finer: ``cubic`` (cubic spline
    interpolation, SciPy's ``zoom`` of order 3 on the pixel-edge grid, edges mirrored: in 2D the
    bicubic baseline, and the network's input) or ``nearest`` (each pixel repeated)."""
    factors = [int(f) for f in factors]
    if mode == "nearest":
        for axis, f in enumerate(factors):
            if f > 1:
                x = x.repeat_interleave(f, dim=axis + 2)
        return x
    if mode != "cubic":
        raise ValueError(f"mode {mode!r}: use cubic or nearest")
    from scipy.ndimage import zoom

    array = x.detach().cpu().numpy()
    out = zoom(array, (1, 1, *factors), order=3, grid_mode=True, mode="mirror")
    return torch.from_numpy(out.astype(array.dtype, copy=False))
