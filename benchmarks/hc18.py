"""HC18 fetal head segmentation and head circumference with medlens' defaults, cross-validated.

Runs what ``medlens train --task segmentation --data hc18 --folds 5 --fold k --output RUN``
runs for each fold k (the defaults are the product: plan, subject-grouped folds, training,
postprocessing chosen on the fold's validation images), then treats every fold's held-out
images as a user would:

1. ``medlens predict``'s code path on each original image (one PNG mask per image on the
   image's own grid), so every image is predicted by the one model that never saw its subject;
2. Dice and HD95 (mm, spacing-aware) of each mask against the filled sonographer outline, on the
   original grid, with 95% bootstrap intervals over all out-of-fold images;
3. ``medlens measure head-circumference`` on the written masks with ``labels.csv``'s pixel sizes:
   the mean absolute and mean signed difference to the sonographer's head circumference in
   ``labels.csv``, overall, by head size (under 150, 150-250, from 250 mm) and for the
   late-pregnancy subjects (600-805); as a check of the measurement alone, the same on the
   reference masks.

Inference is timed end to end (reading the PNG, network with the default mirroring, writing the
mask) on the first ``--infer-images`` images of the first fold's validation split.

nnU-Net side by side (``benchmarks/_nnunet.py``, where ``nnunetv2`` is installed): the images as
a user's PNGs (its ``2d`` configuration), filled reference masks written beside them (never into
the data folder), the first fold's split and training time, its own validation of that fold's
images, scored and measured by the same code as medlens's; ``nnUNetPredictor`` timed end to end
on the same images. ``--nnunet-val N`` has nnU-Net validate only the first N images of that fold
(its 2d network, planned for a GPU, predicts about 6 s per image here), and medlens's figures
beside it are then on the same images. The JSON keys are those of ``benchmarks/hippocampus.py``
with an ``hc18_`` prefix.

    python benchmarks/hc18.py                     # 5 folds with the defaults, then nnU-Net
    python benchmarks/hc18.py --fold 0            # fold 0 of the 5 only (about 100 images)
    python benchmarks/hc18.py --folds 1           # one subject-grouped 80/20 split
    python benchmarks/hc18.py --run RUN_DIR       # evaluate an existing single-split run
    python benchmarks/hc18.py --workdir W         # keep (and reuse) W/fold_k runs and nnU-Net
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet
from _common import configure_threads, emit_json, environment, log, print_table, require_data
from medlens._json import read_json

GOALS = {"dice": 0.97, "hc_mae_mm": 2.5, "hc_mean_diff_mm": 1.0, "train_minutes": 45.0}
SIZES = (("<150 mm", 0.0, 150.0), ("150-250 mm", 150.0, 250.0), (">=250 mm", 250.0, 1e9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5, help="Subject-grouped folds (1: 80/20).")
    parser.add_argument("--fold", type=int, help="Train and score this fold of --folds only.")
    parser.add_argument("--run", type=Path, help="Evaluate this finished run instead of training.")
    parser.add_argument("--workdir", type=Path, help="Keep the runs and masks here (default: tmp).")
    parser.add_argument("--set", action="append", default=[], help="Plan override key=value.")
    parser.add_argument("--infer-images", type=int, default=10)
    parser.add_argument("--no-nnunet", action="store_true", help="Skip nnU-Net side by side.")
    parser.add_argument(
        "--nnunet-val",
        type=int,
        default=0,
        help="nnU-Net validates the first N of the fold's validation images (0: all, the "
        "default); its 2d network predicts about 6 s per image on this CPU.",
    )
    parser.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Mirroring test-time augmentation (default: medlens' default, on in 2D).",
    )
    args = parser.parse_args(argv)

    root = require_data("hc18", "hc18")
    data = root / "hc18"
    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = [args.run] if args.run else train_folds(data, work, args)
        figures = evaluate(runs, data, work / "masks", mirror=args.mirror)
        figures.update(timing(runs[0], data, work, args.infer_images, args.mirror))
        seconds = [read_json(run / "run.json").get("train_seconds") for run in runs]
        figures["train_minutes_per_fold"] = [None if s is None else round(s / 60, 2)
                                             for s in seconds]  # fmt: skip
        figures["train_minutes"] = figures["train_minutes_per_fold"][0]
        side = {"nnunet_dice_mean": None, "inference_speedup_vs_nnunet": None,
                "nnunet_status": "not run: --no-nnunet"}  # fmt: skip
        if not args.no_nnunet:
            side = nnunet(runs[0], data, work, seconds[0], figures, args.nnunet_val)
        figures.update(side)
    report(figures)
    figures["goals"] = GOALS
    figures["goals_met"] = {
        "dice": figures["dice"]["mean"] >= GOALS["dice"],
        "hc_mae_mm": figures["hc_mae_mm"] <= GOALS["hc_mae_mm"],
        "hc_mean_diff_mm": abs(figures["hc_mean_diff_mm"]) <= GOALS["hc_mean_diff_mm"],
        "train_minutes": all(s is not None and s < GOALS["train_minutes"] * 60 for s in seconds),
    }
    figures["threads"] = threads
    figures["environment"] = environment(["medlens", "torch", "numpy"])
    keys = ("dice_mean_cv", "train_minutes", "nnunet_dice_mean", "inference_speedup_vs_nnunet")
    emit_json({"benchmark": "hc18", **{f"hc18_{k}": figures.get(k) for k in keys}, **figures})
    return 0


def train_folds(data: Path, work: Path, args) -> list[Path]:
    """The fold runs (``work/fold_k``; ``work/run`` for --folds 1): reused where finished."""
    from medlens.tasks.segmentation.train import train_segmentation

    if args.folds == 1:
        todo = [(work / "run", None, None)]
    else:
        folds = [args.fold] if args.fold is not None else range(args.folds)
        todo = [(work / f"fold_{k}", args.folds, k) for k in folds]
    runs = []
    for run, folds, fold in todo:
        if (run / "run.json").is_file() and read_json(run / "run.json").get("train_seconds"):
            log(f"reusing the finished run {run}")
        else:
            which = "an 80/20 split" if fold is None else f"fold {fold} of {folds}"
            log(f"training {which} with the defaults into {run} ...")
            train_segmentation(data, run, folds=folds, fold=fold, overrides=args.set,
                               progress=False, log=log)  # fmt: skip
        runs.append(run)
    return runs


def evaluate(runs: list[Path], data: Path, masks: Path, *, mirror: bool | None) -> dict:
    """Every run's validation images predicted by that run, pooled: Dice, HD95, HC error."""
    from medlens.data import load_splits, open_dataset
    from medlens.io import save_image
    from medlens.metrics import SegmentationMetric
    from medlens.tasks.segmentation.predict import (
        load_segmentation_run,
        mirror_default,
        predict_image,
    )

    dataset = open_dataset(data)
    masks.mkdir(parents=True, exist_ok=True)
    metric = SegmentationMetric(labels=[1], tolerance_mm=1.0, n_boot=1000)
    names, subjects, used = [], set(), None
    for run in runs:
        trained = load_segmentation_run(run)
        used = mirror_default(trained.plan) if mirror is None else mirror
        split = load_splits(run / "splits.json")
        split = split[0] if isinstance(split, list) else split
        val = [int(i) for i in split["val_indices"]]
        for n, index in enumerate(val):
            sample = dataset[index]
            pred = predict_image(trained, sample.image, mirror=used)
            names.append(sample.meta["filename"])
            subjects.add(sample.subject)
            save_image(pred, masks / sample.meta["filename"])
            metric.update(pred.array, sample.mask.array > 0, tuple(sample.image.spacing[::-1]),
                          case_id=sample.id)  # fmt: skip
            if (n + 1) % 25 == 0:
                log(f"{run.name}: predicted {n + 1}/{len(val)}")
    result = metric.compute()["aggregate"]["mean"]
    hc = hc_errors(masks, data, names, masks.parent / "hc")
    return {
        **hc,
        "n_images": len(names),
        "n_subjects": len(subjects),
        "folds_scored": len(runs),
        "dice": result["dice"],
        "dice_mean_cv": result["dice"]["mean"],
        "hd95_mm": result["hd95"],
        "mirror": used,
        "postprocessing": trained.postprocessing,
        "plan": {
            "target_spacing": trained.plan.target_spacing,
            "target_scale": trained.plan.target_scale,
            "patch_size": trained.plan.patch_size,
            "batch_size": trained.plan.batch_size,
            "features": trained.plan.network["features"],
            "epochs": trained.plan.train.epochs,
            "batches_per_epoch": trained.plan.train.batches_per_epoch,
        },
        "hc_mae_on_reference_masks_mm": _on_reference(dataset, names, data),
        "figures_from": f"out of fold: {len(runs)} subject-grouped fold(s), each image "
        "predicted by the fold model that never saw its subject",
    }


def hc_errors(masks: Path, data: Path, names: list[str], out: Path) -> dict:
    """``medlens measure head-circumference`` on ``masks`` against ``labels.csv``."""
    import numpy as np

    from medlens.measure.head_circumference import measure_directory

    reference = _read_labels(data / "labels.csv")
    out.mkdir(parents=True, exist_ok=True)
    subset = out / "pixel_size.csv"
    with subset.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "pixel size(mm)"])
        writer.writerows([name, reference[name][0]] for name in names)
    measure_directory(masks, subset, out / "hc.csv")
    with (out / "hc.csv").open() as handle:
        measured = {row["filename"]: float(row["head_circumference_mm"])
                    for row in csv.DictReader(handle)}  # fmt: skip
    diffs = np.array([measured[name] - reference[name][1] for name in names])
    refs = np.array([reference[name][1] for name in names])
    late = np.array([name[:1] in "678" for name in names])

    def summary(inside) -> dict:
        return {"n": int(inside.sum()),
                "mae_mm": round(float(np.abs(diffs[inside]).mean()), 3),
                "mean_diff_mm": round(float(diffs[inside].mean()), 3)}  # fmt: skip

    by_size = {label: summary((refs >= lo) & (refs < hi))
               for label, lo, hi in SIZES if ((refs >= lo) & (refs < hi)).any()}  # fmt: skip
    worst = np.argsort(-np.abs(diffs))[:5]
    return {
        "hc_mae_mm": round(float(np.abs(diffs).mean()), 3),
        "hc_mean_diff_mm": round(float(diffs.mean()), 3),
        "hc_median_abs_mm": round(float(np.median(np.abs(diffs))), 3),
        "hc_max_abs_mm": round(float(np.abs(diffs).max()), 3),
        "hc_by_size": by_size,
        "hc_late_pregnancy": summary(late) if late.any() else None,
        "hc_worst": {names[i]: round(float(diffs[i]), 2) for i in worst},
    }


def _on_reference(dataset, names: list[str], data: Path) -> float:
    """The measurement alone: HC of the reference masks against ``labels.csv``."""
    import numpy as np

    from medlens.measure.head_circumference import head_circumference_mm

    reference = _read_labels(data / "labels.csv")
    wanted = set(names)
    errors = [
        head_circumference_mm(dataset[i].mask.array, reference[name][0]) - reference[name][1]
        for i in range(len(dataset))
        if (name := dataset.entries[i].meta["filename"]) in wanted
    ]  # fmt: skip
    return round(float(np.abs(errors).mean()), 3)


def timing(run: Path, data: Path, work: Path, count: int, mirror: bool | None) -> dict:
    """``medlens predict`` end to end (read, predict, write) per image, one image at a time."""
    from medlens.data import load_splits
    from medlens.tasks.registry import load_predictor

    split = load_splits(run / "splits.json")
    split = split[0] if isinstance(split, list) else split
    images = [data / "images" / f"{case}.png" for case in split["val"][:count]]
    predictor = load_predictor(run, mirror=mirror)
    one, out = work / "one", work / "timed-masks"
    one.mkdir(exist_ok=True)
    seconds = []
    for image in images:
        source = one / image.name
        source.unlink(missing_ok=True)
        source.symlink_to(image)
        start = time.perf_counter()
        predictor.predict_path(one, out)
        seconds.append(time.perf_counter() - start)
        source.unlink()
    return {"infer_seconds_per_image": round(sum(seconds) / max(len(seconds), 1), 3),
            "timed_images": [image.name for image in images]}  # fmt: skip


def nnunet(run: Path, data: Path, work: Path, budget: float | None, mine: dict,
           val_images: int) -> dict:  # fmt: skip
    """nnU-Net's ``2d`` on the run's split and training time, scored like medlens on the
    first ``val_images`` validation images (0: all), which it validates."""
    why = _nnunet.status() or (None if budget else "not run: the run recorded no training time")
    if why is not None:
        return {"nnunet_dice_mean": None, "inference_speedup_vs_nnunet": None, "nnunet_status": why}
    from medlens import load_image
    from medlens.data import load_splits, open_dataset
    from medlens.io import save_image
    from medlens.metrics import SegmentationMetric

    dataset = open_dataset(data)
    labels = work / "nnunet-labels"  # filled reference masks: nnU-Net needs label images
    labels.mkdir(parents=True, exist_ok=True)
    images, label_files, by_case = [], [], {}
    for i in range(len(dataset)):
        sample = dataset[i]
        case = sample.meta["filename"].removesuffix(".png")
        target = labels / f"{case}.png"
        if not target.is_file():
            save_image(sample.mask.with_array((sample.mask.array > 0).astype("uint8")), target)
        images.append(data / "images" / f"{case}.png")
        label_files.append(target)
        by_case[case] = i
    split = load_splits(run / "splits.json")
    split = split[0] if isinstance(split, list) else split
    split = {"train": split["train"], "val": split["val"][: val_images or None]}
    log(f"nnU-Net 2d: planning, preprocessing and training on the split for {budget / 60:.1f} min")
    timed = [data / "images" / name for name in mine["timed_images"]]
    side = _nnunet.side_by_side(images, label_files, [split], work=work / "nnunet",
                                budget_seconds=budget, label_names={"background": 0, "head": 1},
                                infer=timed, dataset_id=505, name="HC18Bench",
                                configuration="2d", file_ending=".png", channel="US",
                                log=log)  # fmt: skip
    predicted = Path(side.pop("validation_dirs")[0])
    names = sorted(file.name for file in predicted.glob("*.png"))

    def score(folder: Path) -> dict:
        metric = SegmentationMetric(labels=[1], tolerance_mm=1.0, n_boot=1000)
        for name in names:
            sample = dataset[by_case[name.removesuffix(".png")]]
            metric.update(load_image(folder / name).array > 0, sample.mask.array > 0,
                          tuple(sample.image.spacing[::-1]), case_id=sample.id)  # fmt: skip
        return metric.compute()["aggregate"]["mean"]

    result, mine_same = score(predicted), score(work / "masks")
    hc = hc_errors(predicted, data, names, work / "nnunet-hc")
    ours = hc_errors(work / "masks", data, names, work / "medlens-hc-same-images")
    side.update(
        nnunet_dice=result["dice"],
        nnunet_dice_mean=result["dice"]["mean"],
        nnunet_hd95_mm=result["hd95"],
        same_images_medlens_dice=mine_same["dice"],
        nnunet_hc_mae_mm=hc["hc_mae_mm"],
        nnunet_hc_mean_diff_mm=hc["hc_mean_diff_mm"],
        nnunet_hc_by_size=hc["hc_by_size"],
        nnunet_images=len(names),
        same_images_medlens_hc_mae_mm=ours["hc_mae_mm"],
        same_images_medlens_hc_mean_diff_mm=ours["hc_mean_diff_mm"],
        inference_speedup_vs_nnunet=round(
            side["nnunet_infer_seconds_per_case"] / mine["infer_seconds_per_image"], 2
        ),
        nnunet_status="run",
    )
    return side


def _read_labels(path: Path) -> dict[str, tuple[float, float]]:
    with path.open(newline="") as handle:
        return {
            row["filename"]: (float(row["pixel size(mm)"]), float(row["head circumference (mm)"]))
            for row in csv.DictReader(handle)
        }


def report(f: dict) -> None:
    def ci(m: dict) -> str:
        return f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"

    per_fold = ", ".join("-" if m is None else f"{m:.1f}" for m in f["train_minutes_per_fold"])
    nn = f["nnunet_status"] == "run"
    print_table(
        f"HC18 out of fold ({f['n_images']} images of {f['n_subjects']} subjects, "
        f"{f['folds_scored']} fold(s), subject-grouped), 95% bootstrap CI",
        ["metric", "medlens", "goal"],
        [
            ["Dice", ci(f["dice"]), f">= {GOALS['dice']}"],
            ["HD95 (mm)", ci(f["hd95_mm"]), ""],
            ["HC mean abs diff (mm)", f"{f['hc_mae_mm']:.3f}", f"<= {GOALS['hc_mae_mm']}"],
            ["HC mean diff (mm)", f"{f['hc_mean_diff_mm']:+.3f}",
             f"within {GOALS['hc_mean_diff_mm']}"],
            ["HC median / max abs (mm)", f"{f['hc_median_abs_mm']:.2f} / {f['hc_max_abs_mm']:.2f}",
             ""],
            ["HC on reference masks (mm)", f"{f['hc_mae_on_reference_masks_mm']:.3f}", ""],
            ["training per fold (min)", per_fold, f"< {GOALS['train_minutes']:.0f}"],
            ["inference per image, end to end", f"{f['infer_seconds_per_image'] * 1000:.0f} ms",
             ""],
        ],
    )  # fmt: skip
    rows = [[k, v["n"], f"{v['mae_mm']:.2f}", f"{v['mean_diff_mm']:+.2f}"]
            for k, v in f["hc_by_size"].items()]  # fmt: skip
    if f.get("hc_late_pregnancy"):
        late = f["hc_late_pregnancy"]
        rows.append(["subjects 600-805", late["n"], f"{late['mae_mm']:.2f}",
                     f"{late['mean_diff_mm']:+.2f}"])  # fmt: skip
    print_table("HC error by reference head circumference (the same images)",
                ["images", "count", "mean abs diff (mm)", "mean diff (mm)"], rows)  # fmt: skip
    if nn:
        print_table(
            f"nnU-Net 2d side by side on the first fold's {f['nnunet_images']} images "
            f"({f['nnunet_epochs']} epoch(s) of {f['nnunet_iterations_per_epoch']} iterations)",
            ["metric", "medlens", "nnU-Net"],
            [
                ["HC mean abs diff (mm)", f"{f['same_images_medlens_hc_mae_mm']:.3f}",
                 f"{f['nnunet_hc_mae_mm']:.3f}"],
                ["HC mean diff (mm)", f"{f['same_images_medlens_hc_mean_diff_mm']:+.3f}",
                 f"{f['nnunet_hc_mean_diff_mm']:+.3f}"],
                ["Dice", ci(f["same_images_medlens_dice"]), ci(f["nnunet_dice"])],
                ["inference per image (s)", f"{f['infer_seconds_per_image']:.3f}",
                 f"{f['nnunet_infer_seconds_per_case']:.3f}"],
            ],
        )  # fmt: skip
    print(f"nnU-Net: {f['nnunet_status']}")


if __name__ == "__main__":
    sys.exit(main())
