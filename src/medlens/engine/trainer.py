"""A small trainer: one epoch loop, an overridable step, hooks for everything else.

Optimisers and schedulers live in dicts keyed by name (``"model"`` by default), so a subclass
that trains two networks (a GAN) overrides :meth:`Trainer.configure_optimizers` and
:meth:`Trainer.train_step` and keeps checkpointing, AMP, EMA, logging and resume for free.
Everything a run needs to continue bit-identically after a kill is in its checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.engine import distributed as D
from medlens.engine.callbacks import (
    BestTracker,
    HistoryWriter,
    ProgressBar,
    TensorBoardLogger,
)
from medlens.engine.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from medlens.engine.config import RESUME_MUTABLE, ConfigError, TrainConfig, save_config
from medlens.engine.data import as_batches
from medlens.engine.ema import ModelEMA
from medlens.engine.optim import build_loss, build_optimizer, build_scheduler, resolve_loss_name
from medlens.engine.seed import deterministic_mode, seed_everything

__all__ = ["CHECKPOINT_FORMAT", "Trainer", "resolve_device"]

CHECKPOINT_FORMAT = "medlens.engine/1"
EvaluateFn = Callable[[nn.Module, Any], Mapping[str, float]]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


class Trainer:
    """Fit ``model`` on ``train_data`` as ``config`` says; validate on ``val_data`` each epoch.

    Args:
        model: the network (not wrapped; DDP wrapping happens here under ``torchrun``).
        config: the run's settings; defaults when ``None``.
        train_data: ``(inputs, targets)`` tensors/arrays, a dataset (MedMNIST-like datasets are
            served from memory), or a :class:`TensorBatches`/:class:`LoaderBatches`.
        val_data: the same kinds, or ``None``.
        output_dir: run folder for ``config.json``, ``history.jsonl``, ``last.pt``, ``best.pt``
            and ``tensorboard/``; ``None`` writes nothing.
        evaluate_fn: ``evaluate_fn(model, val_data) -> {name: value}`` replacing the default
            validation (loss and accuracy); values are logged as ``val_<name>``.
        hooks: :class:`Callback`-like objects called at fit/epoch/batch boundaries.
        loss_fn: a loss module instead of the one the config describes.
        task: ``"classification"``, ``"multilabel"``, ``"regression"``, ...; taken from the
            data's ``task`` attribute when not given.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        train_data: Any = None,
        val_data: Any = None,
        *,
        output_dir: str | Path | None = None,
        evaluate_fn: EvaluateFn | None = None,
        hooks: Iterable[Any] = (),
        loss_fn: nn.Module | None = None,
        task: str | None = None,
    ) -> None:
        self.model = model
        self.config = config or TrainConfig()
        self.train_data, self.val_data = train_data, val_data
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.evaluate_fn = evaluate_fn
        self.hooks = list(hooks)
        self.task = task or getattr(train_data, "task", None) or "classification"
        self.loss_fn = loss_fn if loss_fn is not None else build_loss(self.config, self.task)
        self.dist = D.current_dist()
        self.device = torch.device("cpu")
        self.train_model: nn.Module = model
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.scaler: torch.amp.GradScaler | None = None
        self.amp_dtype: torch.dtype | None = None
        self.ema: ModelEMA | None = None
        self.tracker = BestTracker(self.config.monitor_mode, self.config.early_stopping_min_delta)
        self.history: list[dict[str, Any]] = []
        self.epoch = self.start_epoch = self.global_step = self.steps_per_epoch = 0
        self.should_stop = False
        self.callbacks: list[Any] = []
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    # ------------------------------------------------------------------ to override
    def configure_optimizers(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Optimisers and per-iteration schedulers by name; override for several networks."""
        optimizer = build_optimizer(self.model.parameters(), self.config)
        scheduler = build_scheduler(optimizer, self.config, self.steps_per_epoch)
        return {"model": optimizer}, {"model": scheduler}

    def train_step(self, batch: Any) -> dict[str, Any]:
        """One optimisation step on ``batch``; returns at least ``{"loss": tensor}``."""
        inputs, targets = batch
        with self.autocast():
            outputs = self.train_model(inputs)
            loss = self.loss_fn(outputs, targets)
        self.backward_step(loss, "model")
        return {"loss": loss.detach()}

    def validation_step(self, batch: Any, model: nn.Module) -> dict[str, Any]:
        """Batch means of the validation metrics (loss; accuracy or MAE by task)."""
        inputs, targets = batch
        with self.autocast():
            outputs = model(inputs)
        outputs = outputs.float()
        metrics: dict[str, Any] = {"loss": self.loss_fn(outputs, targets)}
        kind = resolve_loss_name(self.config, self.task)
        if self.task == "multilabel" or kind == "bce":
            target = targets.float().reshape(outputs.shape)
            valid = ~torch.isnan(target)
            hits = ((outputs > 0) == (target > 0.5)) & valid
            metrics["accuracy"] = hits.sum() / valid.sum().clamp_min(1)
        elif self.task == "regression" or kind == "mse":
            metrics["mae"] = (outputs - targets.float().reshape(outputs.shape)).abs().mean()
        elif outputs.ndim >= 2 and outputs.shape[1] > 1:
            metrics["accuracy"] = (outputs.argmax(1) == targets).float().mean()
        return metrics

    def extra_state(self) -> dict[str, Any]:
        """More plain state for the checkpoint (subclasses); restored by :meth:`load_extra`."""
        return {}

    def load_extra(self, state: dict[str, Any]) -> None: ...

    # ------------------------------------------------------------------ step helpers
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

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool | str | Path = False) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` (or until early stopping); returns the history.

        Args:
            resume: ``True`` continues from ``output_dir/last.pt``, a path from that checkpoint.
        """
        owns_group = D.launched_by_torchrun() and not D.current_dist().enabled
        self.dist = D.init_distributed()
        threads = torch.get_num_threads()
        try:
            if self.config.num_threads:
                torch.set_num_threads(self.config.num_threads)
            with deterministic_mode(self.config.deterministic):
                self._setup(resume)
                self._emit("on_fit_start")
                for epoch in range(self.start_epoch + 1, self.config.epochs + 1):
                    if self.should_stop:
                        break
                    self._run_epoch(epoch)
                self._emit("on_fit_end")
        finally:
            torch.set_num_threads(threads)
            for callback in self.callbacks:
                if isinstance(callback, (ProgressBar, TensorBoardLogger)):
                    callback.on_fit_end(self)
            if owns_group:
                D.destroy_distributed()
        return self.history

    def _setup(self, resume: bool | str | Path) -> None:
        config, info = self.config, self.dist
        if self.train_data is None:
            raise ConfigError("Trainer.fit needs train_data")
        checkpoint = self._checkpoint_to_resume(resume)
        seed_everything(config.seed + info.rank)
        self.device = resolve_device(config.device, info.local_rank)
        self.model.to(self.device)
        self.loss_fn.to(self.device)
        if config.ema_decay is not None:
            self.ema = ModelEMA(self.model, config.ema_decay)
        self.train_model = D.wrap_model(self.model, self.device, info)
        common = {"seed": config.seed, "rank": info.rank, "world_size": info.world_size}
        self.train_batches = as_batches(
            self.train_data,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=config.drop_last,
            num_workers=config.num_workers,
            even=True,
            **common,
        )
        self.val_batches = None
        if self.val_data is not None and self.evaluate_fn is None:
            self.val_batches = as_batches(
                self.val_data,
                batch_size=config.eval_batch_size or config.batch_size,
                shuffle=False,
                num_workers=config.num_workers,
                even=False,
                **common,
            )
        for batches in (self.train_batches, self.val_batches):
            if hasattr(batches, "device") and batches.device is None:
                batches.device = self.device
        self.steps_per_epoch = len(self.train_batches)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training data gives no batch (empty, or drop_last with too few)")
        self.optimizers, self.schedulers = self.configure_optimizers()
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        fp16 = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.callbacks = [*self._builtin_callbacks(), *self.hooks]
        if info.is_main and self.output_dir is not None:
            save_config(config, self.output_dir / "config.json")

    def _checkpoint_to_resume(self, resume: bool | str | Path) -> Path | None:
        last = None if self.output_dir is None else self.output_dir / "last.pt"
        if not resume:
            if last is not None and last.exists():
                raise CheckpointError("holds a run already; resume it or use a new folder", last)
            return None
        if resume is True:
            if last is None:
                raise CheckpointError("resume=True needs an output_dir (or a checkpoint path)")
            return last
        return Path(resume)

    def _builtin_callbacks(self) -> list[Any]:
        if not self.dist.is_main:
            return []
        out: list[Any] = []
        if self.output_dir is not None:
            out.append(HistoryWriter(self.output_dir / "history.jsonl"))
            if self.config.tensorboard and TensorBoardLogger.available():
                out.append(TensorBoardLogger(self.output_dir / "tensorboard"))
        if self.config.progress:
            out.append(ProgressBar())
        return out

    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(self, *args)

    def _run_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        started = time.perf_counter()
        if hasattr(self.train_batches, "set_epoch"):
            self.train_batches.set_epoch(epoch)
        self.train_model.train()
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0
        self._emit("on_epoch_start", epoch)
        lrs: dict[str, float] = {}
        for index, batch in enumerate(self.train_batches):
            outputs = self.train_step(self.to_device(batch))
            lrs = {name: opt.param_groups[0]["lr"] for name, opt in self.optimizers.items()}
            self.scaler.update()
            for scheduler in self.schedulers.values():
                scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.global_step += 1
            self._loss_sum += outputs["loss"].detach().float()
            self._loss_count += 1
            self._emit("on_batch_end", index, outputs)
        count = torch.tensor(self._loss_count, device=self.device)
        totals = torch.stack([self._loss_sum, count]).to(self._sum_dtype)
        totals = D.all_reduce_sum(totals, self.dist)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": float(totals[0] / totals[1])}
        for name, lr in lrs.items():  # the rate of the epoch's last step
            record["lr" if len(lrs) == 1 else f"lr_{name}"] = float(lr)
        if self._validates(epoch):
            record.update({f"val_{k}": v for k, v in self.evaluate().items()})
        record["time"] = round(time.perf_counter() - started, 4)
        improved = self._track(record)
        self.history.append(record)
        self._save(improved)
        self._emit("on_epoch_end", epoch, record)

    def _validates(self, epoch: int) -> bool:
        if self.val_batches is None and self.evaluate_fn is None:
            return False
        every = self.config.val_every
        return every == 1 or epoch % every == 0 or epoch >= self.config.epochs

    def _track(self, record: dict[str, Any]) -> bool:
        config = self.config
        value = record.get(config.monitor)
        if value is None:
            if config.monitor.startswith("val_") and not self._validates(record["epoch"]):
                return False  # not a validation epoch
            if config.early_stopping_patience is not None:
                keys = ", ".join(k for k in record if k not in ("epoch", "time"))
                raise ConfigError(f"monitor={config.monitor!r}: not among the metrics ({keys})")
            return False
        improved = self.tracker.update(float(value), record["epoch"])
        patience = config.early_stopping_patience
        if patience is not None and self.tracker.bad_epochs >= patience:
            self.should_stop = True
        return improved

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the EMA model (or the model), identical on every rank."""
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        try:
            if self.evaluate_fn is not None:
                metrics = None
                if self.dist.is_main:
                    metrics = {
                        k: float(v) for k, v in self.evaluate_fn(model, self.val_data).items()
                    }
                return D.broadcast_object(metrics, self.dist)
            return self._default_evaluate(model)
        finally:
            model.train(was_training)

    def _default_evaluate(self, model: nn.Module) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self.val_batches:
            batch = self.to_device(batch)
            n = len(batch[0])
            for key, value in self.validation_step(batch, model).items():
                value = torch.as_tensor(value, dtype=self._sum_dtype, device=self.device) * n
                sums[key] = sums[key] + value if key in sums else value
            count += n
        keys = D.broadcast_object(sorted(sums), self.dist)
        zero = torch.zeros((), dtype=self._sum_dtype, device=self.device)
        totals = torch.stack([*(sums.get(k, zero) for k in keys), zero + count])
        totals = D.all_reduce_sum(totals, self.dist).tolist()
        return {k: totals[i] / max(totals[-1], 1) for i, k in enumerate(keys)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The whole resumable state as plain values (the checkpoint's content)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "stopped": self.should_stop,
            "history": [dict(r) for r in self.history],
            "rng": D.all_gather_objects(get_rng_state(), self.dist),
            "world_size": self.dist.world_size,
            "extra": self.extra_state(),
        }

    def _save(self, improved: bool) -> None:
        state = self.state_dict()  # a collective under DDP: every rank takes part
        if self.output_dir is None or not self.dist.is_main:
            return
        save_checkpoint(self.output_dir / "last.pt", state)
        if improved:
            save_checkpoint(self.output_dir / "best.pt", state)

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a {CHECKPOINT_FORMAT} training checkpoint", path)
        saved = TrainConfig.from_dict(state["config"])
        changed = saved.differences(self.config, ignore=RESUME_MUTABLE)
        if changed:
            raise CheckpointError(
                "the configuration differs from the checkpoint's (only epochs and display "
                f"settings may change on resume): {'; '.join(changed)}",
                path,
            )
        if set(state["optimizers"]) != set(self.optimizers):
            raise CheckpointError(
                f"the checkpoint has optimisers {sorted(state['optimizers'])}, this trainer "
                f"{sorted(self.optimizers)}",
                path,
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.scaler.load_state_dict(state["scaler"])
        self.tracker.load_state_dict(state["tracker"])
        self.history = list(state["history"])
        self.epoch = self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.should_stop = bool(state["stopped"])
        rng = state["rng"]
        set_rng_state(rng[self.dist.rank % len(rng)])
        self.load_extra(state.get("extra", {}))


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """fp16 on CUDA for ``auto``/``on``; bf16 on the CPU only when asked with ``on``."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.float16
    if mode == "on":
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    return None
