"""A small conditional U-Net that predicts the noise of a diffusion step, 2D and 3D.

``DenoisingUNet(x_t, t, labels) -> eps``: residual blocks (GroupNorm, SiLU, two 3x3
convolutions) at each level of an encoder-decoder with skip connections; the step ``t`` enters
every block through a sinusoidal embedding and an MLP (Ho et al. 2020), the class through a
learnt embedding added to it (``num_classes > 0``; ``labels=None`` or the extra index
``num_classes`` is the unconditional model, for classifier-free guidance). Spatial sizes must
divide by ``2 ** (len(features) - 1)``: MedMNIST's 28 with ``features`` of length 3, 64 with 4.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medlens.models._layers import check_spatial_dims, conv
from medlens.models.registry import register_model

__all__ = ["DenoisingUNet"]


def step_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal embedding ``(B, width)`` of integer steps ``t`` ``(B,)``."""
    half = width // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _Block(nn.Module):
    """Residual block conditioned on the step (and class) embedding."""

    def __init__(self, dims: int, cin: int, cout: int, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(min(8, cin), cin), nn.GroupNorm(min(8, cout), cout)
        self.conv1, self.conv2 = conv(dims, cin, cout, 3, bias=True), conv(dims, cout, cout, 3)
        self.embed = nn.Linear(width, cout)
        self.skip = conv(dims, cin, cout, 1, bias=True) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.embed(e).reshape(*e.shape[:1], -1, *([1] * (x.dim() - 2)))
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class DenoisingUNet(nn.Module):
    """The noise predictor of a diffusion model (module notes)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 0, *,
                 features: tuple[int, ...] = (32, 64, 128)) -> None:  # fmt: skip
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        if len(features) < 2:
            raise ValueError(f"features {features}: need at least two levels")
        self.spatial_dims, self.in_channels, self.num_classes = dims, in_channels, num_classes
        self.divisor = 2 ** (len(features) - 1)
        width = 4 * features[0]
        self.width = width
        self.step_mlp = nn.Sequential(nn.Linear(features[0], width), nn.SiLU(),
                                      nn.Linear(width, width))  # fmt: skip
        # one extra index: "no class" (classifier-free guidance drops the label to it)
        self.classes = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.stem = conv(dims, in_channels, features[0], 3, bias=True)
        self.down = nn.ModuleList(_Block(dims, features[max(i - 1, 0)], f, width)
                                  for i, f in enumerate(features))  # fmt: skip
        pool = nn.AvgPool2d if dims == 2 else nn.AvgPool3d
        self.pool = pool(2)
        self.mid = _Block(dims, features[-1], features[-1], width)
        self.up = nn.ModuleList(_Block(dims, features[i] + features[i - 1], features[i - 1], width)
                                for i in range(len(features) - 1, 0, -1))  # fmt: skip
        self.out = nn.Sequential(nn.GroupNorm(min(8, features[0]), features[0]), nn.SiLU(),
                                 conv(dims, features[0], in_channels, 3, bias=True))  # fmt: skip

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Any = None) -> torch.Tensor:
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must divide by {self.divisor}")
        e = self.step_mlp(step_embedding(t.to(x.device), self.stem.out_channels))
        if self.classes is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
            e = e + self.classes(torch.as_tensor(labels, device=x.device).long().reshape(-1))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            if i < len(self.down) - 1:
                skips.append(h)
                h = self.pool(h)
        h = self.mid(h, e)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            h = nn.functional.interpolate(h, size=skip.shape[2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), e)
        return self.out(h)


@register_model("ddpm-unet", task="generative")
def ddpm_unet(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 0,
              **kw: Any) -> DenoisingUNet:  # fmt: skip
    """The noise predictor of a (class-conditional) diffusion model, 2D or 3D."""
    return DenoisingUNet(spatial_dims, in_channels, num_classes, **kw)
