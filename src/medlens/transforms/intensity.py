"""Intensity transforms on batched images (labels, boxes and points pass through)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medlens.transforms.base import IntensityTransform, Params
from medlens.transforms.batch import Batch

__all__ = ["GaussianNoise", "ZScore"]


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``(B,)`` parameter over ``(B, C, *S)``."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _spread(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = value
    return float(low), float(high)


class GaussianNoise(IntensityTransform):
    """Add zero-mean Gaussian noise with standard deviation ``std`` (a value or a range).

    The noise comes from a generator seeded from the chain's, on the images' device, so a seed
    reproduces it; only the seed is recorded.
    """

    def __init__(self, std: float | Sequence[float] = 0.1, *, mean: float = 0.0, p: float = 1.0):
        self.std, self.mean, self.p = std, mean, p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        applied = self._coin(b, generator)
        low, high = _spread(self.std)
        std = low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return {"applied": applied, "std": torch.where(applied, std, 0.0), "seed": seed}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        generator = torch.Generator(device=image.device)
        generator.manual_seed(params["seed"])
        noise = torch.randn(
            image.shape, generator=generator, device=image.device, dtype=image.dtype
        )
        std = _per_sample(params["std"], image)
        if self.mean:
            noise.add_(self.mean)
        return torch.addcmul(image, noise, std)


class ZScore(IntensityTransform):
    """Normalise each sample (and channel) to zero mean and unit standard deviation.

    Args:
        nonzero: compute the statistics over non-zero voxels only and leave zeros at zero.
        channel_wise: statistics per channel (default) or over all channels together.
        eps: floor of the standard deviation (constant images stay finite).
    """

    def __init__(self, *, nonzero: bool = False, channel_wise: bool = True, eps: float = 1e-8):
        self.nonzero, self.channel_wise, self.eps = nonzero, channel_wise, eps
        self.p = 1.0

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        dims = tuple(range(2 if self.channel_wise else 1, image.ndim))
        if not self.nonzero:
            var, mean = torch.var_mean(image, dim=dims, keepdim=True, correction=0)
            scale = torch.rsqrt(var.clamp(min=self.eps**2))
            return (image - mean) * scale
        mask = image != 0
        count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
        mean = (image * mask).sum(dim=dims, keepdim=True) / count
        var = (((image - mean) * mask) ** 2).sum(dim=dims, keepdim=True) / count
        out = (image - mean) * torch.rsqrt(var.clamp(min=self.eps**2))
        return torch.where(mask, out, torch.zeros_like(out))
