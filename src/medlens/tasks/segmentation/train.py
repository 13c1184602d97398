"""``medlens train --task segmentation``: plan, preprocess, train a U-Net on patches, validate.

The job: fingerprint the dataset and plan (or take ``plan.json``), split the cases into training
and validation grouped by subject (``splits.json``), bring every case to the plan's grid once,
train the plan's U-Net on patch batches with foreground oversampling, Dice + cross-entropy with
deep supervision and batched augmentation, validate each epoch by sliding-window prediction of
the validation cases (mean foreground Dice picks the best epoch), and write the validation
metrics (Dice, IoU, HD95, ASSD, NSD per case and class) to ``metrics.json``. Checkpoints are
written every epoch; ``resume=True`` continues a killed run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens import __version__
from medlens._atomic import atomic_write_json, ensure_outside
from medlens.errors import DatasetError, MedlensError
from medlens.tasks.run_folder import RunFolder, failed_cleanly, run_format
from medlens.tasks.segmentation.data import Case, PatchBatches, normaliser, preprocess_case
from medlens.tasks.segmentation.network import build_network, predict_case
from medlens.tasks.segmentation.plan import SegmentationPlan, apply_plan_overrides, make_plan

__all__ = ["RUN_FORMAT", "build_network", "predict_case", "train_segmentation"]

RUN_FORMAT = run_format("segmentation")
VAL_FRACTION = 0.2


def train_segmentation(
    data: str | Path,
    output: str | Path,
    *,
    plan: str | Path | None = None,
    epochs: int | None = None,
    folds: int | None = None,
    fold: int | None = None,
    seed: int = 0,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Plan (unless ``plan`` is given), train and validate; returns ``run.json``'s content.

    ``folds=K`` trains K models on a K-fold split grouped by subject (``fold-0`` ...
    ``fold-K-1``); validation metrics and the postprocessing decision then use the out-of-fold
    predictions of every case, and ``medlens predict`` ensembles the K models. ``fold=k`` with
    ``folds=K`` trains one model on the other folds and validates on fold ``k`` (one part of a
    K-fold cross-validation, as ``nnUNetv2_train DATASET CONFIG k`` does): a single-split run
    whose split is that fold, recorded as ``run.json``'s ``cv_fold``.
    """
    if fold is not None and not (folds and folds > 1 and 0 <= fold < folds):
        raise MedlensError(f"fold {fold}: needs folds=K > 1 and 0 <= fold < K")
    with failed_cleanly(output, resume=resume):
        return _job(Path(data), Path(output), plan, epochs, (folds, fold), seed, resume,
                    overrides, progress, device, log)  # fmt: skip


def _job(data, output, plan, epochs, cv, seed, resume, overrides, progress, device, log):
    from medlens.data import (
        fingerprint,
        kfold_splits,
        open_dataset,
        save_splits,
        train_val_split,
    )

    if not data.exists():
        raise DatasetError("does not exist", data)
    ensure_outside(output, data)
    dataset = open_dataset(data)
    folds, fold = cv
    if dataset.task != "segmentation":
        raise DatasetError(f"a {dataset.task} dataset, not a segmentation one", data)
    started = time.perf_counter()
    if resume:
        the_plan = SegmentationPlan.load(output / "plan.json")
        splits = json.loads((output / "splits.json").read_text())["folds"]
    else:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        if plan is not None:
            the_plan = SegmentationPlan.load(plan)
        else:
            fp = fingerprint(dataset, max_samples=200, progress=progress)
            the_plan = make_plan(fp, device=device)
        the_plan = apply_plan_overrides(the_plan, list(overrides)) if overrides else the_plan
        if epochs is not None:
            the_plan.train = the_plan.train.replace(epochs=int(epochs))
        output.mkdir(parents=True, exist_ok=True)
        the_plan.save(output / "plan.json")
        normaliser(the_plan).save(output / "preprocessing.json")  # the plan's normalisation
        groups = dataset.subjects() if dataset.has_subjects() else None
        if folds is not None and folds > 1:
            splits = kfold_splits(dataset, folds, groups=groups, stratify=False, seed=seed)
            splits = splits if fold is None else [splits[fold]]
            save_splits(output / "splits.json", splits if fold is None else splits[0])
        else:
            split = train_val_split(dataset, VAL_FRACTION, seed=seed, groups=groups,
                                    stratify=False)  # fmt: skip
            save_splits(output / "splits.json", split)
            splits = [split]
        RunFolder(output).write(_info(the_plan, dataset, data, seed, "training"))
        log(_describe(the_plan, len(splits[0]["train"]), len(splits[0]["val"]), len(splits)))
    needed = sorted({int(i) for s in splits for i in (*s["train_indices"], *s["val_indices"])})
    cases = dict(zip(needed, _preprocess(dataset, needed, the_plan, progress, "cases"),
                     strict=True))  # fmt: skip
    for k, split in enumerate(splits):
        if len(splits) > 1:
            log(f"fold {k + 1} of {len(splits)}")
        _fit(the_plan, [cases[int(i)] for i in split["train_indices"]],
             [cases[int(i)] for i in split["val_indices"]], output / f"fold-{k}",
             seed + k, progress, resume)  # fmt: skip
    info = _info(the_plan, dataset, data, seed, "complete")
    info["folds"] = len(splits)
    if fold is not None:
        info["cv_fold"] = [fold, folds]
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    info["evaluation"] = _validate(output, the_plan, splits, cases, log)
    RunFolder(output).write(info)
    return info


# ------------------------------------------------------------------------------ the pieces
def _preprocess(dataset, indices, plan, progress, what) -> list[Case]:
    from medlens._progress import progress as shown

    items = [int(i) for i in indices]
    return [preprocess_case(dataset[i], plan) for i in shown(items, f"preparing {what} cases",
                                                             enabled=progress)]  # fmt: skip


def _config(plan: SegmentationPlan, seed: int, progress: bool):
    return plan.train.replace(seed=seed, progress=progress)


def _fit(plan, train_cases, val_cases, fold_dir: Path, seed, progress, resume) -> None:
    from medlens.engine import Trainer
    from medlens.tasks.segmentation.augment import segmentation_augment
    from medlens.tasks.segmentation.losses import DeepSupervisionLoss

    torch.manual_seed(seed)
    network = build_network(plan)
    batches = PatchBatches(
        train_cases,
        tuple(plan.patch_size),
        plan.batch_size,
        batches_per_epoch=int(plan.train.batches_per_epoch or 50),
        foreground_oversampling=plan.foreground_oversampling,
        ignore_label=plan.ignore_label,
        seed=seed,
        augment=segmentation_augment(
            plan.spatial_dims, anisotropic_axis=_coarse_axis(plan), **plan.augmentation
        ),
    )

    def evaluate(model, cases):
        scores = []
        for case in cases:
            probs = predict_case([model], case.image, plan)
            scores.append(_mean_dice(probs.argmax(0), case.label, plan))
        return {"dice": float(np.nanmean(scores)) if scores else float("nan")}

    loss = DeepSupervisionLoss(_loss(plan))
    trainer = Trainer(network, _config(plan, seed, progress), batches, val_data=val_cases,
                      output_dir=fold_dir, evaluate_fn=evaluate, loss_fn=loss,
                      task="segmentation")  # fmt: skip
    trainer.fit(resume=resume and (fold_dir / "last.pt").exists())


def _loss(plan: SegmentationPlan) -> torch.nn.Module:
    """The plan's loss: ``train.loss`` dice_ce (default) or dice_focal (``train.focal_gamma``,
    default 2); ``batch_dice`` pools the batch for the Dice term (default) or not."""
    from medlens.tasks.segmentation.losses import DiceCELoss

    gamma = float(plan.train.focal_gamma) if plan.train.loss == "dice_focal" else None
    return DiceCELoss(ignore_index=plan.ignore_label, focal_gamma=gamma,
                      batch_dice=plan.batch_dice)  # fmt: skip


def _coarse_axis(plan: SegmentationPlan) -> int | None:
    spacing = plan.target_spacing[::-1]  # array order
    coarse = int(np.argmax(spacing))
    return coarse if max(spacing) > 3 * min(spacing) else None


def _mean_dice(pred: np.ndarray, ref: np.ndarray, plan: SegmentationPlan) -> float:
    from medlens.metrics import dice

    keep = ref != plan.ignore_label if plan.ignore_label is not None else True
    scores = [
        dice((pred == value) & keep, (ref == value) & keep)
        for value in plan.label_values
        if value not in (0, plan.ignore_label)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def _validate(output: Path, plan, splits, cases: dict[int, Case], log) -> dict[str, Any]:
    """Out-of-fold predictions of the best checkpoints (on the plan's grid): decide the
    postprocessing on them, then write the full metrics of the postprocessed predictions."""
    from medlens.engine import load_weights, reported_checkpoint
    from medlens.metrics import SegmentationMetric
    from medlens.tasks.segmentation.postprocess import (
        apply_postprocessing,
        decide_postprocessing,
    )

    ids, predictions, references, spacings = [], [], [], []
    for k, split in enumerate(splits):
        network = build_network(plan)
        load_weights(network, reported_checkpoint(output / f"fold-{k}"))
        values = np.asarray(plan.label_values)
        for i in split["val_indices"]:
            case = cases[int(i)]
            ids.append(case.id)
            predictions.append(values[predict_case([network], case.image, plan).argmax(0)])
            references.append(case.label)
            spacings.append(tuple(case.meta["grid_spacing"][::-1]))  # array order
    rules = decide_postprocessing(predictions, references, plan.label_values,
                                  ignore_label=plan.ignore_label)  # fmt: skip
    atomic_write_json(output / "postprocessing.json", rules)
    labels = [v for v in plan.label_values if v not in (0, plan.ignore_label)]
    metric = SegmentationMetric(labels=labels, tolerance_mm=1.0, n_boot=1000)
    for case_id, pred, ref, spacing in zip(ids, predictions, references, spacings, strict=True):
        metric.update(apply_postprocessing(pred, rules), ref, spacing, case_id=case_id)
    result = metric.compute()
    result["postprocessing"] = rules
    atomic_write_json(output / "metrics.json", result)
    mean = result["aggregate"]["mean"]
    dice = mean.get("dice", {})
    for value, rule in rules["classes"].items():
        chosen = [n for n in ("largest_component", "fill_holes", "ellipse") if rule.get(n)]
        ellipse = rule["dice"].get("ellipse")
        log(f"postprocessing of label {value}: {' + '.join(chosen) or 'none'} (validation Dice "
            f"{rule['dice']['none']:.4f} raw, {rule['dice']['largest_component']:.4f} largest "
            f"component, {rule['dice']['fill_holes']:.4f} holes filled"
            + (f", {ellipse:.4f} ellipse" if ellipse is not None else "") + ")")  # fmt: skip
    if dice.get("mean") is not None:
        what = "out-of-fold " if len(splits) > 1 else ""
        log(f"validation ({len(ids)} {what}cases): mean Dice {dice['mean']:.4f}")
    return {"dice": dice, "hd95": mean.get("hd95", {}), "n_cases": len(ids)}


def _info(plan, dataset, data, seed, status) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "medlens": __version__,
        "status": status,
        "task": "segmentation",
        "data": {"source": str(Path(data).resolve()), "name": dataset.name, "cases": len(dataset)},
        "label_values": plan.label_values,
        "class_names": list(dataset.class_names),
        "seed": seed,
    }


def _describe(plan: SegmentationPlan, n_train: int, n_val: int, n_folds: int = 1) -> str:
    patch = "x".join(map(str, plan.patch_size))
    folds = f"{n_folds} folds of " if n_folds > 1 else ""
    return (
        f"plan: {plan.spatial_dims}D U-Net, {len(plan.network['features'])} stages, patch {patch}, "
        f"batch {plan.batch_size}, {plan.train.epochs} epochs; {folds}{n_train} training "
        f"and {n_val} validation cases"
    )
