"""A tiny training script driven by the kill/resume and torchrun tests (not collected).

``python train_script.py --output DIR [--resume] key=value ...`` trains a small network on a
fixed toy problem and saves each rank's final weights as ``DIR/final_rank<r>.pt``. Test knobs
come through the environment: ``MEDLENS_TEST_KILL=E:B`` SIGKILLs the process after batch ``B`` of
epoch ``E``; ``MEDLENS_TEST_PLAIN=1`` uses a linear model without BatchNorm/dropout/augmentation
(so a 2-process run can be compared with a 1-process one).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

import torch
from torch import nn

from medlens.engine import (
    Callback,
    TensorBatches,
    TrainConfig,
    Trainer,
    parse_train_args,
    seed_everything,
)

DEFAULTS = TrainConfig(
    epochs=5,
    batch_size=8,
    optimizer="adamw",
    lr=0.01,
    weight_decay=0.01,
    schedule="cosine",
    warmup_epochs=1,
    ema_decay=0.8,
    grad_clip=1.0,
    monitor="val_accuracy",
    monitor_mode="max",
    num_threads=1,
    progress=False,
    tensorboard=False,
)


def make_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Three Gaussian blobs in 6-D: 64 training and 31 validation points."""
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(0, 3, (95,), generator=g)
    centres = torch.randn(3, 6, generator=g) * 2
    points = centres[labels] + torch.randn(95, 6, generator=g)
    return (points[:64], labels[:64]), (points[64:], labels[64:])


def make_model(seed: int, plain: bool) -> nn.Module:
    seed_everything(seed)
    if plain:
        return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)
    )


def jitter(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Batch augmentation drawing from the batches' own generator."""
    return inputs + 0.1 * torch.randn(inputs.shape, generator=generator)


class KillAt(Callback):
    """SIGKILL this process mid-epoch: no cleanup, no flushing, like a pre-empted job."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, trainer, batch_index, outputs) -> None:
        if trainer.epoch == self.epoch and batch_index == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> Trainer:
    config, args = parse_train_args(argv, defaults=DEFAULTS)
    plain = os.environ.get("MEDLENS_TEST_PLAIN") == "1"
    kill = os.environ.get("MEDLENS_TEST_KILL")
    hooks = [KillAt(*map(int, kill.split(":")))] if kill else []
    (x, y), val = make_data()
    train = TensorBatches(
        x,
        y,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        augment=None if plain else jitter,
    )
    model = make_model(config.seed, plain)
    trainer = Trainer(model, config, train, val, output_dir=args.output, hooks=hooks)
    trainer.fit(resume=args.resume)
    # trainer.dist keeps the rank after fit() has left the process group it joined.
    torch.save(model.state_dict(), args.output / f"final_rank{trainer.dist.rank}.pt")
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
