"""Hooks into the training loop, and the built-in ones: history file, TensorBoard, progress bar.

A hook is any object with some of the :class:`Callback` methods; the trainer calls those it
has, in order. Hooks see the trainer itself, so they can read its state (``trainer.epoch``,
``trainer.history``) or stop the run (``trainer.should_stop = True``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens._atomic import atomic_write_text

if TYPE_CHECKING:
    from medlens.engine.trainer import Trainer

__all__ = ["BestTracker", "Callback", "HistoryWriter", "ProgressBar", "TensorBoardLogger"]


class Callback:
    """Base class of hooks; every method is a no-op to override.

    ``outputs`` is what :meth:`Trainer.train_step` returned; ``record`` is the epoch's history
    entry (``epoch``, ``train_loss``, ``lr``, ``val_*`` metrics, ``time``).
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, batch_index: int, outputs: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


@dataclass
class BestTracker:
    """The best value of the monitored metric so far, and epochs since it last improved."""

    mode: str = "min"
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value`` for ``epoch``; whether it is a new best."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


class HistoryWriter(Callback):
    """Rewrites ``history.jsonl`` (one JSON object per epoch) atomically after every epoch.

    Rewriting from the trainer's history (which the checkpoint also holds) keeps the file in
    step with the checkpoint after a kill and a resume: no duplicated or half-written lines.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in history))

    def on_fit_start(self, trainer: Trainer) -> None:
        self.write(trainer.history)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        self.write(trainer.history)


class TensorBoardLogger(Callback):
    """Per-epoch scalars to TensorBoard; does nothing when ``tensorboard`` is not installed."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    @staticmethod
    def available() -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            return False
        return True

    def on_fit_start(self, trainer: Trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        # Drop events a killed run logged after its last checkpoint.
        purge = trainer.start_epoch + 1 if trainer.start_epoch else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A rich progress bar with the running loss and the last monitored metric.

    Shown on a terminal; the running loss is read (a device sync) at most every ``refresh``
    seconds. When stderr is not a terminal (a log file, a pipe, a batch job) one plain line per
    epoch is printed instead, so long runs show progress there too.
    """

    def __init__(self, refresh: float = 0.2, *, force: bool = False) -> None:
        self.refresh = refresh
        self.force = force
        self.progress: Any = None
        self.task: Any = None
        self.plain = False
        self._last = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=sys.stderr)
        if not (self.force or console.is_terminal):
            self.plain = True
            return
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[metric]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.progress.start()

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.progress is None:
            return
        metric = ""
        if trainer.history and trainer.config.monitor in trainer.history[-1]:
            metric = f"{trainer.config.monitor} {trainer.history[-1][trainer.config.monitor]:.4g}"
        fields = {"epoch": f"{epoch}/{trainer.config.epochs}", "loss": "-", "metric": metric}
        if self.task is None:
            self.task = self.progress.add_task("train", total=trainer.steps_per_epoch, **fields)
        else:
            self.progress.reset(self.task, total=trainer.steps_per_epoch, **fields)

    def on_batch_end(self, trainer: Trainer, batch_index: int, outputs: dict[str, Any]) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        fields = {}
        if now - self._last >= self.refresh or batch_index + 1 == trainer.steps_per_epoch:
            self._last = now
            fields["loss"] = f"{trainer.running_loss():.4f}"
        self.progress.update(self.task, advance=1, **fields)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if not self.plain:
            return
        parts = [f"epoch {epoch}/{trainer.config.epochs}", f"loss {record['train_loss']:.4f}"]
        parts += [f"{k} {v:.4g}" for k, v in record.items()
                  if k.startswith("val_") and isinstance(v, float)]  # fmt: skip
        print(", ".join(parts) + f" ({record.get('time', 0.0):.1f} s)", file=sys.stderr, flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.plain = False
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None
