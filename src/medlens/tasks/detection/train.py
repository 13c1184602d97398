"""``medlens train --task detection``: plan, bring cases to the grid, train FCOS, validate.

The job: fingerprint the dataset and measure its boxes (:func:`box_statistics`), plan (or take
``plan.json``), split the cases into training and validation (the dataset's own split where it has
one, e.g. VOC's ``ImageSets/Main``; else grouped by subject), bring every case to the plan's grid
once, train on box batches (:class:`~medlens.tasks.detection.data.BoxBatches`) with the FCOS loss,
and validate every ``val_every`` epochs: mAP at IoU 0.5 picks the best epoch of a 2D model, the
FROC's CPM (LUNA16's rule: a detection whose centre lies inside a box's inscribed sphere hits
it) that of a 3D one. The best checkpoint's validation metrics (mAP 0.5 and 0.5:0.95 per class,
FROC, count errors) go to ``metrics.json``. Checkpoints are written every epoch; ``resume=True``
continues a killed run.
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
from medlens.tasks.detection.data import BoxBatches, DetectionCase, detection_augment, open_boxes
from medlens.tasks.detection.plan import DetectionPlan, box_statistics, make_plan
from medlens.tasks.detection.predict import build_network, detect_array
from medlens.tasks.run_folder import RunFolder, failed_cleanly, run_format
from medlens.tasks.segmentation.data import normaliser

__all__ = ["RUN_FORMAT", "score_cases", "train_detection"]

RUN_FORMAT = run_format("detection")
VAL_FRACTION = 0.2


def train_detection(
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
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Plan (unless ``plan`` is given), train and validate; returns ``run.json``'s content.

    ``folds=K`` trains K models on a K-fold split grouped by subject (``fold-0`` ...): the
    validation metrics and the mirroring decision use every case's out-of-fold detections, and
    prediction fuses the K models' boxes (weighted box fusion). ``fold=k`` with ``folds=K``
    trains the k-th of them only (``run.json``'s ``cv_fold``)."""
    if fold is not None and not (folds and folds > 1 and 0 <= fold < folds):
        raise MedlensError(f"fold {fold}: needs folds=K > 1 and 0 <= fold < K")
    with failed_cleanly(output, resume=resume):
        return _job(
            Path(data),
            Path(output),
            plan,
            epochs,
            (folds, fold),
            seed,
            resume,
            overrides,
            progress,
            log,
        )


def _job(data, output, plan, epochs, cv, seed, resume, overrides, progress, log):
    from medlens.data import fingerprint, kfold_splits, save_splits

    if not data.exists():
        raise DatasetError("does not exist", data)
    ensure_outside(output, data)
    folds, fold = cv
    started = time.perf_counter()
    if resume:
        the_plan = DetectionPlan.load(output / "plan.json")
        dataset = open_boxes(data, plan=the_plan, progress=progress)
        splits = json.loads((output / "splits.json").read_text())["folds"]
    else:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        given = DetectionPlan.load(plan) if plan is not None else None
        dataset = open_boxes(data, plan=given, overrides=overrides, progress=progress)
        if given is not None:
            the_plan = given
        else:
            fp = fingerprint(dataset, max_samples=200, progress=progress)
            per = dataset.meta.get("boxes_from_labels")
            the_plan = make_plan(fp, box_statistics(dataset), boxes_from_labels=per)
        the_plan = the_plan.with_overrides(overrides) if overrides else the_plan
        if epochs is not None:
            the_plan.train = the_plan.train.replace(epochs=int(epochs))
        output.mkdir(parents=True, exist_ok=True)
        the_plan.save(output / "plan.json")
        normaliser(the_plan).save(output / "preprocessing.json")  # the plan's normalisation
        if folds is not None and folds > 1:
            groups = dataset.subjects() if dataset.has_subjects() else None
            splits = kfold_splits(dataset, folds, groups=groups, stratify=False, seed=seed)
            splits = splits if fold is None else [splits[fold]]
            save_splits(output / "splits.json", splits if fold is None else splits[0])
        else:
            splits = [_split(dataset, data, seed)]
            save_splits(output / "splits.json", splits[0])
        RunFolder(output).write(_info(the_plan, dataset, data, seed, "training"))
        first = splits[0]
        log(
            _describe(the_plan, len(first["train_indices"]), len(first["val_indices"]), len(splits))
        )
    needed = sorted({int(i) for s in splits for i in (*s["train_indices"], *s["val_indices"])})
    cases = dict(zip(needed, _prepare(dataset, needed, the_plan, progress, "the"), strict=True))
    for k, split in enumerate(splits):
        if len(splits) > 1:
            log(f"fold {k + 1} of {len(splits)}")
        _fit(
            the_plan,
            [cases[int(i)] for i in split["train_indices"]],
            [cases[int(i)] for i in split["val_indices"]],
            output / f"fold-{k}",
            seed + k,
            progress,
            resume,
        )
    info = _info(the_plan, dataset, data, seed, "complete")
    info["folds"] = len(splits)
    if fold is not None:
        info["cv_fold"] = [fold, folds]
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    info["evaluation"] = _validate(output, the_plan, splits, cases, log)
    RunFolder(output).write(info)
    return info


def _split(dataset, data: Path, seed: int) -> dict[str, Any]:
    """The dataset's own train/val split when it has one (VOC ``ImageSets/Main``), else a
    subject-grouped 80/20."""
    from medlens.data import open_dataset, train_val_split, voc_splits

    if (getattr(dataset, "meta", None) or {}).get("format") == "voc" and {"train", "val"} <= set(
        voc_splits(data)
    ):
        ids = dataset.ids()
        where = {case: i for i, case in enumerate(ids)}
        own = {
            name: [where[c] for c in open_dataset(data, split=name).ids() if c in where]
            for name in ("train", "val")
        }
        return {
            "train": [ids[i] for i in own["train"]],
            "val": [ids[i] for i in own["val"]],
            "train_indices": own["train"],
            "val_indices": own["val"],
            "method": "the dataset's own split (ImageSets/Main)",
            "seed": seed,
        }
    groups = dataset.subjects() if dataset.has_subjects() else None
    return train_val_split(dataset, VAL_FRACTION, seed=seed, groups=groups, stratify=False)


def _prepare(dataset, indices, plan, progress, what) -> list[DetectionCase]:
    from medlens._progress import progress as shown
    from medlens.tasks.detection.data import preprocess_case

    items = [int(i) for i in indices]
    return [
        preprocess_case(dataset[i], plan)
        for i in shown(items, f"preparing {what} cases", enabled=progress)
    ]


def _fit(
    plan: DetectionPlan,
    train: list[DetectionCase],
    val: list[DetectionCase],
    fold_dir: Path,
    seed: int,
    progress: bool,
    resume: bool,
) -> None:
    from medlens.engine import Trainer
    from medlens.tasks.detection.loss import FCOSLoss

    torch.manual_seed(seed)
    network = build_network(plan)
    batches = BoxBatches(
        train,
        plan.patch_size,
        plan.batch_size,
        batches_per_epoch=int(plan.train.batches_per_epoch or 40),
        seed=seed,
        augment=detection_augment(plan.spatial_dims, **plan.augmentation),
        weights=plan.sampling,
    )
    loss = FCOSLoss(
        plan.num_classes,
        plan.spatial_dims,
        network.locations,
        plan.ranges,
        centre_radius=float(plan.network.get("centre_radius", 1.5)),
        dense_weight=float(plan.network.get("dense_weight", 0.0)),
    )

    def evaluate(model, cases):
        return {"score": float(score_cases([model], cases, plan, mirror=False)["score"])}

    config = plan.train.replace(seed=seed, progress=progress)
    trainer = Trainer(
        network,
        config,
        batches,
        val_data=val,
        output_dir=fold_dir,
        evaluate_fn=evaluate,
        loss_fn=loss,
        task="detection",
    )
    trainer.fit(resume=resume and (fold_dir / "last.pt").exists())


def score_cases(
    networks,
    cases: list[DetectionCase],
    plan: DetectionPlan,
    *,
    mirror: bool | None = None,
    n_boot: int = 0,
    keep_detections: bool = False,
    by_case: dict[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Detection metrics of ``networks`` on preprocessed cases (the plan's grid): COCO AP (2D
    and 3D), FROC by the LUNA16 rule (centres in millimetres on the grid) and count errors;
    ``score`` is mAP@0.5 in 2D, CPM in 3D, and with one box per structure (boxes from label
    maps per class) the mean IoU of each structure's best box (0 where missed).
    ``keep_detections`` adds ``detections``: per case its ``boxes`` (the plan's grid),
    ``scores`` and ``labels`` as arrays (not JSON).
    ``by_case``: the networks of each case id instead of ``networks`` (out-of-fold scoring)."""
    from medlens.metrics.detection import average_precision, count_error, froc

    detections, truths, scans, findings = [], [], [], []
    for case in cases:
        models = by_case[case.id] if by_case is not None else networks
        boxes, scores, labels = detect_array(models, case.image, plan, mirror=mirror)
        detections.append({"boxes": boxes, "scores": scores, "labels": labels})
        truths.append({"boxes": case.boxes, "labels": case.labels})
        spacing = np.asarray(case.meta["grid_spacing"], float)
        scans.append({"centres": _centres(boxes) * spacing, "scores": scores})
        sizes = (case.boxes[:, plan.spatial_dims :] - case.boxes[:, : plan.spatial_dims]) * spacing
        radii = sizes.min(axis=1) / 2 if len(sizes) else np.zeros(0)
        diameters = case.meta.get("diameter_mm")
        if diameters is not None and len(diameters) == len(radii):
            radii = np.where(np.isfinite(diameters), np.asarray(diameters) / 2, radii)
        findings.append({"centres": _centres(case.boxes) * spacing, "radii": radii})
    classes = list(range(plan.num_classes))
    ap = average_precision(detections, truths, classes=classes, n_boot=n_boot)
    result: dict[str, Any] = {"ap": ap, "froc": froc(scans, findings, n_boot=n_boot)}
    threshold = 0.5
    counted = np.array(
        [
            [int(np.sum((d["labels"] == k) & (d["scores"] >= threshold))) for k in classes]
            for d in detections
        ]
    )
    truth = np.array([[int(np.sum(t["labels"] == k)) for k in classes] for t in truths])
    result["counts"] = count_error(counted, truth)
    result["per_image"] = [
        {"id": c.id, "found": f.tolist(), "true": t.tolist()}
        for c, f, t in zip(cases, counted, truth, strict=True)
    ]
    result["count_threshold"] = threshold
    if getattr(plan, "boxes_from_labels", None) == "class":  # one box each: localisation too
        from medlens.metrics.localisation import localisation_errors

        mm = [np.tile(np.asarray(c.meta["grid_spacing"], float), 2) for c in cases]
        result["localisation"] = localisation_errors(
            [{**d, "boxes": d["boxes"] * s} for d, s in zip(detections, mm, strict=True)],
            [{**t, "boxes": t["boxes"] * s} for t, s in zip(truths, mm, strict=True)],
            classes=classes,
            n_boot=n_boot,
        )
    result["score"] = ap["map50"] if plan.spatial_dims == 2 else result["froc"]["cpm"]
    if "localisation" in result:  # a centre hit is easy for organs: their boxes' overlap
        result["score"] = result["localisation"]["all"]["iou"]
    if keep_detections:
        result["detections"] = detections
    return result


def localisation_line(localisation: dict[str, Any]) -> str:
    """One line of :func:`~medlens.metrics.localisation.localisation_errors`' means."""
    a = localisation["all"]
    if not a.get("n"):
        return "localisation: no structures to find"
    distances = (
        f", centre {a['centre_mm']:.2f} mm, wall {a['wall_mm']:.2f} mm"
        if a.get("centre_mm") is not None
        else ""
    )
    return (
        f"localisation ({a['n']} structures): {a['detected']:.1%} found, IoU {a['iou']:.3f}"
        f"{distances} (means of each structure's best box)"
    )


def _centres(boxes: np.ndarray) -> np.ndarray:
    n = boxes.shape[1] // 2
    return (boxes[:, :n] + boxes[:, n:]) / 2


def _validate(output: Path, plan: DetectionPlan, splits, cases, log) -> dict:
    """Out-of-fold detections of each fold's best checkpoint: decide the mirroring on them,
    then write the metrics of the choice."""
    from medlens.engine import load_weights, reported_checkpoint

    val, by_case = [], {}
    for k, split in enumerate(splits):
        network = build_network(plan)
        load_weights(network, reported_checkpoint(output / f"fold-{k}"))
        for i in split["val_indices"]:
            val.append(cases[int(i)])
            by_case[cases[int(i)].id] = [network]
    plain = score_cases([], val, plan, mirror=False, n_boot=1000, by_case=by_case)
    mirrored = score_cases([], val, plan, mirror=True, n_boot=1000, by_case=by_case)
    # test-time mirroring only where it helps on validation (BCCD: mAP@0.5 0.9032 -> 0.9037)
    chosen = bool(mirrored["score"] > plain["score"])
    plan.inference["mirror"] = chosen
    plan.save(output / "plan.json")
    result = mirrored if chosen else plain
    result["tta"] = {
        "mirror": chosen,
        "score_plain": plain["score"],
        "score_mirrored": mirrored["score"],
    }
    log(
        f"test-time mirroring {'on' if chosen else 'off'}: validation score "
        f"{mirrored['score']:.4f} mirrored, {plain['score']:.4f} plain"
    )
    result["class_names"] = plan.class_names
    result["n_cases"] = len(val)
    result["out_of_fold"] = len(splits) > 1
    atomic_write_json(output / "metrics.json", result)
    ap = result["ap"]
    what = "out-of-fold " if len(splits) > 1 else ""
    log(
        f"validation ({len(val)} {what}cases): mAP@0.5 {ap['map50']:.4f}, mAP@0.5:0.95 "
        f"{ap['map50_95']:.4f}, FROC CPM {result['froc']['cpm']:.4f}"
    )
    if "localisation" in result:
        log(localisation_line(result["localisation"]))
    return {
        "map50": ap["map50"],
        "map50_95": ap["map50_95"],
        "cpm": result["froc"]["cpm"],
        "n_cases": len(val),
    }


def _info(plan, dataset, data, seed, status) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "medlens": __version__,
        "status": status,
        "task": "detection",
        "data": {
            "source": str(Path(data).resolve()),
            "name": dataset.name,
            "cases": len(dataset),
            "simulated": bool(getattr(dataset, "simulated", False)),
        },
        "class_names": list(plan.class_names),
        "seed": seed,
    }


def _describe(plan: DetectionPlan, n_train: int, n_val: int, n_folds: int = 1) -> str:
    patch = "x".join(map(str, plan.patch_size))
    strides = ",".join(map(str, plan.strides))
    folds = f"{n_folds} folds of " if n_folds > 1 else ""
    return (
        f"plan: {plan.spatial_dims}D FCOS on {plan.network['backbone']}, strides {strides}, "
        f"patch {patch}, batch {plan.batch_size}, {plan.train.epochs} epochs; {folds}{n_train} "
        f"training and {n_val} validation cases"
    )
