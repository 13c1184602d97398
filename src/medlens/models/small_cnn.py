"""A small, fast CNN for tiny images (MedMNIST 28x28 or 28^3) and quick experiments.

Four conv-BN-ReLU blocks of widths ``w, 2w, 4w, 8w`` with 2x max-pooling after the first three:
about 0.39M parameters in 2D at the default width, trains in seconds per epoch on a CPU, and is
a sane baseline before reaching for a ResNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medlens.models._features import feature_info
from medlens.models._layers import NormKind, check_norm, conv, max_pool, norm_layer
from medlens.models.base import Backbone
from medlens.models.registry import register_model

__all__ = ["SmallCNN", "smallcnn"]


class SmallCNN(Backbone):
    """Conv-norm-ReLU blocks with pooling between them, and a pooled linear head.

    Each block is a feature stage (:attr:`feature_info`), taken at its ReLU before the pooling:
    block ``i`` has ``width * 2**i`` channels at ``1 / 2**i`` of the input's resolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: classifier outputs (0: pooled features).
        width: channels of the first block; each following block doubles them.
        num_blocks: conv-BN-ReLU blocks (a 2x max-pool follows all but the last).
        dropout: dropout probability before the classifier.
        input_size: accepted so that any zoo model can be built with the same arguments; the
            network works on any input size (pooling rounds up, so small sides never vanish).
        norm: ``"batch"`` (default), ``"instance"`` or ``"group"`` (see
            :func:`~medlens.models._layers.norm_layer`), kept as ``norm_kind``; the layers keep
            their names.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 32,
        num_blocks: int = 4,
        dropout: float = 0.0,
        input_size: int | Sequence[int] | None = None,
        norm: NormKind = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, dropout)
        dims = self.spatial_dims
        if width < 1 or num_blocks < 1:
            raise ValueError(f"width and num_blocks must be >= 1, got {width!r}, {num_blocks!r}")
        self.norm_kind = check_norm(norm)
        blocks: list[nn.Module] = []
        channels = in_channels
        for i in range(num_blocks):
            out_channels = width * 2**i
            layers: list[nn.Module] = [
                conv(dims, channels, out_channels, 3),
                norm_layer(norm, dims, out_channels),
                nn.ReLU(inplace=True),
            ]
            last = i == num_blocks - 1
            if not last:
                layers.append(max_pool(dims, 2, stride=2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
            # The last block's own name, so that the last entry is ``feature_layer``.
            module = f"blocks.{i}" if last else f"blocks.{i}.2"
            self.feature_info.append(feature_info(module, out_channels, 2**i))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self._build_head(channels)

    @property
    def feature_layer(self) -> nn.Module:
        """The last conv-norm-ReLU block, whose output is the feature map."""
        return self.blocks[-1]

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def _feature_stages(self) -> list[Sequence[nn.Module]]:
        # Block i's pooling runs at the start of stage i + 1, after its map has been taken; the
        # last block runs as itself, so that hooks on ``feature_layer`` fire.
        blocks = list(self.blocks)
        stages: list[Sequence[nn.Module]] = []
        pool: list[nn.Module] = []
        for block in blocks[:-1]:
            stages.append([*pool, *list(block)[:3]])
            pool = list(block)[3:]
        stages.append([*pool, blocks[-1]])
        return stages


@register_model("smallcnn")
def smallcnn(**kw: Any) -> SmallCNN:
    """The small fast CNN (``width=32``, four blocks, batch norm)."""
    return SmallCNN(**kw)
