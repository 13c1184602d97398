"""DenseNet-121 for 2D images and 3D volumes.

The standard DenseNet-BC (Huang et al. 2017): growth rate 32, blocks of 6, 12, 24 and 16
layers, bottleneck width ``4 * growth``, transitions halving channels and resolution. With the
large stem and 3 input channels it has the familiar 7,978,856 parameters at 1000 classes.

Memory: each dense layer concatenates everything before it, and autograd keeps every
concatenation. ``memory_efficient=True`` recomputes the concatenation, batch norm and 1x1
convolution of each layer in the backward pass instead (gradient checkpointing, Pleiss et al.
2017), trading time for memory: on a CPU, a 28^3 batch of 2 with the small stem peaks at about
0.8 instead of 1.2 GB, and takes about twice as long.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medlens.models._features import feature_info
from medlens.models._layers import (
    STEM_ACT,
    NormKind,
    StemKind,
    avg_pool,
    check_norm,
    conv,
    make_stem,
    norm_layer,
    resolve_stem,
    stem_reduction,
)
from medlens.models.base import Backbone
from medlens.models.registry import register_model

__all__ = ["DenseNet", "densenet121"]


class DenseLayer(nn.Module):
    """Norm-ReLU-Conv1x1 (bottleneck) then norm-ReLU-Conv3x3 producing ``growth_rate`` channels."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        memory_efficient: bool,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = norm_layer(norm, spatial_dims, in_channels)
        self.conv1 = conv(spatial_dims, in_channels, width, 1)
        self.norm2 = norm_layer(norm, spatial_dims, width)
        self.conv2 = conv(spatial_dims, width, growth_rate, 3)
        self.relu = nn.ReLU(inplace=True)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.relu(self.norm1(torch.cat(features, 1))))

    @contextlib.contextmanager
    def _recomputation(self) -> Iterator[None]:
        # The backward pass runs the bottleneck again; its batch norm must not count the batch
        # twice in the running statistics, so they are put back as they were (group and
        # instance norms have no buffers: nothing to do).
        saved = [b.clone() for b in self.norm1.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, s in zip(self.norm1.buffers(), saved, strict=True):
                    b.copy_(s)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            out = checkpoint(
                self._bottleneck,
                *features,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), self._recomputation()),
            )
        else:
            out = self._bottleneck(*features)
        return self.conv2(self.relu(self.norm2(out)))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each seeing the concatenation of all earlier outputs."""

    def __init__(
        self,
        spatial_dims: int,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        memory_efficient: bool,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(
                spatial_dims,
                in_channels + i * growth_rate,
                growth_rate,
                bn_size,
                memory_efficient,
                norm,
            )
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """Norm-ReLU-Conv1x1 compressing channels, then 2x average pooling.

    The pooling rounds up (``ceil_mode``), so odd sides such as the 7x7 map of a 28x28 input
    behind the large stem do not vanish (7 -> 4 -> 2 -> 1); even sides are unaffected.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str = "batch"
    ) -> None:
        super().__init__(
            norm_layer(norm, spatial_dims, in_channels),
            nn.ReLU(inplace=True),
            conv(spatial_dims, in_channels, out_channels, 1),
            avg_pool(spatial_dims, 2, stride=2, ceil_mode=True),
        )


class DenseNet(Backbone):
    """A densely connected network: stem, dense blocks with transitions, BN-ReLU, linear head.

    Feature stages (:attr:`feature_info`, as timm's): the stem's activation (``"stem.2"``), each
    dense block but the last before its transition (``"blocks.0"``, ``"blocks.2"``, ...), and
    the final norm-ReLU (``"final"``); for DenseNet-121 with the large stem at 1/2, 1/4, 1/8,
    1/16 and 1/32 of the input's resolution, with the small one 1, 1, 2, 4, 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: classifier outputs (0: pooled features).
        block_config: layers per dense block (``(6, 12, 24, 16)`` for DenseNet-121).
        growth_rate: channels each dense layer adds.
        init_features: channels out of the stem.
        bn_size: bottleneck width as a multiple of ``growth_rate``.
        compression: fraction of channels a transition keeps.
        stem: ``"small"``, ``"large"`` or ``"auto"`` (see :class:`~medlens.models.ResNet`).
        input_size: expected input side(s), only used by ``stem="auto"``.
        dropout: dropout probability before the classifier.
        memory_efficient: recompute each layer's bottleneck in the backward pass (see module
            docstring).
        norm: ``"batch"`` (default), ``"instance"`` or ``"group"`` (see
            :func:`~medlens.models._layers.norm_layer`), kept as ``norm_kind``; the layers keep
            their names.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        block_config: Sequence[int] = (6, 12, 24, 16),
        growth_rate: int = 32,
        init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        stem: StemKind = "auto",
        input_size: int | Sequence[int] | None = None,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, dropout)
        dims = self.spatial_dims
        if not block_config or any(n < 1 for n in block_config):
            raise ValueError(f"block_config must be positive layer counts, got {block_config!r}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        self.norm_kind = check_norm(norm)
        self.stem_kind = resolve_stem(stem, input_size, dims)
        self.stem = make_stem(dims, in_channels, init_features, self.stem_kind, norm)
        act_reduction, reduction = stem_reduction(self.stem_kind)
        self.feature_info.append(feature_info(f"stem.{STEM_ACT}", init_features, act_reduction))
        channels = init_features
        blocks: list[nn.Module] = []
        opts = (growth_rate, bn_size, memory_efficient, norm)
        for i, num_layers in enumerate(block_config):
            blocks.append(DenseBlock(dims, num_layers, channels, *opts))
            channels += num_layers * growth_rate
            if i < len(block_config) - 1:
                name = f"blocks.{len(blocks) - 1}"
                self.feature_info.append(feature_info(name, channels, reduction))
                out_channels = int(channels * compression)
                blocks.append(Transition(dims, channels, out_channels, norm))
                channels = out_channels
                reduction *= 2
        self.blocks = nn.Sequential(*blocks)
        # The final norm-ReLU is one module, so that its output is exactly the feature map; the
        # ReLU is not in-place, so backward hooks on it (Grad-CAM) are safe.
        self.final = nn.Sequential(norm_layer(norm, dims, channels), nn.ReLU())
        self.feature_info.append(feature_info("final", channels, reduction))
        self._build_head(channels)

    @property
    def feature_layer(self) -> nn.Module:
        """The final BN-ReLU, whose output is the feature map."""
        return self.final

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.stem(x)))

    def _feature_stages(self) -> list[Sequence[nn.Module]]:
        # ``blocks`` alternates dense block and transition: a transition opens the next stage,
        # and the last dense block is in the stage of the final norm.
        stem = list(self.stem)
        stages: list[Sequence[nn.Module]] = [stem[: STEM_ACT + 1]]
        current = stem[STEM_ACT + 1 :]
        for i, block in enumerate(self.blocks):
            if i % 2:
                stages.append(current)
                current = []
            current.append(block)
        stages.append([*current, self.final])
        return stages


@register_model("densenet121")
def densenet121(**kw: Any) -> DenseNet:
    """DenseNet-121: growth 32, blocks 6-12-24-16 (8.0M parameters in 2D, 3 channels, 1000)."""
    return DenseNet(block_config=(6, 12, 24, 16), **kw)
