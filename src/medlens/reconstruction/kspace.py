"""Cartesian MRI physics: centred orthonormal FFTs, coil expansion and combination.

Conventions, shared by every part of :mod:`medlens.reconstruction` and by fastMRI and sigpy:
k-space is ``(..., C, H, W)`` complex (coils, readout, phase encode), images ``(..., H, W)``
complex; the 2D FFT is centred (the zero frequency in the middle of the array) and orthonormal,
so noise has the same standard deviation in both domains; undersampling keeps whole
phase-encode lines, a mask over the last axis ``W``. The forward operator of a coil-combined
image ``x`` is ``A x = M F (S x)`` (sensitivities ``S``, FFT ``F``, mask ``M``), its adjoint
``A^H y = sum_c conj(S_c) F^H (M y_c)``.
"""

from __future__ import annotations

import torch

__all__ = ["adjoint", "apply_mask", "fft2c", "forward", "ifft2c", "rss", "sense_combine"]

_AXES = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes (fastMRI's ``fft2c``)."""
    x = torch.fft.ifftshift(x, dim=_AXES)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_AXES, norm="ortho"), dim=_AXES)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT over the last two axes (fastMRI's ``ifft2c``)."""
    k = torch.fft.ifftshift(k, dim=_AXES)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_AXES, norm="ortho"), dim=_AXES)


def rss(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root sum of squares over the coil axis: the magnitude image of coil images."""
    return x.abs().pow(2).sum(dim=dim).sqrt()


def apply_mask(k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``k`` with the unmeasured phase-encode lines zeroed; ``mask`` ``(W,)`` or broadcastable."""
    return k * mask.to(k.real.dtype)


def forward(x: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``A x``: the image ``(..., H, W)`` to measured k-space ``(..., C, H, W)``."""
    k = fft2c(x.unsqueeze(-3) * maps)
    return k if mask is None else apply_mask(k, mask)


def adjoint(k: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``A^H y``: measured k-space ``(..., C, H, W)`` to one image ``(..., H, W)``."""
    if mask is not None:
        k = apply_mask(k, mask)
    return (ifft2c(k) * maps.conj()).sum(dim=-3)


def sense_combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The least-squares combination of fully sampled coil images ``(..., C, H, W)``:
    ``sum conj(S) x / sum |S|^2`` (0 where no coil sees the pixel)."""
    weight = maps.abs().pow(2).sum(dim=-3)
    combined = (coil_images * maps.conj()).sum(dim=-3)
    return torch.where(weight > 0, combined / weight.clamp(min=1e-12), torch.zeros_like(combined))
