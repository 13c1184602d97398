"""A configurable U-Net for 2D and 3D segmentation, built from a plan (nnU-Net's design).

A planner decides the stages: features, per-axis strides and kernel sizes (anisotropic data
gets ``(1, 2, 2)`` strides and ``(1, 3, 3)`` kernels until its spacing is near-isotropic) and
the depth; this module only builds what it is told, checks it, and says which inputs fit
(:attr:`UNet.required_divisor`). Blocks are conv -> (dropout) -> instance norm -> leaky ReLU;
downsampling is the strided first convolution of a stage, upsampling a transposed convolution
with kernel = stride, skips are concatenated. The residual encoder swaps the plain stages for
basic residual blocks (nnU-Net ResEnc); the decoder stays plain. The blocks and the plan checks
live in :mod:`medlens.models._unet_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medlens.models._features import FeatureInfo, MultiScale, feature_info
from medlens.models._layers import NormKind, check_norm
from medlens.models._unet_blocks import (
    NEGATIVE_SLOPE,
    ConvNormAct,
    ResidualBlock,
    axes_per_stage,
    check_counts,
    is_int,
    make_stage,
    unet_conv,
)
from medlens.models.base import check_model_args
from medlens.models.registry import register_model

__all__ = [
    "MAX_FEATURES",
    "NEGATIVE_SLOPE",
    "ConvNormAct",
    "ResidualBlock",
    "UNet",
    "deep_supervision_weights",
    "downsample_targets",
    "resunet",
    "stage_features",
    "unet",
]

EncoderKind = Literal["plain", "residual"]
PerAxis = int | Sequence[int]

# nnU-Net's feature caps: wider stages cost memory without helping.
MAX_FEATURES = {2: 512, 3: 320}
_AXES = {2: ("H", "W"), 3: ("D", "H", "W")}
_RESIDUAL_BLOCKS = (1, 3, 4, 6)  # nnU-Net ResEnc; later stages repeat the last count


def stage_features(num_stages: int, spatial_dims: int, base: int = 32) -> list[int]:
    """nnU-Net's widths: ``base`` doubled per stage, capped at :data:`MAX_FEATURES`."""
    if num_stages < 1 or base < 1:
        raise ValueError(f"need num_stages >= 1 and base >= 1, got {num_stages}, {base}")
    cap = MAX_FEATURES[spatial_dims]
    return [min(base * 2**i, cap) for i in range(num_stages)]


class UNet(MultiScale, nn.Module):
    """U-Net with a plain or residual encoder, for 2D images or 3D volumes.

    Args:
        spatial_dims: 2 for ``(B, C, H, W)``, 3 for ``(B, C, D, H, W)``.
        in_channels: input channels (modalities).
        num_classes: output channels (segmentation classes, background included), >= 1.
        features: channels per stage, highest resolution first; its length is the depth.
        strides: per stage, an int or one per axis; the first must be 1 (full resolution).
            Default: 1, then 2 for every later stage.
        kernel_sizes: per stage, an odd int or one per axis; a single int is used for every
            stage (a flat list of ints is one per stage, as for ``strides``). Default 3.
        convs_per_stage: conv blocks per stage (an int, or one per stage). The plain encoder
            uses them; the decoder stage at stage ``s``'s resolution has ``convs_per_stage[s]``.
        encoder: ``"plain"`` (conv blocks) or ``"residual"`` (a stem conv, then residual blocks).
        blocks_per_stage: residual blocks per stage (residual encoder only); default nnU-Net
            ResEnc's ``1, 3, 4, 6, 6, ...``.
        norm: ``"instance"`` (nnU-Net, the default; affine, eps 1e-5), ``"batch"`` or
            ``"group"`` (see :func:`~medlens.models._layers.norm_layer`).
        deep_supervision: in training mode, return logits of several decoder stages.
        dropout: dropout after each conv of the conv blocks and residual branches.

    Attributes:
        features, strides, kernel_sizes: the checked plan, as tuples (per-axis for the last two).
        num_features: channels of the bottleneck map :meth:`forward_features` returns.
        feature_info: per encoder stage (``"encoder.0"``, ...), its channels and total stride
            (timm's convention, as :attr:`~medlens.models.Backbone.feature_info`); with
            anisotropic strides ``reduction`` is the largest over the axes, the per-axis one is
            the running product of :attr:`strides`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        strides: Sequence[PerAxis] | None = None,
        kernel_sizes: PerAxis | Sequence[PerAxis] | None = None,
        convs_per_stage: int | Sequence[int] = 2,
        encoder: EncoderKind = "plain",
        blocks_per_stage: int | Sequence[int] | None = None,
        norm: NormKind = "instance",
        deep_supervision: bool = False,
        dropout: float = 0.0,
    ) -> None:
        check_model_args(spatial_dims, in_channels, num_classes)
        dims = int(spatial_dims)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for segmentation, got {num_classes!r}")
        if isinstance(features, str) or not isinstance(features, Sequence) or len(features) < 2:
            raise ValueError(f"features must be at least 2 positive ints, got {features!r}")
        n = len(features)
        features = check_counts(features, n, "features")
        strides = [1] + [2] * (n - 1) if strides is None else strides
        stride_list = axes_per_stage(strides, n, dims, "strides")
        if stride_list[0] != (1,) * dims:
            raise ValueError(f"strides[0] must be 1 (full resolution), got {stride_list[0]}")
        kernel_list = axes_per_stage(
            3 if kernel_sizes is None else kernel_sizes, n, dims, "kernel_sizes"
        )
        for i, k in enumerate(kernel_list):
            if any(v % 2 == 0 for v in k):
                raise ValueError(f"kernel_sizes[{i}] must be odd (same padding), got {k}")
        convs = check_counts(convs_per_stage, n, "convs_per_stage")
        if encoder not in ("plain", "residual"):
            raise ValueError(f"encoder must be 'plain' or 'residual', got {encoder!r}")
        if encoder == "plain" and blocks_per_stage is not None:
            raise ValueError("blocks_per_stage only applies to encoder='residual'")
        if blocks_per_stage is None:
            blocks_per_stage = [_RESIDUAL_BLOCKS[min(i, 3)] for i in range(n)]
        blocks = check_counts(blocks_per_stage, n, "blocks_per_stage")
        check_norm(norm)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        super().__init__()
        self.spatial_dims, self.in_channels, self.num_classes = dims, in_channels, num_classes
        self.features = tuple(features)
        self.strides, self.kernel_sizes = stride_list, kernel_list
        self.encoder_kind, self.norm_kind = encoder, norm
        self.deep_supervision = bool(deep_supervision)
        self.num_features = self.features[-1]
        self.feature_info: list[FeatureInfo] = []
        reduction = (1,) * dims
        for s, (f, st) in enumerate(zip(self.features, self.strides, strict=True)):
            reduction = tuple(r * a for r, a in zip(reduction, st, strict=True))
            self.feature_info.append(feature_info(f"encoder.{s}", f, max(reduction)))
        self._build(convs, blocks, dropout)

    def _build(self, convs: list[int], blocks: list[int], dropout: float) -> None:
        dims, f, k, st = self.spatial_dims, self.features, self.kernel_sizes, self.strides
        n, opts = len(f), {"norm": self.norm_kind, "dropout": dropout}
        self.stem: nn.Module = nn.Identity()
        if self.encoder_kind == "residual":
            self.stem = ConvNormAct(dims, self.in_channels, f[0], k[0], **opts)
            ins = f[:1] + f[:-1]
            self.encoder = nn.ModuleList(
                make_stage(ResidualBlock, blocks[s], dims, ins[s], f[s], k[s], st[s], **opts)
                for s in range(n)
            )
        else:
            ins = (self.in_channels, *f[:-1])
            self.encoder = nn.ModuleList(
                make_stage(ConvNormAct, convs[s], dims, ins[s], f[s], k[s], st[s], **opts)
                for s in range(n)
            )
        # Indexed by the resolution they work at: upsamples[s] brings stage s+1 to stage s.
        self.upsamples = nn.ModuleList(
            unet_conv(dims, f[s + 1], f[s], st[s + 1], st[s + 1], transposed=True)
            for s in range(n - 1)
        )
        self.decoder = nn.ModuleList(
            make_stage(ConvNormAct, convs[s], dims, 2 * f[s], f[s], k[s], None, **opts)
            for s in range(n - 1)
        )
        # Heads only where an output is used: unused parameters break DDP.
        ones = (1,) * dims
        self.heads = nn.ModuleList(
            unet_conv(dims, f[s], self.num_classes, ones, bias=True)
            for s in range(self.num_outputs)
        )

    @property
    def num_stages(self) -> int:
        """Encoder stages, the bottleneck included."""
        return len(self.features)

    @property
    def num_outputs(self) -> int:
        """Logits :meth:`forward` returns in training with deep supervision (else 1).

        Every decoder stage but the lowest (right after the bottleneck, too coarse to help;
        nnU-Net gives it weight 0), and always the full-resolution one.
        """
        return max(1, self.num_stages - 2) if self.deep_supervision else 1

    @property
    def required_divisor(self) -> tuple[int, ...]:
        """Per-axis product of the strides: every input side must be a multiple of it."""
        return tuple(math.prod(s[a] for s in self.strides) for a in range(self.spatial_dims))

    @property
    def deep_supervision_scales(self) -> list[tuple[int, ...]]:
        """Per output, highest resolution first: how many times smaller it is along each axis."""
        scales, scale = [], (1,) * self.spatial_dims
        for s in range(self.num_outputs):
            scale = tuple(a * b for a, b in zip(scale, self.strides[s], strict=True))
            scales.append(scale)
        return scales

    @property
    def feature_layer(self) -> nn.Module:
        """The bottleneck stage, whose output :meth:`forward_features` returns (for hooks)."""
        return self.encoder[-1]

    @property
    def explain_layer(self) -> nn.Module:
        """The layer Grad-CAM hooks for a segmentation score: the decoder stage at 1/8 of the
        input's resolution (the deepest one if the network is shallower). The bottleneck is too
        coarse and, for a region's score, its channel gradients often cancel to an empty map;
        this stage still knows the context and localises."""
        scale, chosen = 1, 0
        for s in range(len(self.decoder)):
            scale *= max(self.strides[s])  # cumulative stride of stage s
            if scale <= 8:
                chosen = s
        return self.decoder[chosen]

    def _check_input(self, x: torch.Tensor) -> None:
        axes = _AXES[self.spatial_dims]
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input (B, {self.in_channels}, {', '.join(axes)}), "
                f"got {tuple(x.shape)}"
            )
        for axis, (side, div) in enumerate(zip(x.shape[2:], self.required_divisor, strict=True)):
            if side % div:
                raise ValueError(
                    f"input spatial size {tuple(x.shape[2:])} does not fit the strides: "
                    f"spatial axis {axis} ({axes[axis]}) has {side}, which is not a multiple of "
                    f"{div} (required divisor {self.required_divisor})"
                )

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return skips

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck feature map ``(B, features[-1], *(side / required_divisor))``."""
        self._check_input(x)
        return self._encode(x)[-1]

    def _feature_stages(self) -> list[Sequence[nn.Module]]:
        """The encoder stages (the stem leads into the first): see :class:`MultiScale`."""
        stages: list[Sequence[nn.Module]] = [[self.stem, self.encoder[0]]]
        return stages + [[stage] for stage in list(self.encoder)[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, num_classes, *spatial)`` at the input's resolution.

        In training mode with deep supervision, a list of :attr:`num_outputs` logits instead,
        full resolution first, each smaller by the next stage's stride (see
        :func:`downsample_targets` and :func:`deep_supervision_weights` for the loss).
        """
        self._check_input(x)
        skips = self._encode(x)
        all_outputs = self.deep_supervision and self.training
        x = skips[-1]
        outputs = []
        for s in range(self.num_stages - 2, -1, -1):
            x = self.upsamples[s](x)
            x = self.decoder[s](torch.cat((x, skips[s]), dim=1))
            if s == 0 or (all_outputs and s < self.num_outputs):
                outputs.append(self.heads[s](x))
        return outputs[::-1] if all_outputs else outputs[-1]


def deep_supervision_weights(n: int) -> list[float]:
    """Loss weights for ``n`` deep-supervision outputs, highest resolution first.

    They halve per level and sum to 1 (``n=3``: 4/7, 2/7, 1/7). This is nnU-Net's weighting:
    nnU-Net computes an output at every decoder stage and weights the lowest 0; :class:`UNet`
    does not compute that one at all, and normalising the rest gives the same weights.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    weights = [0.5**i for i in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


def downsample_targets(
    target: torch.Tensor, shapes: Sequence[torch.Tensor | Sequence[int]]
) -> list[torch.Tensor]:
    """The target resized to each deep-supervision output, by nearest neighbour.

    Nearest keeps a label map a label map (no invented in-between classes); with exact integer
    factors it takes the first voxel of each window, like ``target[..., ::2, ::2]``.

    Args:
        target: labels ``(B, *spatial)`` or ``(B, C, *spatial)`` (any dtype, kept).
        shapes: the outputs themselves (``model(x)`` in training with deep supervision; their
            ``shape[2:]`` is used) or spatial shapes.

    Returns:
        One tensor per entry of ``shapes``; the target itself where the shape already matches.
    """
    sizes = [tuple(s.shape[2:]) if isinstance(s, torch.Tensor) else tuple(s) for s in shapes]
    if not sizes:
        return []
    dims = len(sizes[0])
    if dims not in (2, 3) or target.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"target must be (B, *spatial) or (B, C, *spatial) with {dims} spatial axes "
            f"(from shapes {sizes}), got {tuple(target.shape)}"
        )
    if any(len(s) != dims for s in sizes):
        raise ValueError(f"shapes must all have {dims} spatial axes, got {sizes}")
    full = target if target.dim() == dims + 2 else target.unsqueeze(1)
    out = []
    for size in sizes:
        if size == tuple(full.shape[2:]):
            out.append(target)
            continue
        # nearest on a float copy: exact for labels below 2**24, and works for every dtype
        small = F.interpolate(full.float(), size=size, mode="nearest").to(target.dtype)
        out.append(small if target.dim() == dims + 2 else small.squeeze(1))
    return out


@register_model("unet", task="segmentation")
def unet(**kw: Any) -> UNet:
    """U-Net with the plain encoder (nnU-Net's default network)."""
    return UNet(encoder="plain", **kw)


@register_model("resunet", task="segmentation")
def resunet(**kw: Any) -> UNet:
    """U-Net with the residual encoder (nnU-Net ResEnc); default blocks 1, 3, 4, 6, 6, ..."""
    return UNet(encoder="residual", **kw)
