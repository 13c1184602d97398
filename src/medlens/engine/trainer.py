"""A small trainer: one epoch loop, an overridable step, hooks for everything else.

Optimisers and schedulers live in dicts keyed by name (``"model"`` by default), so a subclass
that trains two networks (a GAN) overrides :meth:`Trainer.configure_optimizers` and
:meth:`Trainer.train_step` and keeps checkpointing, AMP, EMA, logging and resume for free.
Everything a run needs to continue bit-identically after a kill is in its checkpoint.

Three seams serve tasks built on top: :meth:`Trainer.prepare` wraps the model, optimisers and
data for the run (DDP today, differential privacy next); ``fit(initial_weights=...,
max_steps=...)`` trains a round from given weights for a budget of steps (federated learning);
and ``batch_metrics`` chooses what the generic validation step reports besides the loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medlens.engine import distributed as D
from medlens.engine._start import (
    CHECKPOINT_FORMAT,
    Weights,
    apply_weights,
    checkpoint_to_resume,
    read_resumable,
    read_weights,
)
from medlens.engine._steps import StepHelpers, amp_dtype, resolve_device
from medlens.engine._validation import BatchMetrics, batch_metrics_for, mean_over_batches
from medlens.engine.callbacks import (
    BestTracker,
    HistoryWriter,
    ProgressBar,
    TensorBoardLogger,
)
from medlens.engine.checkpoint import get_rng_state, save_checkpoint, set_rng_state
from medlens.engine.config import ConfigError, TrainConfig, save_config
from medlens.engine.data import as_batches, mix_seed
from medlens.engine.ema import ModelEMA
from medlens.engine.optim import build_loss, build_optimizer, build_scheduler, resolve_loss_name
from medlens.engine.seed import deterministic_mode, seed_everything

__all__ = ["CHECKPOINT_FORMAT", "Trainer", "resolve_device"]

EvaluateFn = Callable[[nn.Module, Any], Mapping[str, float]]


class Trainer(StepHelpers):
    """Fit ``model`` on ``train_data`` as ``config`` says; validate on ``val_data`` each epoch.

    Args:
        model: the network, unwrapped (:meth:`prepare` wraps it in DDP under ``torchrun``).
        config: the run's settings; defaults when ``None``.
        train_data: ``(inputs, targets)`` tensors/arrays, a dataset (MedMNIST-like datasets are
            served from memory), or a :class:`TensorBatches`/:class:`LoaderBatches`.
        val_data: the same kinds, or ``None``.
        output_dir: run folder for ``config.json``, ``history.jsonl``, ``last.pt``, ``best.pt``
            and ``tensorboard/``; ``None`` writes nothing.
        evaluate_fn: ``evaluate_fn(model, val_data) -> {name: value}`` replacing the default
            validation (loss and accuracy); values are logged as ``val_<name>``.
        batch_metrics: ``batch_metrics(outputs, targets) -> {name: batch mean}`` reported by the
            default validation next to the loss, as ``val_<name>`` (sample-weighted over the
            batches and ranks); outputs are float32. By default :func:`batch_metrics_for` the
            task and loss: accuracy, or MAE for regression. Not with ``evaluate_fn``.
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
        batch_metrics: BatchMetrics | None = None,
    ) -> None:
        if evaluate_fn is not None and batch_metrics is not None:
            raise ConfigError("batch_metrics: used by the default validation only, not with "
                              "evaluate_fn (return those metrics from evaluate_fn)")  # fmt: skip
        self.model = model
        self.config = config or TrainConfig()
        self.train_data, self.val_data = train_data, val_data
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.evaluate_fn = evaluate_fn
        self.hooks = list(hooks)
        self.task = task or getattr(train_data, "task", None) or "classification"
        self.loss_fn = loss_fn if loss_fn is not None else build_loss(self.config, self.task)
        if batch_metrics is None:
            batch_metrics = batch_metrics_for(self.task, resolve_loss_name(self.config, self.task))
        self.batch_metrics = batch_metrics
        self.dist = D.current_dist()
        self.device = torch.device("cpu")
        self.train_model: nn.Module = model
        self.train_batches: Any = None
        self.val_batches: Any = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.scaler: torch.amp.GradScaler | None = None
        self.amp_dtype: torch.dtype | None = None
        self.ema: ModelEMA | None = None
        self.tracker = BestTracker(self.config.monitor_mode, self.config.early_stopping_min_delta)
        self.history: list[dict[str, Any]] = []
        self.epoch = self.start_epoch = self.global_step = self.steps_per_epoch = 0
        self.should_stop = False
        self.max_steps: int | None = None
        #: Added to the epoch when choosing its data order: earlier fits' epochs, so a later
        #: round draws new batches instead of replaying the first round's.
        self.data_epoch_offset = 0
        self._run_dir: Path | None = None  # the output_dir this trainer has started runs in
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
        """Batch means of the validation loss and of ``self.batch_metrics``' values."""
        inputs, targets = batch
        with self.autocast():
            outputs = model(inputs)
        outputs = outputs.float()
        metrics: dict[str, Any] = {"loss": self.loss_fn(outputs, targets)}
        extra = self.batch_metrics(outputs, targets)
        if "loss" in extra:
            raise ConfigError("batch_metrics: must not return 'loss' (the trainer reports it)")
        metrics.update(extra)
        return metrics

    def prepare(self) -> None:
        """Wrap the model, optimisers and data for the run: DDP under ``torchrun``, else nothing.

        The one place a subclass changes how a run trains without touching the loop, e.g.
        differential privacy with Opacus' ``PrivacyEngine.make_private(module, optimizer,
        data_loader)``. :meth:`fit` calls it once per call (each round of repeated fits gets its
        own call), last in setup, when everything is built:

        - ``self.device`` is chosen; ``self.model`` and ``self.loss_fn`` are on it, ``self.model``
          holding the starting weights (``initial_weights``, or the checkpoint's on resume);
        - ``self.optimizers`` and ``self.schedulers`` are built (from :meth:`configure_optimizers`)
          and, on resume, restored, as are ``self.scaler``, ``self.ema``, the counters, the
          history and the subclass's :meth:`load_extra` state;
        - ``self.train_batches`` / ``self.val_batches`` are built (this rank's shard) and
          ``self.steps_per_epoch`` is the number of training batches;
        - ``self.train_model`` is ``self.model`` (a previous fit's wrapper is dropped).

        It may replace ``self.train_model`` (what :meth:`train_step` calls: it must share
        ``self.model``'s parameters, which checkpoints, EMA and validation read),
        ``self.optimizers[name]`` (by a wrapper sharing the built optimiser's ``param_groups``,
        which the schedulers keep setting; checkpoints save the wrapper's ``state_dict()``),
        ``self.train_batches`` and ``self.val_batches`` (set ``self.steps_per_epoch`` when the
        length changes; the schedule was built for the old one). Marks a wrapper leaves on
        ``self.model`` itself (hooks) are the subclass's to remove before the next fit.
        """
        self.train_model = D.wrap_model(self.model, self.device, self.dist)

    def extra_state(self) -> dict[str, Any]:
        """More plain state for the checkpoint (subclasses); restored by :meth:`load_extra`."""
        return {}

    def load_extra(self, state: dict[str, Any]) -> None: ...

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        *,
        resume: bool | str | Path = False,
        initial_weights: Weights | None = None,
        max_steps: int | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` (or until early stopping or ``max_steps``); the history.

        Each call is a run of its own: optimisers, schedulers, scaler, EMA, batches, counters,
        history and best metric are built afresh, so optimiser state (momentum, Adam moments)
        does not carry over from an earlier call (``resume`` is how a run continues), and
        :meth:`prepare` wraps them again. Repeated calls are thus rounds, e.g. federated::

            for _ in range(rounds):
                trainer.fit(initial_weights=server_weights, max_steps=local_steps)
                server_weights = aggregate(trainer.model.state_dict(), ...)

        A later call draws new data orders and random streams (not the first call's again) and
        may reuse the ``output_dir`` this trainer wrote: its files then describe the latest call.

        Args:
            resume: ``True`` continues from ``output_dir/last.pt``, a path from that checkpoint.
            initial_weights: a state dict, or a file holding one (read with ``weights_only``;
                a medlens training checkpoint gives its ``"model"``), copied into the model
                before training; keys and shapes must match. Not with ``resume``.
            max_steps: stop once the run has taken this many optimiser steps (``global_step``,
                counted from the run's start: a resumed run takes the rest), possibly inside an
                epoch, which is then recorded (loss over its steps so far), validated and
                checkpointed like a last epoch, and counts as done on resume.
                ``config.epochs`` still sets the schedule's length and must allow the budget.
        """
        if resume and initial_weights is not None:
            raise ConfigError("initial_weights: not with resume (the checkpoint has the weights)")
        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) < 1):
            raise ConfigError(f"max_steps={max_steps!r}: must be a positive number of steps")
        self.max_steps = None if max_steps is None else int(max_steps)
        owns_group = D.launched_by_torchrun() and not D.current_dist().enabled
        self.dist = D.init_distributed()
        threads = torch.get_num_threads()
        try:
            if self.config.num_threads:
                torch.set_num_threads(self.config.num_threads)
            with deterministic_mode(self.config.deterministic):
                self._setup(resume, initial_weights)
                self._emit("on_fit_start")
                for epoch in range(self.start_epoch + 1, self.config.epochs + 1):
                    if self.should_stop or self._budget_spent():
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

    def _setup(self, resume: bool | str | Path, initial_weights: Weights | None) -> None:
        config, info = self.config, self.dist
        if self.train_data is None:
            raise ConfigError("Trainer.fit needs train_data")
        checkpoint = checkpoint_to_resume(resume, self.output_dir, self._run_dir)
        weights = None if initial_weights is None else read_weights(initial_weights)
        self._new_run()
        offset = self.data_epoch_offset  # 0 on a first fit: the seed it always had
        seed_everything(
            mix_seed(config.seed, info.rank, offset) if offset else config.seed + info.rank
        )
        self.device = resolve_device(config.device, info.local_rank)
        self.model.to(self.device)
        self.loss_fn.to(self.device)
        if weights is not None:
            apply_weights(self.model, *weights)
        if config.ema_decay is not None:
            self.ema = ModelEMA(self.model, config.ema_decay)
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
        if self.max_steps is not None and self.max_steps > config.epochs * self.steps_per_epoch:
            raise ConfigError(
                f"max_steps={self.max_steps}: more than epochs={config.epochs} x "
                f"{self.steps_per_epoch} batches allow; raise epochs (it sets the schedule too)"
            )
        self.optimizers, self.schedulers = self.configure_optimizers()
        self.amp_dtype = amp_dtype(config.amp, self.device)
        fp16 = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.prepare()
        self.callbacks = [*self._builtin_callbacks(), *self.hooks]
        self._run_dir = self.output_dir
        if info.is_main and self.output_dir is not None:
            save_config(config, self.output_dir / "config.json")

    def _new_run(self) -> None:
        """Forget an earlier fit's run (a no-op on a new trainer); a resume then restores all."""
        self.data_epoch_offset += self.epoch
        self.history = []
        self.epoch = self.start_epoch = self.global_step = 0
        self.should_stop = False
        self.tracker = BestTracker(self.config.monitor_mode, self.config.early_stopping_min_delta)
        self.ema = None
        self.train_model = self.model

    def _budget_spent(self) -> bool:
        return self.max_steps is not None and self.global_step >= self.max_steps

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
            self.train_batches.set_epoch(self.data_epoch_offset + epoch)
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
            if self._budget_spent():
                break  # max_steps inside the epoch: record, validate and save it as the last
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
        last = epoch >= self.config.epochs or self._budget_spent()
        return every == 1 or epoch % every == 0 or last

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
        return mean_over_batches(
            self.val_batches,
            lambda batch: self.validation_step(self.to_device(batch), model),
            device=self.device,
            dtype=self._sum_dtype,
            dist=self.dist,
        )

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
            "data_epoch_offset": self.data_epoch_offset,
        }

    def _save(self, improved: bool) -> None:
        state = self.state_dict()  # a collective under DDP: every rank takes part
        if self.output_dir is None or not self.dist.is_main:
            return
        save_checkpoint(self.output_dir / "last.pt", state)
        if improved:
            save_checkpoint(self.output_dir / "best.pt", state)

    def _restore(self, path: Path) -> None:
        state = read_resumable(path, self.config, self.optimizers)
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
        self.data_epoch_offset = int(state.get("data_epoch_offset", 0))  # older checkpoints: 0
        rng = state["rng"]
        set_rng_state(rng[self.dist.rank % len(rng)])
        self.load_extra(state.get("extra", {}))
