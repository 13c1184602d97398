"""What a training step uses: the device, mixed precision, the backward pass, the running loss.

Kept apart from the loop in :mod:`medlens.engine.trainer` so an overridden ``train_step`` has
one small, stable toolbox (:class:`StepHelpers`, a base of :class:`~medlens.engine.Trainer`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from medlens.engine.config import TrainConfig

__all__ = ["StepHelpers", "amp_dtype", "native_bf16", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """fp16 on CUDA for ``auto``/``on``; bf16 on the CPU only when asked with ``on``."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    if mode == "on":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    return None


class StepHelpers:
    """Step helpers over the trainer's device, AMP settings, optimisers and loss sums."""

    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    optimizers: dict[str, torch.optim.Optimizer]
    scaler: torch.amp.GradScaler | None
    _loss_sum: torch.Tensor | None
    _loss_count: int

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for the forward pass when the config and device enable it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def backward_step(self, loss: torch.Tensor, name: str = "model") -> None:
        """Zero, backpropagate (scaled under fp16), clip and step optimiser ``name``."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.scaler.step(optimizer)

    def to_device(self, batch: Any) -> Any:
        """``batch`` with every tensor moved to the training device."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch

    @property
    def _sum_dtype(self) -> torch.dtype:
        """Metric sums in float64 (exact counts), except where the device lacks it (MPS)."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def running_loss(self) -> float:
        """Mean training loss of the current epoch so far on this rank (syncs the device)."""
        if self._loss_sum is None or not self._loss_count:
            return float("nan")
        return float(self._loss_sum) / self._loss_count
