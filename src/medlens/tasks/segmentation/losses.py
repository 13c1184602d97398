"""Segmentation losses: soft Dice with cross-entropy (or focal), ignore labels, deep supervision.

nnU-Net's default, Dice + CE, is the default here: CE gives well-behaved gradients from the first
step, Dice counters the class imbalance of small structures. Details that matter:

- Soft Dice over the foreground classes only (background Dice is large and uninformative), with
  a small smoothing term so empty classes do not divide by zero; ``batch_dice`` pools the batch
  into one volume (better for small, rare structures), otherwise it averages per sample.
- ``ignore_index`` voxels (unlabelled regions) count in neither term.
- Deep supervision: a list of logits from full to coarse resolution gets the targets downsampled
  by nearest neighbour and weights halving per level (normalised) so coarse outputs guide
  training without dominating it. medlens' U-Net never computes nnU-Net's zero-weighted lowest
  level, so no level here is zeroed: the weights equal nnU-Net's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeepSupervisionLoss",
    "DiceCELoss",
    "deep_supervision_weights",
    "soft_dice",
    "soft_dice_loss",
]


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int | None = None,
    batch_dice: bool = True,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """``1 - mean soft Dice`` of softmax(``logits``) ``(B, K, ...)`` against labels ``(B, ...)``."""
    probs = logits.float().softmax(dim=1)
    num_classes = probs.shape[1]
    labels = target.long()
    valid = None
    if ignore_index is not None:
        valid = labels != ignore_index
        labels = torch.where(valid, labels, torch.zeros_like(labels))
    onehot = F.one_hot(labels, num_classes).movedim(-1, 1).to(probs.dtype)
    if valid is not None:
        mask = valid.unsqueeze(1).to(probs.dtype)
        probs, onehot = probs * mask, onehot * mask
    start = 0 if include_background or num_classes == 1 else 1
    return soft_dice(probs[:, start:], onehot[:, start:], batch_dice=batch_dice, smooth=smooth)


def soft_dice(
    probs: torch.Tensor, target: torch.Tensor, *, batch_dice: bool = True, smooth: float = 1e-5
) -> torch.Tensor:
    """``1 - mean soft Dice`` of probabilities against targets, both ``(B, K, ...)``, per class
    (``batch_dice``: the batch pooled into one volume); softmax or sigmoid outputs alike."""
    axes = [0, *range(2, probs.ndim)] if batch_dice else list(range(2, probs.ndim))
    intersection = (probs * target).sum(dim=axes)
    denominator = probs.sum(dim=axes) + target.sum(dim=axes)
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


class DiceCELoss(nn.Module):
    """Soft Dice plus cross-entropy (or focal loss with ``focal_gamma``), equally weighted."""

    def __init__(
        self,
        *,
        ignore_index: int | None = None,
        batch_dice: bool = True,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        focal_gamma: float | None = None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.batch_dice = batch_dice
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.focal_gamma = focal_gamma
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:  # (B, 1, ...) label maps
            target = target[:, 0]
        target = target.long()
        ignore = -100 if self.ignore_index is None else self.ignore_index
        log_probs = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(log_probs, target, weight=self.class_weights, ignore_index=ignore,
                        reduction="none")  # fmt: skip
        if self.focal_gamma:
            safe = torch.where(target == ignore, torch.zeros_like(target), target)
            p_true = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1).exp()
            ce = ce * (1 - p_true).pow(self.focal_gamma)
        valid = target != ignore
        ce = ce.sum() / valid.sum().clamp_min(1)
        dice = soft_dice_loss(
            logits, target, ignore_index=self.ignore_index, batch_dice=self.batch_dice
        )
        return self.ce_weight * ce + self.dice_weight * dice


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 1, 1/2, 1/4, ... from full to coarse resolution, normalised to sum 1."""
    from medlens.models.unet import deep_supervision_weights as weights

    return weights(levels)


class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` to each output of a deep-supervised network against resized targets."""

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else list(weights)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor):
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(weights)} weights")
        labels = target if target.ndim == outputs[0].ndim else target.unsqueeze(1)
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for output, weight in zip(outputs, weights, strict=True):
            if weight == 0:
                continue
            if output.shape[2:] != labels.shape[2:]:
                resized = F.interpolate(labels.float(), size=output.shape[2:], mode="nearest")
            else:
                resized = labels
            total = total + weight * self.loss(output, resized.long())
        return total
