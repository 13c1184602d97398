"""Optimisers, per-iteration learning-rate schedules and losses, built from a :class:`TrainConfig`.

Schedules are one function of the global step (warm-up, then cosine / step / one-cycle /
constant) wrapped in :class:`~torch.optim.lr_scheduler.LambdaLR`: its state is just the step
count, so a checkpoint restores it exactly and a resumed run with more epochs follows the new
length. Losses ignore NaN targets where a dataset marks missing labels with NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlens.engine.config import ConfigError, TrainConfig

__all__ = [
    "FocalLoss",
    "MaskedBCEWithLogitsLoss",
    "RegressionMSELoss",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "lr_factor_fn",
    "resolve_loss_name",
]

#: Start of the one-cycle rise as a fraction of the peak rate (as in Smith's one-cycle).
ONECYCLE_START = 1 / 25
#: One-cycle rise length as a fraction of the run when ``warmup_epochs`` is 0.
ONECYCLE_RISE = 0.3


def build_optimizer(params: Iterable[Any], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum, optionally Nesterov), Adam or AdamW over ``params`` (or groups)."""
    params = list(params)
    if config.optimizer == "sgd":
        if config.nesterov and config.momentum == 0:
            raise ConfigError("nesterov=True: needs momentum > 0")
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor_fn(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier as a function of the 0-based iteration.

    Warm-up rises linearly over ``warmup_epochs`` (reaching the full rate at its last step);
    cosine then decays to ``min_lr``; step multiplies by ``gamma`` every ``step_size`` epochs;
    one-cycle rises from ``lr / 25`` (over ``warmup_epochs``, or 30 % of the run when that is 0)
    and decays by cosine to ``min_lr``; constant stays at ``lr``.
    """
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch={steps_per_epoch}: the training data gives no batch")
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    start = 0.0
    if config.schedule == "onecycle":
        start = ONECYCLE_START
        if warmup == 0:
            warmup = max(1, round(ONECYCLE_RISE * total))
    warmup = min(warmup, total)
    floor = config.min_lr / config.lr
    schedule, period, gamma = config.schedule, config.step_size * steps_per_epoch, config.gamma

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return gamma ** (step // period)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler to step once per iteration (after ``optimizer.step()``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor_fn(config, steps_per_epoch))


# ---------------------------------------------------------------------- losses
#: The losses :func:`build_loss` builds (``auto`` picks one of the others by task).
ENGINE_LOSSES = ("auto", "ce", "bce", "mse", "focal")


def resolve_loss_name(config: TrainConfig, task: str | None) -> str:
    """``config.loss``, with ``"auto"`` chosen from the task (multi-label: BCE, regression: MSE)."""
    if config.loss != "auto":
        return config.loss
    return {"multilabel": "bce", "regression": "mse"}.get(task or "classification", "ce")


def build_loss(config: TrainConfig, task: str | None = None) -> nn.Module:
    """The loss module for ``config.loss`` (and ``task`` for ``"auto"`` and focal's form).

    ``class_weights`` weight classes for CE and focal, and columns for BCE; ``label_smoothing``
    applies to CE and BCE.
    """
    name = resolve_loss_name(config, task)
    if name not in ENGINE_LOSSES:
        raise ConfigError(
            f"loss={config.loss!r}: not one of the engine's losses ({', '.join(ENGINE_LOSSES)}); "
            "a task's own loss is built by that task"
        )
    weight = None
    if config.class_weights is not None:
        weight = torch.tensor(config.class_weights, dtype=torch.float32)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    if name == "bce":
        return MaskedBCEWithLogitsLoss(weight=weight, label_smoothing=config.label_smoothing)
    if name == "mse":
        if weight is not None:
            raise ConfigError("class_weights: not supported with the mse loss")
        return RegressionMSELoss()
    mode = {"multilabel": "multilabel", "binary": "binary"}.get(task or "", "multiclass")
    return FocalLoss(config.focal_gamma, alpha=config.focal_alpha, weight=weight, mode=mode)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``valid`` entries (0 when none is valid, keeping the graph)."""
    values = torch.where(valid, values, torch.zeros_like(values))
    return values.sum() / valid.sum().clamp_min(1)


def _column_weight(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    shape = [1] * like.ndim
    shape[1 if like.ndim > 1 else 0] = -1
    return weight.to(like.dtype).view(shape)


class MaskedBCEWithLogitsLoss(nn.Module):
    """Multi-label BCE on logits; NaN targets (missing labels) are left out of the mean.

    Args:
        weight: per-class (column) weights.
        label_smoothing: targets move towards 0.5 by this fraction.
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype).reshape(logits.shape)
        valid = ~torch.isnan(target)
        target = torch.nan_to_num(target)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        w = _column_weight(self.weight, loss)
        if w is not None:
            loss = loss * w
        return _masked_mean(loss, valid)


class RegressionMSELoss(nn.Module):
    """MSE with the target reshaped to the output (``(N,)`` targets for ``(N, 1)`` outputs)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target.to(output.dtype).reshape(output.shape))


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``.

    With ``gamma = 0`` (and no ``alpha``) it equals cross-entropy (multiclass) or BCE.

    Args:
        gamma: focusing strength; easy examples (``p_t`` near 1) count less.
        alpha: sigmoid forms only: weight of positives (``1 - alpha`` for negatives).
        weight: multiclass: per-class weights, normalised like ``CrossEntropyLoss``'s;
            sigmoid forms: per-column weights.
        mode: ``"multiclass"`` (softmax over dim 1, integer targets), ``"binary"`` (one logit per
            sample) or ``"multilabel"`` (one logit per class; NaN targets ignored).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        *,
        alpha: float | None = None,
        weight: torch.Tensor | None = None,
        mode: str = "multiclass",
    ) -> None:
        super().__init__()
        if mode not in ("multiclass", "binary", "multilabel"):
            raise ValueError(f"mode must be multiclass, binary or multilabel, got {mode!r}")
        if mode == "multiclass" and alpha is not None:
            raise ConfigError("focal_alpha: only for sigmoid forms; use class_weights instead")
        self.gamma = float(gamma)
        self.alpha = alpha
        self.mode = mode
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mode == "multiclass":
            return self._softmax(logits.float(), target.long())
        return self._sigmoid(logits.float(), target)

    def _modulator(self, p_t: torch.Tensor) -> torch.Tensor | float:
        if self.gamma == 0:
            return 1.0
        base = 1 - p_t
        if self.gamma < 1:  # d/dx x**g is infinite at 0 for g < 1: keep the gradient finite
            base = base.clamp_min(1e-6)
        return base**self.gamma

    def _softmax(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -self._modulator(log_pt.exp()) * log_pt
        if self.weight is None:
            return loss.mean()
        w = self.weight.to(loss.dtype)[target]
        return (loss * w).sum() / w.sum()

    def _sigmoid(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype).reshape(logits.shape)
        valid = ~torch.isnan(target)
        target = torch.nan_to_num(target)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * self._modulator(p_t)
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        w = _column_weight(self.weight, loss)
        if w is not None:
            loss = loss * w
        return _masked_mean(loss, valid)
