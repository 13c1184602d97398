"""Training the sequence models on cine folders (:mod:`medlens.tasks.sequences.plan`).

:func:`train_sequence` trains one run folder of any of the three kinds (``run.json``,
``plan.json``, ``sequence.json``: the network's description, ``splits.json``, ``fold-0/`` with
the engine's checkpoints, resumable; ``metrics.json`` and ``report.html`` of the validation
cases). Cases are split ``val_fraction`` of the subjects for validation, grouped by subject (the
``subject`` column: a phantom's background patient), stratified by class for classification.
Regression targets are standardised by the training cases' mean and standard deviation only.

The best epoch is chosen on the validation cases by the measurement the model is for:

* segmentation: the mean absolute EF error where ``cases.csv`` has ``ef_percent`` (the EF of the
  label maps by the summation of discs, :mod:`medlens.measure.cardiac`, as ``medlens measure
  cardiac`` measures), else one minus the mean Dice of the labelled frames;
* regression: the mean absolute error in the column's units;
* classification: the mean cross-entropy.

:func:`train_temporal_segmentation` and :func:`train_cine_regression` are the same with the
network's settings as arguments (the benchmark's entry points).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
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
    SCALE,
    CineBatches,
    CineSet,
    SliceSequences,
    cine_input,
    describe,
    intensity_steps,
    slice_inputs,
)
from medlens.tasks.sequences.plan import SequencePlan, make_plan

__all__ = ["build_network", "divisor", "load_sequence_run", "measure_ef", "predict_cine",
           "train_cine_regression", "train_sequence", "train_temporal_segmentation"]  # fmt: skip


class SegmentationLoss(nn.Module):
    """The segmentation task's Dice + cross-entropy (:class:`~medlens.tasks.segmentation.losses.
    DiceCELoss`, batch Dice) over every frame of the batch: logits ``(B, T, K, H, W)`` and labels
    ``(B, T, H, W)`` with the time axis folded into the batch."""

    def __init__(self) -> None:
        from medlens.tasks.segmentation.losses import DiceCELoss

        super().__init__()
        self.loss = DiceCELoss()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.flatten(0, 1), labels.flatten(0, 1))


def build_network(spec: dict[str, Any]) -> nn.Module:
    """The network ``sequence.json`` describes (runs of the first release included)."""
    from medlens.models import create_model

    features = tuple(spec["features"])
    if spec["kind"] == "segmentation":
        return create_model("temporal-unet", spatial_dims=2, in_channels=1, num_classes=2,
                            features=features, temporal=spec["temporal"])  # fmt: skip
    outputs = len(spec["classes"]) if spec["kind"] == "classification" else 1
    return create_model(spec.get("network", "cnn-gru"), spatial_dims=2,
                        in_channels=spec["slices"], num_classes=outputs, features=features,
                        hidden=spec["hidden"])  # fmt: skip


def divisor(spec: dict[str, Any]) -> int:
    """What a segmentation network's input sizes must divide by."""
    return 2 ** (len(spec["features"]) - 1)


@torch.no_grad()
def predict_cine(network: nn.Module, spec: dict[str, Any], cine: np.ndarray, *,
                 time_first: bool = False) -> np.ndarray:  # fmt: skip
    """One cine ``(t, z, y, x)`` through the network: label maps ``(t, z, y, x)`` uint8
    (segmentation), class probabilities ``(K,)`` or the value ``(1,)`` in its units.
    ``time_first``: the network takes ``(B, C, T, H, W)`` (a predictor's, or its ONNX export)."""
    segmentation = spec["kind"] == "segmentation"

    def run(x: torch.Tensor) -> torch.Tensor:  # x (B, T, C, H, W)
        if not time_first:
            return network(x)
        out = network(x.transpose(1, 2))
        return out.transpose(1, 2) if segmentation else out

    if hasattr(network, "eval"):
        network.eval()
    if segmentation:
        h, w = cine.shape[-2:]
        masks = [run(x[None])[0].argmax(1)[:, :h, :w].numpy().astype(np.uint8)
                 for x in slice_inputs(cine, spec, divisor(spec))]  # fmt: skip
        return np.stack(masks, axis=1)
    out = run(cine_input(cine, spec))[0].float()
    if spec["kind"] == "classification":
        return out.softmax(0).numpy()
    return (out * spec.get("scale", SCALE) + spec.get("offset", 0.0)).numpy()


def measure_ef(network: nn.Module, spec: dict[str, Any], cine: np.ndarray,
               spacing) -> tuple[float, np.ndarray | None]:  # fmt: skip
    """EF (%) of one cine ``(t, z, y, x)`` and, for segmentation, its label maps."""
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    out = predict_cine(network, spec, cine)
    if spec["kind"] != "segmentation":
        return float(out[0]), None
    volumes = volume_curve(cavity_areas(out, spacing[:2]), float(spacing[2]))
    if volumes.max() <= 0:
        return 0.0, out
    return float(cardiac_indices(volumes)["ef_percent"]), out


def _dice(masks: np.ndarray, labels: np.ndarray, label: int) -> float | None:
    truth, got = labels == label, masks == 1
    total = truth.sum() + got.sum()
    return None if total == 0 else float(2 * (truth & got).sum() / total)


def validation_score(network, spec: dict[str, Any], data: CineSet, cases: Sequence[int]) -> float:
    """What the best epoch is chosen by (module notes); lower is better."""
    errors = []
    for i in cases:
        cine, labels, spacing = data.load(i)
        if spec["kind"] == "segmentation":
            if "ef_percent" in data.rows[i]:
                errors.append(abs(measure_ef(network, spec, cine, spacing)[0]
                                  - data.value(i, "ef_percent")))  # fmt: skip
            elif labels is not None:
                dice = _dice(predict_cine(network, spec, cine), labels, spec.get("label", 1))
                errors.append(1.0 - (dice if dice is not None else 1.0))
        elif spec["kind"] == "regression":
            errors.append(abs(float(predict_cine(network, spec, cine)[0])
                              - data.value(i, spec["column"])))  # fmt: skip
        else:
            p = predict_cine(network, spec, cine)[data.class_index(i, spec["column"],
                                                                   spec["classes"])]  # fmt: skip
            errors.append(-float(np.log(max(float(p), 1e-7))))
    return float(np.mean(errors)) if errors else float("nan")


def _split(cines: CineSet, plan: SequencePlan, seed: int):
    from medlens.data import train_val_split

    stratify = plan.kind == "classification"
    labels = [r[plan.column] for r in cines.rows] if stratify else None
    return train_val_split(labels if stratify else cines.ids, plan.val_fraction,
                           groups=cines.subjects(), stratify=stratify, seed=seed,
                           ids=cines.ids)  # fmt: skip


def _job(data: Path, output: Path, plan: SequencePlan, *, seed: int, resume: bool,
         progress: bool, log: Callable) -> dict[str, Any]:  # fmt: skip
    from medlens.data import save_splits
    from medlens.engine import Trainer

    ensure_outside(output, data)
    cines = CineSet(data)
    task = plan.task
    if not resume:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        output.mkdir(parents=True, exist_ok=True)
        save_splits(output / "splits.json", _split(cines, plan, seed))
        plan.save(output / "plan.json")
    else:
        plan = SequencePlan.load(output / "plan.json")
    split = json.loads((output / "splits.json").read_text())["folds"][0]
    train, val = [int(i) for i in split["train_indices"]], [int(i) for i in split["val_indices"]]
    spec = plan.spec()
    spec["phases"] = int(np.median([cines.shape(i)[0] for i in train]))
    if plan.kind == "regression":  # standardised by the training cases only
        values = np.array([cines.value(i, plan.column) for i in train])
        spec.update(offset=float(values.mean()), scale=float(values.std()) or 1.0)
    if not resume:
        atomic_write_json(output / "sequence.json", spec)
        atomic_write_json(output / "preprocessing.json", intensity_steps().to_dict())
    spec = _with_preprocessor(output, json.loads((output / "sequence.json").read_text()))
    info = {"format": run_format(task), "medlens": __version__, "task": task, "status": "training",
            "data": {"source": str(data), "cases": len(cines), "simulated": cines.simulated},
            "seed": seed, "spec": _plain(spec)}  # fmt: skip
    RunFolder(output).write(info)
    log(f"{task}: {len(train)} training and {len(val)} validation cines ({describe(cines)})")
    for line in plan.describe():
        log(line)
    config = dataclasses.replace(plan.train, seed=seed, progress=progress)
    batches = config.batches_per_epoch or 40
    if plan.kind == "segmentation":
        draws: Any = SliceSequences(cines, train, batch=config.batch_size, label=plan.cavity_label,
                                    batches_per_epoch=batches, seed=seed, augment=plan.augment,
                                    divisor=divisor(spec), spec=spec)  # fmt: skip
        loss: nn.Module = SegmentationLoss()
    else:
        draws = CineBatches(cines, train, spec, batches_per_epoch=batches, seed=seed,
                            augment=plan.augment)  # fmt: skip
        loss = nn.CrossEntropyLoss() if plan.kind == "classification" else nn.L1Loss()
    started = time.perf_counter()
    torch.manual_seed(seed)
    trainer = Trainer(build_network(spec), config, draws, val_data=val,
                      output_dir=output / "fold-0",
                      evaluate_fn=lambda model, cases: {"score": validation_score(model, spec,
                                                                                  cines, cases)},
                      loss_fn=loss, task=task)  # fmt: skip
    trainer.fit(resume=resume and (output / "fold-0" / "last.pt").exists())
    best = RunFolder(output).load_networks(lambda: build_network(spec))[0]
    score = validation_score(best, spec, cines, val)
    info.update(status="complete", folds=1, train_seconds=round(time.perf_counter() - started, 1),
                evaluation={"val_score": score, "val_cases": len(val)})  # fmt: skip
    if plan.kind != "classification" and "ef_percent" in cines.rows[0]:
        info["evaluation"]["val_ef_mae"] = score
    RunFolder(output).write(info)
    log(f"validation {_score_name(spec)}: {score:.4g} on {len(val)} cines")
    return info


def _score_name(spec: dict[str, Any]) -> str:
    if spec["kind"] == "classification":
        return "cross-entropy"
    if spec["kind"] == "regression":
        return f"mean absolute error of {spec['column']}"
    return "score (EF error, points, or 1 - Dice)"


def train_sequence(data: str | Path, output: str | Path, *, kind: str,
                   plan: str | Path | SequencePlan | None = None, epochs: int | None = None,
                   seed: int = 0, resume: bool = False, overrides: Sequence[str] = (),
                   column: str | None = None, progress: bool = True,
                   log: Callable = print) -> dict[str, Any]:  # fmt: skip
    """Train a sequence run of ``kind`` on the cine folder ``data`` into ``output`` (module
    notes); ``plan``: a plan (file) to use instead of the default, ``overrides``: ``--set``
    items, ``column``: the target column."""
    data, output = Path(data), Path(output)
    with failed_cleanly(output, resume=resume):
        if isinstance(plan, (str, Path)):
            plan = SequencePlan.load(plan)
        if plan is None:
            plan = make_plan(kind, CineSet(data), column)
        elif column is not None and column != plan.column:
            raise MedlensError(f"--column {column}: the plan learns {plan.column!r}")
        if plan.kind != kind:
            raise MedlensError(f"the plan is for sequence-{plan.kind}, not sequence-{kind}")
        if overrides:
            plan = plan.with_overrides(overrides)
        if epochs is not None:
            plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, epochs=epochs))
        return _job(data, output, plan, seed=seed, resume=resume, progress=progress, log=log)


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
    sets = [f"network.temporal={temporal}", f"network.features={list(features)}",
            f"epochs={epochs}", f"batches_per_epoch={batches}", f"batch_size={batch}",
            f"lr={lr}"]  # fmt: skip
    return train_sequence(data, output, kind="segmentation", seed=seed, resume=resume,
                          overrides=sets, progress=progress, log=log)  # fmt: skip


def train_cine_regression(
    data: str | Path,
    output: str | Path,
    *,
    column: str = "ef_percent",
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
    sets = [f"network.features={list(features)}", f"network.hidden={hidden}",
            f"epochs={epochs}", f"batches_per_epoch={batches}", f"batch_size={batch}",
            f"lr={lr}"]  # fmt: skip
    return train_sequence(data, output, kind="regression", column=column, seed=seed,
                          resume=resume, overrides=sets, progress=progress, log=log)  # fmt: skip


def load_sequence_run(path: str | Path) -> tuple[list[nn.Module], dict[str, Any]]:
    """A finished sequence run's networks (one per fold) and their description."""
    folder = RunFolder(path)
    if not folder.exists() or not str(folder.info.get("task", "")).startswith("sequence-"):
        raise MedlensError(f"{path}: not a sequence run")
    spec = _with_preprocessor(folder.path, json.loads((folder.path / "sequence.json").read_text()))
    return folder.load_networks(lambda: build_network(spec)), spec


def _plain(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` without the loaded preprocessor (what ``run.json`` records)."""
    return {k: v for k, v in spec.items() if k != "preprocessor"}


def _with_preprocessor(run: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the run's intensity scaling (``preprocessing.json``; runs of the first
    release have none) as ``spec["preprocessor"]``."""
    from medlens.preprocessing import Preprocessor

    path = run / "preprocessing.json"
    return {**spec, "preprocessor": Preprocessor.load(path) if path.is_file() else None}
