"""FCOS: an anchor-free one-stage detector on a zoo backbone, for 2D images and 3D volumes.

Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019, restated for
``n`` spatial axes from one definition. The backbone is any zoo model with
:meth:`~medlens.models.base.Backbone.forward_intermediates` (its ``feature_info`` gives the
stages' channels and strides); a feature pyramid (lateral 1x1 convolutions, top-down nearest
upsampling, 3x3 smoothing) joins the chosen stages; a head shared by every level predicts at each
location of each level:

- ``K`` class logits (sigmoid, one per class; focal loss in training),
- ``2n`` distances from the location to the box's low and high faces along ``x, y[, z]``, in
  units of the level's stride (``softplus(scale_l * t)``, one learnt scale per level: a ReLU
  here can die, every distance stuck at zero, as it did in 3D),
- one centre-ness logit (how central the location is in its box; it down-weights off-centre
  predictions at inference).

:meth:`FCOS.forward` returns one tensor ``(B, P, K + 2n + 1)`` over the ``P`` locations of every
level (shallow to deep, each level in array order), so the network exports to ONNX as one graph;
:meth:`FCOS.locations` gives those locations' index coordinates ``(x, y[, z])`` and strides for an
input shape, which the loss (:mod:`medlens.tasks.detection.loss`) and the decoder use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from medlens.models._layers import conv, norm_layer
from medlens.models.registry import create_model, register_model

__all__ = ["FCOS", "fcos", "fcos_locations"]

PRIOR = 0.01  # initial foreground probability of the class logits (the focal-loss paper's bias)


class FCOS(nn.Module):
    """Backbone, feature pyramid and a shared FCOS head (see the module's notes).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: object classes (no background class: sigmoid outputs).
        backbone: a zoo classification model (``resnet10``, ``resnet18``, ...).
        levels: the backbone's stages (indices into its ``feature_info``) the pyramid uses,
            shallow to deep; each is one level of predictions.
        fpn_channels: channels of the pyramid and the head.
        head_convs: 3x3 convolutions (with group norm and ReLU) in each head tower.
        backbone_options: given to :func:`~medlens.models.create_model` (``width``, ``stem``,
            ``norm``).
        dense_head: add per-pixel class logits on the finest level (Retina U-Net's dense
            supervision, Jaeger et al. 2018), which :meth:`forward` returns beside the boxes in
            training mode only: where boxes are few and small, they give the features a signal
            at every pixel instead of at a handful of positive locations.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 1,
        backbone: str = "resnet18",
        levels: Sequence[int] = (2, 3, 4),
        fpn_channels: int = 128,
        head_convs: int = 2,
        backbone_options: dict[str, Any] | None = None,
        dense_head: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for a detector, got {num_classes}")
        options = {"norm": "group", **(backbone_options or {})}
        self.backbone = create_model(
            backbone, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=0, **options
        )
        info = self.backbone.feature_info
        self.levels = [int(i) % len(info) for i in levels]
        if sorted(set(self.levels)) != self.levels:
            raise ValueError(f"levels must be distinct stages, shallow to deep, got {levels}")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.strides = [int(info[i]["reduction"]) for i in self.levels]
        n, c = spatial_dims, fpn_channels
        self.lateral = nn.ModuleList(conv(n, info[i]["num_chs"], c, 1) for i in self.levels)
        self.smooth = nn.ModuleList(conv(n, c, c, 3) for _ in self.levels)
        self.cls_tower = _tower(n, c, head_convs)
        self.box_tower = _tower(n, c, head_convs)
        self.cls_out = conv(n, c, num_classes, 3, bias=True)
        self.box_out = conv(n, c, 2 * n, 3, bias=True)
        self.ctr_out = conv(n, c, 1, 3, bias=True)
        self.scales = nn.Parameter(torch.ones(len(self.levels)))
        self.dense_out = conv(n, c, num_classes, 3, bias=True) if dense_head else None
        for layer in (self.cls_out, self.box_out, self.ctr_out, self.dense_out):
            if layer is not None:
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
        for layer in (self.cls_out, self.dense_out):
            if layer is not None:
                nn.init.constant_(layer.bias, -math.log((1 - PRIOR) / PRIOR))

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (the coarsest stride of the backbone)."""
        return int(self.backbone.feature_info[-1]["reduction"])

    @property
    def feature_layer(self) -> nn.Module:
        """The last pyramid smoothing layer (what Grad-CAM of a box's score hooks onto)."""
        return self.smooth[0]

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid's maps, shallow to deep."""
        feats = self.backbone.forward_intermediates(x, indices=self.levels, stop_early=True)
        laterals = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):
            up = F.interpolate(laterals[i + 1], size=laterals[i].shape[2:], mode="nearest")
            laterals[i] = laterals[i] + up
        return [smooth(f) for smooth, f in zip(self.smooth, laterals, strict=True)]

    def forward(self, x: torch.Tensor):
        """``(B, P, K + 2n + 1)``: class logits, distances (strides), centre-ness logit; in
        training mode with a dense head, also its logits ``(B, K, *finest level)``."""
        outputs = []
        features = self.pyramid(x)
        for level, feature in enumerate(features):
            cls = self.cls_out(self.cls_tower(feature))
            box_features = self.box_tower(feature)
            box = F.softplus(self.box_out(box_features) * self.scales[level])
            ctr = self.ctr_out(box_features)
            out = torch.cat([cls, box, ctr], dim=1)
            outputs.append(out.flatten(2).transpose(1, 2))
        joined = torch.cat(outputs, dim=1)
        if self.training and self.dense_out is not None:
            return joined, self.dense_out(features[0])
        return joined

    def locations(self, shape: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`fcos_locations` of this network's strides."""
        return fcos_locations(self.strides, shape, device)


def fcos_locations(strides: Sequence[int], shape: Sequence[int], device=None):
    """Index coordinates ``(P, n)`` (``x, y[, z]``, input pixels) of every prediction of an FCOS
    with pyramid ``strides`` on an input of spatial ``shape`` (array order), in the order of
    :meth:`FCOS.forward`'s outputs, and each one's stride ``(P,)``.

    A level of stride ``s`` has ``ceil(side / s)`` cells per axis; cell ``i`` sits at
    ``s * i + (s - 1) / 2``: the centre of the input pixels it covers.
    """
    points, out = [], []
    for stride in strides:
        cells = [-(-int(side) // int(stride)) for side in shape]
        axes = [
            torch.arange(c, device=device, dtype=torch.float32) * stride + (stride - 1) / 2
            for c in cells
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(cells))
        points.append(grid.flip(-1))  # array order -> index order (x, y[, z])
        out.append(torch.full((grid.shape[0],), float(stride), device=device))
    return torch.cat(points), torch.cat(out)


def _tower(spatial_dims: int, channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [
            conv(spatial_dims, channels, channels, 3),
            norm_layer("group", spatial_dims, channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


@register_model("fcos", task="detection")
def fcos(**kw: Any) -> FCOS:
    """FCOS on a zoo backbone (``backbone="resnet18"``), 2D or 3D."""
    return FCOS(**kw)
