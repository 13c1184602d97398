"""ResNet-10/18/34/50 for 2D images and 3D volumes.

The architecture is the standard one (He et al. 2016; strided 3x3 convolution in the bottleneck,
"v1.5"), so the 2D models with a large stem have the familiar parameter counts. The small stem
keeps 28x28 MedMNIST images (and 28^3 volumes) at full resolution into the first stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medlens.models._features import feature_info
from medlens.models._layers import (
    STEM_ACT,
    NormKind,
    StemKind,
    check_norm,
    conv,
    make_stem,
    norm_layer,
    resolve_stem,
    stem_reduction,
)
from medlens.models.base import Backbone
from medlens.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet10", "resnet18", "resnet34", "resnet50"]


def _shortcut(
    spatial_dims: int, in_channels: int, out_channels: int, stride: int, norm: str
) -> nn.Module:
    """Identity, or a 1x1 projection when the block changes width or resolution."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        conv(spatial_dims, in_channels, out_channels, 1, stride=stride),
        norm_layer(norm, spatial_dims, out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-10/18/34).

    The norms are called ``bn*`` whatever ``norm`` is, so that checkpoint keys do not depend
    on it.
    """

    expansion = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        planes: int,
        stride: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, planes, 3, stride=stride)
        self.bn1 = norm_layer(norm, spatial_dims, planes)
        self.conv2 = conv(spatial_dims, planes, planes, 3)
        self.bn2 = norm_layer(norm, spatial_dims, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(spatial_dims, in_channels, planes, stride, norm)

    @property
    def last_bn(self) -> nn.Module:
        """The norm ending the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50).

    The norms are called ``bn*`` whatever ``norm`` is (see :class:`BasicBlock`).
    """

    expansion = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        planes: int,
        stride: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv(spatial_dims, in_channels, planes, 1)
        self.bn1 = norm_layer(norm, spatial_dims, planes)
        self.conv2 = conv(spatial_dims, planes, planes, 3, stride=stride)
        self.bn2 = norm_layer(norm, spatial_dims, planes)
        self.conv3 = conv(spatial_dims, planes, out_channels, 1)
        self.bn3 = norm_layer(norm, spatial_dims, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(spatial_dims, in_channels, out_channels, stride, norm)

    @property
    def last_bn(self) -> nn.Module:
        """The norm ending the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(Backbone):
    """A residual network: stem, four stages (64, 128, 256, 512 planes), pooled linear head.

    Feature stages (:attr:`feature_info`, as timm's): the stem's activation (``"stem.2"``,
    before the max-pool), then ``"layer1"`` to ``"layer4"``; with the large stem they are at
    1/2, 1/4, 1/8, 1/16 and 1/32 of the input's resolution, with the small one 1, 1, 2, 4, 8.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: classifier outputs (0: pooled features).
        stem: ``"small"`` (3x3/1, no max-pool) for tiny inputs, ``"large"`` (7x7/2 + max-pool),
            or ``"auto"``: small when the smallest side of ``input_size`` is at most 64, large
            when ``input_size`` is not given.
        input_size: expected input side(s), only used by ``stem="auto"``.
        dropout: dropout probability before the classifier.
        zero_init_residual: start every residual branch at zero (last BN scale 0), so each
            block begins as the identity; this helps training from scratch.
        width: planes of the first stage (64 in the standard ResNet); stages double it.
        norm: ``"batch"`` (default), ``"instance"`` or ``"group"`` (see
            :func:`~medlens.models._layers.norm_layer`), kept as ``norm_kind``; the layers keep
            their names (``bn1``...).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        stem: StemKind = "auto",
        input_size: int | Sequence[int] | None = None,
        dropout: float = 0.0,
        zero_init_residual: bool = True,
        width: int = 64,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, dropout)
        dims = self.spatial_dims
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)!r}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width!r}")
        self.norm_kind = check_norm(norm)
        self.stem_kind = resolve_stem(stem, input_size, dims)
        self.stem = make_stem(dims, in_channels, width, self.stem_kind, norm)
        act_reduction, reduction = stem_reduction(self.stem_kind)
        self.feature_info.append(feature_info(f"stem.{STEM_ACT}", width, act_reduction))
        channels = width
        stages = []
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(dims, channels, planes, stride if j == 0 else 1, norm))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
            reduction *= stride
            self.feature_info.append(feature_info(f"layer{i + 1}", channels, reduction))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self._build_head(channels)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    @property
    def feature_layer(self) -> nn.Module:
        """The last stage, whose output is the feature map."""
        return self.layer4

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def _feature_stages(self) -> list[Sequence[nn.Module]]:
        stem = list(self.stem)
        return [
            stem[: STEM_ACT + 1],
            [*stem[STEM_ACT + 1 :], self.layer1],
            [self.layer2],
            [self.layer3],
            [self.layer4],
        ]


@register_model("resnet10")
def resnet10(**kw: Any) -> ResNet:
    """ResNet-10: one basic block per stage, the cheapest residual baseline (common in 3D)."""
    return ResNet(BasicBlock, (1, 1, 1, 1), **kw)


@register_model("resnet18")
def resnet18(**kw: Any) -> ResNet:
    """ResNet-18 (11.7M parameters in 2D at 3 channels, 1000 classes, large stem)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


@register_model("resnet34")
def resnet34(**kw: Any) -> ResNet:
    """ResNet-34 (21.8M parameters in 2D at 3 channels, 1000 classes, large stem)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kw)


@register_model("resnet50")
def resnet50(**kw: Any) -> ResNet:
    """ResNet-50 with bottleneck blocks (25.6M parameters in 2D, 3 channels, 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)
