"""Per-batch validation metrics and their sample-weighted mean over the validation batches.

The trainer's generic validation step computes the loss plus whatever a *batch metric* function
returns, so a task brings its own metrics (Dice, AUC proxies, ...) without subclassing. The
accuracy / MAE the trainer always reported are the default, chosen by :func:`batch_metrics_for`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from medlens.engine import distributed as D

__all__ = [
    "BatchMetrics",
    "batch_metrics_for",
    "mean_over_batches",
    "multiclass_accuracy",
    "multilabel_accuracy",
    "regression_mae",
]

#: ``fn(outputs, targets) -> {name: batch mean}``; outputs are float32 (after autocast). Each
#: value is the mean over the batch's samples, so the epoch value is their sample-weighted mean.
BatchMetrics = Callable[[torch.Tensor, Any], Mapping[str, torch.Tensor | float]]


def multilabel_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-label accuracy of logits thresholded at 0; NaN targets (missing labels) left out."""
    target = targets.float().reshape(outputs.shape)
    valid = ~torch.isnan(target)
    hits = ((outputs > 0) == (target > 0.5)) & valid
    return {"accuracy": hits.sum() / valid.sum().clamp_min(1)}


def regression_mae(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean absolute error, the targets reshaped to the outputs (``(N,)`` for ``(N, 1)``)."""
    return {"mae": (outputs - targets.float().reshape(outputs.shape)).abs().mean()}


def multiclass_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top-1 accuracy of ``(N, C, ...)`` logits; nothing for a single output column."""
    if outputs.ndim >= 2 and outputs.shape[1] > 1:
        return {"accuracy": (outputs.argmax(1) == targets).float().mean()}
    return {}


def batch_metrics_for(task: str | None, loss_kind: str) -> BatchMetrics:
    """The trainer's default metric for ``task`` and the resolved loss (``"ce"``, ``"bce"``...).

    Multi-label tasks or a BCE loss: label accuracy; regression or MSE: MAE; anything else:
    top-1 accuracy when the outputs have several columns. The order decides mixed cases, as it
    always has (a focal loss on a multi-label task reports label accuracy).
    """
    if task == "multilabel" or loss_kind == "bce":
        return multilabel_accuracy
    if task == "regression" or loss_kind == "mse":
        return regression_mae
    return multiclass_accuracy


def mean_over_batches(
    batches: Iterable[Any],
    step: Callable[[Any], Mapping[str, Any]],
    *,
    device: torch.device,
    dtype: torch.dtype,
    dist: D.DistInfo,
) -> dict[str, float]:
    """Sample-weighted means of ``step(batch)``'s values over all batches and ranks.

    ``step`` gets each batch as the loader gives it and returns batch means; they are weighted
    by the batch's sample count (``len(batch[0])``) so a short last batch counts as little as it
    should. Every rank returns the same dict (keys from rank 0, sums over all ranks).
    """
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in batches:
        n = len(batch[0])
        for key, value in step(batch).items():
            value = torch.as_tensor(value, dtype=dtype, device=device) * n
            sums[key] = sums[key] + value if key in sums else value
        count += n
    keys = D.broadcast_object(sorted(sums), dist)
    zero = torch.zeros((), dtype=dtype, device=device)
    totals = torch.stack([*(sums.get(k, zero) for k in keys), zero + count])
    totals = D.all_reduce_sum(totals, dist).tolist()
    return {k: totals[i] / max(totals[-1], 1) for i, k in enumerate(keys)}
