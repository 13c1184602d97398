"""The building blocks of :class:`~medlens.models.unet.UNet` and its plan checks.

Kept apart from the network so that ``unet.py`` reads as the architecture: conv -> (dropout)
-> norm -> leaky ReLU units, the residual block of the ResEnc encoder, and the helpers that turn
a plan's per-stage, per-axis values into checked tuples.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medlens.models._layers import norm_layer

__all__ = [
    "NEGATIVE_SLOPE",
    "ConvNormAct",
    "ResidualBlock",
    "axes_per_stage",
    "check_counts",
    "is_int",
    "make_stage",
    "per_stage",
    "unet_conv",
]

NEGATIVE_SLOPE = 0.01  # leaky ReLU slope, also the ``a`` of the Kaiming init


def is_int(v: object) -> bool:
    """An integer (NumPy's too), but not a bool: ``True`` is no stage count."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def per_stage(values: object, num_stages: int, what: str) -> list[Any]:
    """One entry per stage: a scalar is repeated, a sequence must have ``num_stages`` entries."""
    if is_int(values):
        return [values] * num_stages
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"{what} must be an int or a sequence, got {values!r}")
    if len(values) != num_stages:
        raise ValueError(
            f"{what} has {len(values)} entries but features has {num_stages} (one per stage)"
        )
    return list(values)


def check_counts(values: object, num_stages: int, what: str) -> list[int]:
    """Per stage, a positive count (features, convs or blocks)."""
    counts = per_stage(values, num_stages, what)
    if not all(is_int(c) and c >= 1 for c in counts):
        raise ValueError(f"{what} must be positive ints, got {values!r}")
    return [int(c) for c in counts]


def axes_per_stage(
    values: object, num_stages: int, spatial_dims: int, what: str
) -> tuple[tuple[int, ...], ...]:
    """Per stage, a per-axis tuple of positive ints (an int entry is the same on every axis)."""
    out = []
    for i, v in enumerate(per_stage(values, num_stages, what)):
        seq = (v,) * spatial_dims if is_int(v) else v
        if not (
            isinstance(seq, Sequence)
            and len(seq) == spatial_dims
            and all(is_int(x) and x >= 1 for x in seq)
        ):
            raise ValueError(
                f"{what}[{i}] must be a positive int or {spatial_dims} positive ints, got {v!r}"
            )
        out.append(tuple(int(x) for x in seq))
    return tuple(out)


def unet_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...] | None = None,
    bias: bool = False,
    transposed: bool = False,
) -> nn.Module:
    """A "same"-padded (or transposed, kernel = stride) convolution with nnU-Net's init.

    Built on the meta device and drawn once: Kaiming normal for leaky ReLU (``a=0.01``), zero
    bias. No bias by default, since a norm with its own shift follows every such convolution.
    """
    stride = stride or (1,) * spatial_dims
    if transposed:
        cls = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        kw: dict[str, Any] = {}
    else:
        cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        kw = {"padding": tuple(k // 2 for k in kernel_size)}
    layer = cls(
        in_channels, out_channels, kernel_size, stride=stride, bias=bias, device="meta", **kw
    ).to_empty(device=torch.get_default_device())
    nn.init.kaiming_normal_(layer.weight, a=NEGATIVE_SLOPE)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class ConvNormAct(nn.Module):
    """Convolution, optional dropout, norm, leaky ReLU: the unit every stage is made of."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        norm: str = "instance",
        dropout: float = 0.0,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = unet_conv(spatial_dims, in_channels, out_channels, kernel_size, stride)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = norm_layer(norm, spatial_dims, out_channels)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.drop(self.conv(x))))


class ResidualBlock(nn.Module):
    """Two convolutions with a shortcut; the first may be strided (the stage's downsampling).

    When the shape changes, the shortcut averages over each stride window and projects with a
    1x1 convolution + norm (the ResNet-D shortcut), so it sees every input position instead of
    one in ``prod(stride)`` as a strided 1x1 convolution would.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stride = stride or (1,) * spatial_dims
        dims, ones, cin, cout = spatial_dims, (1,) * spatial_dims, in_channels, out_channels
        self.conv1 = ConvNormAct(dims, cin, cout, kernel_size, stride, norm, dropout)
        self.conv2 = ConvNormAct(dims, cout, cout, kernel_size, norm=norm, act=False)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != ones or cin != cout:
            pool_cls = nn.AvgPool2d if dims == 2 else nn.AvgPool3d
            pool = pool_cls(stride, stride) if stride != ones else nn.Identity()
            self.shortcut = nn.Sequential(
                pool,
                unet_conv(dims, cin, cout, ones),
                norm_layer(norm, dims, cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def make_stage(
    block: type[ConvNormAct | ResidualBlock],
    count: int,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...] | None,
    **opts: Any,
) -> nn.Sequential:
    """``count`` blocks; the first changes the width and applies the stage's stride."""
    first = block(spatial_dims, in_channels, out_channels, kernel_size, stride, **opts)
    rest = (
        block(spatial_dims, out_channels, out_channels, kernel_size, **opts)
        for _ in range(1, count)
    )
    return nn.Sequential(first, *rest)
