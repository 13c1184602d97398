"""A residual super-resolution network (EDSR-lite) for 2D and 3D, on the target grid.

The input is the low-resolution image already interpolated onto the high-resolution grid
(:func:`medlens.reconstruction.degrade.upsample`), so one network serves any factor and any set
of upsampled axes (in-plane 2x or 4x, through-plane 3x...); the network predicts the residual
the interpolation missed (Kim et al. 2016, "VDSR"), through ``blocks`` residual blocks
(conv-ReLU-conv, scaled by ``residual_scale``: 1 for a narrow network, where 0.1 stalled
learning; no normalisation: Lim et al. 2017, "EDSR"). The
input is standardised per image and the output brought back to its scale; the last
convolution starts at zero, so an untrained network returns the interpolation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlens.models._layers import check_spatial_dims, conv
from medlens.models.registry import register_model

__all__ = ["EDSR", "edsr"]


class _Block(nn.Module):
    def __init__(self, dims: int, width: int, scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(dims, width, width, 3, bias=True), nn.ReLU(inplace=True),
                                  conv(dims, width, width, 3, bias=True))  # fmt: skip
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.body(x)


class EDSR(nn.Module):
    """See the module's notes: ``(N, C, *spatial)`` in, the same shape out."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, *, width: int = 48,
                 blocks: int = 8, residual_scale: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        if in_channels < 1 or width < 1 or blocks < 0:
            raise ValueError(f"in_channels, width >= 1 and blocks >= 0, got {in_channels}, "
                             f"{width}, {blocks}")  # fmt: skip
        self.head = conv(dims, in_channels, width, 3, bias=True)
        self.body = nn.Sequential(*(_Block(dims, width, residual_scale) for _ in range(blocks)))
        self.tail = conv(dims, width, in_channels, 3, bias=True)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    @property
    def explain_layer(self) -> nn.Module:
        return self.body[-1] if len(self.body) else self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, x.ndim))
        mean = x.mean(dim=axes, keepdim=True)
        std = x.std(dim=axes, keepdim=True).clamp(min=1e-6)
        z = (x - mean) / std
        features = self.head(z)
        z = z + self.tail(self.body(features) + features)
        return z.float() * std + mean


@register_model("edsr", task="superres")
def edsr(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 0, **kw: Any) -> EDSR:
    """EDSR-lite super-resolution on the interpolated image (``num_classes`` is not used)."""
    return EDSR(spatial_dims, in_channels, **kw)
