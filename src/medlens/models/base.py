"""The backbone interface every model in the zoo implements.

Explainability (Grad-CAM hooks onto :attr:`Backbone.feature_layer`), detection heads
(:attr:`Backbone.feature_info` and :meth:`Backbone.forward_intermediates`) and self-supervised
pre-training (``num_classes=0``) only rely on this interface, never on the internals of a
particular architecture.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import nn

from medlens.models._features import FeatureInfo, MultiScale
from medlens.models._layers import check_spatial_dims

__all__ = ["Backbone", "check_model_args", "count_parameters"]


def check_model_args(spatial_dims: object, in_channels: object, num_classes: object) -> None:
    """``ValueError`` unless ``spatial_dims`` is 2 or 3, ``in_channels >= 1``, ``num_classes >= 0``.

    Checked up front, so that a bad argument fails with its name, not deep inside a layer.
    """
    check_spatial_dims(spatial_dims)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    _check_num_classes(num_classes)


def _check_num_classes(num_classes: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(
            f"num_classes must be an int >= 1 (or 0 for a pooled-feature head), got {num_classes!r}"
        )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``model``; only those requiring grad if ``trainable_only``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class Backbone(MultiScale, nn.Module, abc.ABC):
    """A classification network split into a feature extractor and a pooled linear head.

    Subclasses build their layers, call :meth:`_build_head` with the channel count of their last
    feature map, fill :attr:`feature_info`, and implement :meth:`_forward_features`,
    :meth:`_feature_stages` and :attr:`feature_layer`.

    Attributes:
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
        in_channels: channels the network expects.
        num_classes: outputs of the classifier; 0 means no classifier (pooled features out).
        num_features: channels of the feature map, i.e. the width of the pooled features.
        dropout: dropout probability before the classifier.
        feature_info: one :class:`~medlens.models._features.FeatureInfo` per feature stage,
            shallow to deep (timm's convention): ``{"module", "num_chs", "reduction"}``. The
            last is the map of :meth:`forward_features`, its module :attr:`feature_layer`.
    """

    feature_info: list[FeatureInfo]

    def __init__(
        self, spatial_dims: int, in_channels: int, num_classes: int, dropout: float = 0.0
    ) -> None:
        check_model_args(spatial_dims, in_channels, num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        super().__init__()
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.num_features = 0
        self.dropout = float(dropout)
        self.feature_info = []

    def _build_head(self, num_features: int) -> None:
        """Create the dropout and classifier for a feature map of ``num_features`` channels."""
        self.num_features = num_features
        self.head_drop = nn.Dropout(self.dropout)
        self.fc = self._classifier(self.num_classes)

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(fc.bias)  # no class is favoured before training
        return fc

    @abc.abstractmethod
    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The architecture's feature extractor (input already checked)."""

    @abc.abstractmethod
    def _feature_stages(self) -> list[Sequence[nn.Module]]:
        """Per entry of :attr:`feature_info`, the modules leading to it from the one before.

        Running them all in order must compute :meth:`_forward_features`.
        """

    @property
    @abc.abstractmethod
    def feature_layer(self) -> nn.Module:
        """The module whose output is the feature map (where Grad-CAM hooks go)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map ``(B, num_features, *spatial)``."""
        self._check_input(x)
        return self._forward_features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout and linear: logits ``(B, num_classes)``.

        With ``pre_logits`` (or ``num_classes=0``) the pooled features ``(B, num_features)``
        are returned, without dropout.
        """
        pooled = features.flatten(2).mean(-1)
        if pre_logits or self.num_classes == 0:
            return pooled
        return self.fc(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``, or pooled features when ``num_classes=0``."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none).

        For fine-tuning a pre-trained backbone on a new label set; the new layer lives on the
        device and dtype of the old one.
        """
        _check_num_classes(num_classes)
        ref = next(self.parameters(), None)
        self.num_classes = int(num_classes)
        self.fc = self._classifier(self.num_classes)
        if ref is not None:
            self.fc.to(device=ref.device, dtype=ref.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        # Conv2d silently accepts an unbatched (C, H, W) tensor; say what is expected instead.
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            axes = "D, H, W" if self.spatial_dims == 3 else "H, W"
            raise ValueError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, {axes}), "
                f"got {tuple(x.shape)}"
            )
