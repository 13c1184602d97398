"""Layers defined once for 2D and 3D: ``spatial_dims`` picks the ``nn`` class.

Every model in the zoo is written against these helpers, so a network definition is a single
piece of code whether it sees images ``(B, C, H, W)`` or volumes ``(B, C, D, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "GROUP_NORM_MAX_GROUPS",
    "NORMS",
    "SMALL_INPUT_MAX",
    "STEM_ACT",
    "NormKind",
    "StemKind",
    "avg_pool",
    "batch_norm",
    "check_norm",
    "check_spatial_dims",
    "conv",
    "group_count",
    "make_stem",
    "max_pool",
    "norm_layer",
    "resolve_stem",
    "stem_reduction",
]

StemKind = Literal["auto", "small", "large"]
NormKind = Literal["batch", "instance", "group"]
NORMS: tuple[str, ...] = ("batch", "instance", "group")

# Wu & He (2018) use 32 groups; narrower layers get fewer (see :func:`group_count`).
GROUP_NORM_MAX_GROUPS = 32

# With ``stem="auto"``, inputs whose smallest side is at most this get the small stem: a 7x7/2
# convolution plus a max-pool would shrink a 28x28 MedMNIST image to 7x7 before the first block.
SMALL_INPUT_MAX = 64


def check_spatial_dims(spatial_dims: object) -> int:
    """``spatial_dims`` as an int, or a ``ValueError`` unless it is 2 or 3."""
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)  # type: ignore[call-overload]


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    bias: bool = False,
) -> nn.Module:
    """A ``kernel_size``-cubed convolution with "same" padding, Kaiming-initialised.

    The weights are drawn once, from a normal with fan-out ReLU gain (He et al. 2015), instead of
    nn's default init followed by a re-init: that halves the build time of the larger 3D models.
    No bias by default, as every convolution in the zoo is followed by batch norm.
    """
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    layer = cls(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=bias,
        device="meta",
    ).to_empty(device=torch.get_default_device())
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def check_norm(norm: object) -> str:
    """``norm`` itself, or a ``ValueError`` naming the option and its choices.

    Checked before any layer is built, so a typo fails at once and says what would work.
    """
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    return norm


def group_count(channels: int) -> int:
    """Groups of a group norm over ``channels``: the largest divisor of it not above 32.

    That is 32 for the usual multiples of 32 (Wu & He 2018), and still a valid split for odd
    widths (48 -> 24 groups, 20 -> 20, i.e. instance-norm-like for narrow layers).
    """
    groups = min(GROUP_NORM_MAX_GROUPS, channels)
    while channels % groups:
        groups -= 1
    return groups


def norm_layer(norm: str, spatial_dims: int, channels: int, eps: float = 1e-5) -> nn.Module:
    """The normalisation layer of kind ``norm`` over ``channels``, for 2D or 3D maps.

    The one place every zoo model gets its norms from. ``"batch"`` is the classic choice;
    ``"instance"`` (affine, no running statistics) and ``"group"`` (see :func:`group_count`)
    do not mix samples of a batch, which differential privacy (Opacus forbids batch norm),
    federated training on non-identical sites and batches of one need. In training, instance
    norm needs more than one spatial position per map, and group norm more than one value per
    group (a group of one channel, as in layers of at most 32 channels, on a 1-voxel map fails).
    """
    check_norm(norm)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels, eps=eps)
    if norm == "instance":
        cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return cls(channels, eps=eps, affine=True)
    cls = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    return cls(channels, eps=eps)


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    """Batch norm over ``channels`` for 2D or 3D feature maps (``norm_layer("batch", ...)``)."""
    return norm_layer("batch", spatial_dims, channels)


def max_pool(
    spatial_dims: int, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> nn.Module:
    """Max-pooling for 2D or 3D feature maps."""
    cls = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    return cls(kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)


def avg_pool(
    spatial_dims: int, kernel_size: int, stride: int, ceil_mode: bool = False
) -> nn.Module:
    """Average pooling for 2D or 3D feature maps."""
    cls = nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d
    return cls(kernel_size, stride=stride, ceil_mode=ceil_mode)


def resolve_stem(
    stem: str, input_size: int | Sequence[int] | None, spatial_dims: int
) -> Literal["small", "large"]:
    """The concrete stem for ``stem``; ``"auto"`` looks at the smallest side of ``input_size``.

    ``"auto"`` without an ``input_size`` gives the standard (large) stem, so that the default
    architectures are the well-known ones.
    """
    if stem in ("small", "large"):
        return stem  # type: ignore[return-value]
    if stem != "auto":
        raise ValueError(f"stem must be 'auto', 'small' or 'large', got {stem!r}")
    if input_size is None:
        return "large"
    sides = (input_size,) * spatial_dims if isinstance(input_size, int) else tuple(input_size)
    if len(sides) != spatial_dims or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides
    ):
        raise ValueError(
            f"input_size must be a positive int or {spatial_dims} positive ints, got {input_size!r}"
        )
    return "small" if min(sides) <= SMALL_INPUT_MAX else "large"


def make_stem(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    stem: Literal["small", "large"],
    norm: str = "batch",
) -> nn.Sequential:
    """The first layers of a ResNet or DenseNet.

    ``"small"`` is a 3x3 stride-1 convolution without max-pool, which keeps the full resolution
    of tiny inputs (as the MedMNIST ResNet-18 (28) does); ``"large"`` is the ImageNet stem, a
    7x7 stride-2 convolution and a 3x3 stride-2 max-pool (4x downsampling). Either way index 2
    is the activation, whose output is the stem's feature map (:data:`STEM_ACT`).
    """
    if stem == "small":
        return nn.Sequential(
            conv(spatial_dims, in_channels, out_channels, 3),
            norm_layer(norm, spatial_dims, out_channels),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        conv(spatial_dims, in_channels, out_channels, 7, stride=2),
        norm_layer(norm, spatial_dims, out_channels),
        nn.ReLU(inplace=True),
        max_pool(spatial_dims, 3, stride=2, padding=1),
    )


# Index in the stem of its activation (before any max-pool): where its feature map is taken,
# as timm takes ``act1``; ``stem[: STEM_ACT + 1]`` computes it.
STEM_ACT = 2


def stem_reduction(stem: Literal["small", "large"]) -> tuple[int, int]:
    """Total stride of the stem at its activation, and at its output (after the max-pool)."""
    return (1, 1) if stem == "small" else (2, 4)
