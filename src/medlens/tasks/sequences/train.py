"""Training the sequence models on cine folders, and measuring EF with them.

Two jobs, each a run folder like the platform's (``run.json``, ``splits.json``, ``fold-0/`` with
the engine's checkpoints, resumable):

* :func:`train_temporal_segmentation`: a :class:`~medlens.models.TemporalUNet` (``temporal``
  ``"gru"``, ``"lstm"``, ``"conv"`` or ``"none"`` for the per-frame baseline of the same
  network) on whole slices' cycles, loss cross-entropy + soft Dice of the cavity; the best epoch
  by the validation cases' mean absolute EF error (the measurement the model is for);
* :func:`train_cine_regression`: a :class:`~medlens.models.SequenceNet` (``cnn-gru``) that
  regresses a cine's value (EF by default) from its frames, the slices as channels; L1 loss;
  the best epoch by the validation cases' mean absolute error.

Cases are split 80/20 grouped by subject (the background patient of a phantom). The EF of a
segmentation run comes from its label maps by the summation of discs
(:mod:`medlens.measure.cardiac`), as ``medlens measure cardiac`` measures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens import __version__
from medlens._atomic import atomic_write_json, ensure_outside
from medlens.errors import MedlensError
from medlens.tasks.run_folder import RunFolder, failed_cleanly, run_format
from medlens.tasks.sequences.data import (
    CineBatches,
    CineSet,
    SliceSequences,
    cine_input,
    describe,
    slice_inputs,
)

__all__ = ["load_sequence_run", "measure_ef", "train_cine_regression",
           "train_temporal_segmentation"]  # fmt: skip

VAL_FRACTION = 0.2
SCALE = 100.0  # EF in percent is regressed as a fraction


class SegmentationLoss(nn.Module):
    """Cross-entropy plus soft Dice of the foreground, over every frame of the batch."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat = logits.reshape(-1, *logits.shape[2:])  # (B * T, K, H, W)
        target = labels.reshape(-1, *labels.shape[2:])
        ce = nn.functional.cross_entropy(flat, target)
        prob = flat.softmax(dim=1)[:, 1]
        fg = (target == 1).float()
        dice = (2 * (prob * fg).sum() + 1) / (prob.sum() + fg.sum() + 1)
        return ce + (1 - dice)


def _network(spec: dict[str, Any]) -> nn.Module:
    from medlens.models import create_model

    if spec["kind"] == "segmentation":
        return create_model(
            "temporal-unet",
            spatial_dims=2,
            in_channels=1,
            num_classes=2,
            features=tuple(spec["features"]),
            temporal=spec["temporal"],
        )
    return create_model("cnn-gru", spatial_dims=2, in_channels=spec["slices"], num_classes=1,
                        features=tuple(spec["features"]), hidden=spec["hidden"])  # fmt: skip


@torch.no_grad()
def measure_ef(network: nn.Module, spec: dict[str, Any], cine: np.ndarray,
               spacing) -> tuple[float, np.ndarray | None]:  # fmt: skip
    """EF (%) of one cine ``(t, z, y, x)`` and, for segmentation, its label maps."""
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    network.eval()
    if spec["kind"] == "regression":
        return float(network(cine_input(cine, spec["slices"]))[0, 0]) * SCALE, None
    masks = np.stack([network(x[None])[0].argmax(1).numpy().astype(np.uint8)
                      for x in slice_inputs(cine)], axis=1)  # (t, z, h, w)  # fmt: skip
    volumes = volume_curve(cavity_areas(masks, spacing[:2]), float(spacing[2]))
    if volumes.max() <= 0:
        return 0.0, masks
    return float(cardiac_indices(volumes)["ef_percent"]), masks


def _ef_error(network, spec, data: CineSet, cases: list[int]) -> float:
    errors = []
    for i in cases:
        cine, _, spacing = data.load(i)
        ef, _ = measure_ef(network, spec, cine, spacing)
        errors.append(abs(ef - data.value(i, "ef_percent")))
    return float(np.mean(errors))


def _train(
    data: Path,
    output: Path,
    spec: dict[str, Any],
    *,
    epochs: int,
    batches: int,
    lr: float,
    seed: int,
    resume: bool,
    progress: bool,
    log: Callable,
) -> dict[str, Any]:
    from medlens.data import save_splits, train_val_split
    from medlens.engine import TrainConfig, Trainer

    ensure_outside(output, data)
    cines = CineSet(data)
    task = f"sequence-{spec['kind']}"
    if not resume:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use resume or a new folder")
        split = train_val_split(cines.ids, VAL_FRACTION, groups=cines.subjects(), stratify=False,
                                seed=seed, ids=cines.ids)  # fmt: skip
        output.mkdir(parents=True, exist_ok=True)
        save_splits(output / "splits.json", split)
        atomic_write_json(output / "sequence.json", spec)
    split = json.loads((output / "splits.json").read_text())["folds"][0]
    train, val = [int(i) for i in split["train_indices"]], [int(i) for i in split["val_indices"]]
    info = {"format": run_format(task), "medlens": __version__, "task": task, "status": "training",
            "data": {"source": str(data), "cases": len(cines), "simulated": cines.simulated},
            "seed": seed, "spec": spec}  # fmt: skip
    RunFolder(output).write(info)
    log(f"{task}: {len(train)} training and {len(val)} validation cines ({describe(cines)})")
    if spec["kind"] == "segmentation":
        batches_iter = SliceSequences(cines, train, batch=spec["batch"], seed=seed,
                                      batches_per_epoch=batches)  # fmt: skip
        loss: nn.Module = SegmentationLoss()
    else:
        batches_iter = CineBatches(cines, train, spec["column"], slices=spec["slices"],
                                   batch=spec["batch"], batches_per_epoch=batches, seed=seed,
                                   scale=SCALE)  # fmt: skip
        loss = nn.L1Loss()
    started = time.perf_counter()
    torch.manual_seed(seed)
    network = _network(spec)
    config = TrainConfig(epochs=epochs, batch_size=spec["batch"], batches_per_epoch=batches,
                         optimizer="adamw", lr=lr, schedule="cosine", monitor="val_score",
                         monitor_mode="min", amp="off", seed=seed, progress=progress,
                         tensorboard=False)  # fmt: skip
    trainer = Trainer(network, config, batches_iter, val_data=val, output_dir=output / "fold-0",
                      evaluate_fn=lambda model, cases: {"score": _ef_error(model, spec, cines,
                                                                           cases)},
                      loss_fn=loss, task=task)  # fmt: skip
    trainer.fit(resume=resume and (output / "fold-0" / "last.pt").exists())
    best = RunFolder(output).load_networks(lambda: _network(spec))[0]
    info.update(status="complete", folds=1, train_seconds=round(time.perf_counter() - started, 1),
                evaluation={"val_ef_mae": _ef_error(best, spec, cines, val),
                            "val_cases": len(val)})  # fmt: skip
    RunFolder(output).write(info)
    log(f"validation EF mean absolute error {info['evaluation']['val_ef_mae']:.2f} points")
    return info


def train_temporal_segmentation(
    data: str | Path,
    output: str | Path,
    *,
    temporal: str = "gru",
    features: tuple[int, ...] = (16, 32, 64, 128),
    epochs: int = 20,
    batches: int = 40,
    batch: int = 2,
    lr: float = 1e-3,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    log: Callable = print,
) -> dict[str, Any]:
    """Train a temporal U-Net on the cines' cavity labels (module notes)."""
    spec = {"kind": "segmentation", "temporal": temporal, "features": list(features),
            "batch": batch}  # fmt: skip
    with failed_cleanly(output, resume=resume):
        return _train(Path(data), Path(output), spec, epochs=epochs, batches=batches, lr=lr,
                      seed=seed, resume=resume, progress=progress, log=log)  # fmt: skip


def train_cine_regression(
    data: str | Path,
    output: str | Path,
    *,
    column: str = "ef_percent",
    slices: int | None = None,
    features: tuple[int, ...] = (16, 32, 64, 128),
    hidden: int = 64,
    epochs: int = 20,
    batches: int = 40,
    batch: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    log: Callable = print,
) -> dict[str, Any]:
    """Train a CNN + GRU to regress each cine's ``column`` (module notes)."""
    if slices is None:
        cines = CineSet(data)
        slices = max(cines.load(i)[0].shape[1] for i in range(len(cines)))
    spec = {"kind": "regression", "column": column, "slices": int(slices),
            "features": list(features), "hidden": hidden, "batch": batch}  # fmt: skip
    with failed_cleanly(output, resume=resume):
        return _train(Path(data), Path(output), spec, epochs=epochs, batches=batches, lr=lr,
                      seed=seed, resume=resume, progress=progress, log=log)  # fmt: skip


def load_sequence_run(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A finished sequence run's network and its spec."""
    folder = RunFolder(path)
    if not folder.exists() or not str(folder.info.get("task", "")).startswith("sequence-"):
        raise MedlensError(f"{path}: not a sequence run")
    spec = json.loads((folder.path / "sequence.json").read_text())
    return folder.load_networks(lambda: _network(spec))[0], spec
