"""Training engine: a small :class:`Trainer` with hooks, typed configuration and safe resume.

Typical use::

    config, args = parse_train_args()          # --config, --output, --resume, key=value ...
    trainer = Trainer(model, config, train, val, output_dir=args.output)
    history = trainer.fit(resume=args.resume)

Under ``torchrun`` the same script trains with DistributedDataParallel (gloo on the CPU, NCCL on
GPUs); rank 0 writes checkpoints, logs and the progress bar.
"""

from __future__ import annotations

from medlens.engine._steps import native_bf16
from medlens.engine._validation import (
    BatchMetrics,
    batch_metrics_for,
    multiclass_accuracy,
    multilabel_accuracy,
    regression_mae,
)
from medlens.engine.callbacks import (
    BestTracker,
    Callback,
    HistoryWriter,
    ProgressBar,
    TensorBoardLogger,
)
from medlens.engine.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    load_weights,
    reported_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from medlens.engine.config import (
    RESUME_MUTABLE,
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_train_args,
    save_config,
)
from medlens.engine.data import (
    EpochBatches,
    LoaderBatches,
    TensorBatches,
    as_batches,
    collate_samples,
)
from medlens.engine.distributed import (
    DistInfo,
    current_dist,
    destroy_distributed,
    init_distributed,
    wrap_model,
)
from medlens.engine.ema import ModelEMA
from medlens.engine.optim import (
    FocalLoss,
    MaskedBCEWithLogitsLoss,
    RegressionMSELoss,
    build_loss,
    build_optimizer,
    build_scheduler,
    lr_factor_fn,
)
from medlens.engine.seed import deterministic_mode, seed_everything
from medlens.engine.trainer import Trainer, resolve_device

__all__ = [
    "RESUME_MUTABLE",
    "BatchMetrics",
    "BestTracker",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "DistInfo",
    "EpochBatches",
    "FocalLoss",
    "HistoryWriter",
    "LoaderBatches",
    "MaskedBCEWithLogitsLoss",
    "ModelEMA",
    "ProgressBar",
    "RegressionMSELoss",
    "TensorBatches",
    "TensorBoardLogger",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "as_batches",
    "batch_metrics_for",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "collate_samples",
    "current_dist",
    "destroy_distributed",
    "deterministic_mode",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "load_weights",
    "lr_factor_fn",
    "multiclass_accuracy",
    "multilabel_accuracy",
    "native_bf16",
    "parse_train_args",
    "regression_mae",
    "reported_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "save_config",
    "seed_everything",
    "set_rng_state",
    "wrap_model",
]
