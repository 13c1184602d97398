"""Training losses of reconstructions: SSIM as fastMRI computes it, differentiable, and L1.

:func:`ssim_map` follows fastMRI's ``SSIMLoss`` (a 7x7 uniform window, ``k1=0.01``,
``k2=0.03``, the sample covariance's ``n / (n - 1)``), which matches scikit-image's
``structural_similarity`` with its defaults on the valid region; ``data_range`` is each image's
reference maximum, as fastMRI scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reconstruction_loss", "ssim_map"]


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor, *, window: int = 7,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:  # fmt: skip
    """The SSIM of magnitude images ``x`` and ``y`` ``(B, H, W)`` per valid pixel,
    ``(B, H - window + 1, W - window + 1)``; ``data_range`` ``(B,)``."""
    kernel = torch.ones(1, 1, window, window, dtype=x.dtype, device=x.device) / window**2
    n = window * window
    cov = n / (n - 1)
    x, y = x[:, None], y[:, None]
    ux, uy = F.conv2d(x, kernel), F.conv2d(y, kernel)
    uxx, uyy, uxy = F.conv2d(x * x, kernel), F.conv2d(y * y, kernel), F.conv2d(x * y, kernel)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    r = data_range[:, None, None, None]
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s[:, 0]


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, *, l1: float = 1.0,
                        ssim: float = 1.0) -> torch.Tensor:  # fmt: skip
    """``l1 * |x - y| + ssim * (1 - SSIM)`` of the magnitudes, each image scaled by its
    reference's maximum (so every slice weighs the same whatever its intensity)."""
    x = output.abs() if output.is_complex() else output
    peak = target.flatten(1).amax(dim=1).clamp(min=1e-8)
    x, y = x / peak[:, None, None], target / peak[:, None, None]
    loss = x.new_zeros(())
    if l1:
        loss = loss + l1 * (x - y).abs().mean()
    if ssim:
        loss = loss + ssim * (1 - ssim_map(x, y, torch.ones_like(peak)).mean())
    return loss
