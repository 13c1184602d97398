"""HC18 fetal head segmentation and head circumference with medlens' defaults.

Runs exactly what ``medlens train --task segmentation --data hc18 --output RUN`` runs (the
defaults are the product: plan, subject-grouped 80/20 split, training, postprocessing chosen on
the validation cases), then treats the run's held-out validation cases as a user would:

1. ``medlens predict``'s code path on each original image (one PNG mask per image on the
   image's own grid), timed per image;
2. Dice and HD95 (mm, spacing-aware) of each mask against the filled sonographer outline, on the
   original grid, with 95% bootstrap intervals;
3. ``medlens measure head-circumference`` on the written masks with ``labels.csv``'s pixel sizes,
   and the mean absolute difference to the sonographer's head circumference in ``labels.csv``
   (and, as a check of the measurement alone, the same on the reference masks).

The validation split is grouped by subject (``010_HC`` and ``010_2HC`` are the same fetus), so
no subject is on both sides. Goal (issue 5): Dice >= 0.97, HC MAE <= 2.0 mm, training under
45 minutes on this CPU. Prints tables, then one JSON line with all figures.

    python benchmarks/hc18.py                  # train with the defaults, then evaluate
    python benchmarks/hc18.py --run RUN_DIR    # evaluate an existing run
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_threads, emit_json, environment, log, print_table, require_data

GOALS = {"dice": 0.97, "hc_mae_mm": 2.0, "train_minutes": 45.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="Evaluate this finished run instead of training.")
    parser.add_argument("--workdir", type=Path, help="Keep the run and masks here (default: tmp).")
    parser.add_argument("--set", action="append", default=[], help="Plan override key=value.")
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
        run, train_seconds = args.run, None
        if run is None:
            from medlens.tasks.segmentation.train import train_segmentation

            run = work / "run"
            log(f"training with the defaults into {run} ...")
            start = time.perf_counter()
            train_segmentation(data, run, overrides=args.set, progress=False, log=log)
            train_seconds = time.perf_counter() - start
        figures = evaluate(run, data, work / "masks", mirror=args.mirror)
    figures["train_seconds"] = None if train_seconds is None else round(train_seconds, 1)
    report(figures)
    figures["goals"] = GOALS
    figures["goals_met"] = {
        "dice": figures["dice"]["mean"] >= GOALS["dice"],
        "hc_mae_mm": figures["hc_mae_mm"] <= GOALS["hc_mae_mm"],
        "train_minutes": train_seconds is not None and train_seconds < GOALS["train_minutes"] * 60,
    }
    figures["threads"] = threads
    figures["environment"] = environment(["medlens", "torch", "numpy"])
    emit_json({"benchmark": "hc18", **figures})
    return 0


def evaluate(run: Path, data: Path, masks: Path, *, mirror: bool | None) -> dict:
    import json

    import numpy as np

    from medlens.data import open_dataset
    from medlens.io import save_image
    from medlens.measure.head_circumference import head_circumference_mm, measure_directory
    from medlens.metrics import SegmentationMetric
    from medlens.tasks.segmentation.predict import load_segmentation_run, predict_image

    trained = load_segmentation_run(run)
    if mirror is None:
        from medlens.tasks.segmentation.predict import mirror_default

        mirror = mirror_default(trained.plan)
    dataset = open_dataset(data)
    split = json.loads((run / "splits.json").read_text())["folds"][0]
    val = [int(i) for i in split["val_indices"]]
    masks.mkdir(parents=True, exist_ok=True)
    metric = SegmentationMetric(labels=[1], tolerance_mm=1.0, n_boot=1000)
    seconds, names = [], []
    for n, index in enumerate(val):
        sample = dataset[index]
        start = time.perf_counter()
        pred = predict_image(trained, sample.image, mirror=mirror)
        seconds.append(time.perf_counter() - start)
        name = sample.meta["filename"]
        names.append(name)
        save_image(pred, masks / name)
        metric.update(pred.array, sample.mask.array > 0, tuple(sample.image.spacing[::-1]),
                      case_id=sample.id)  # fmt: skip
        if (n + 1) % 10 == 0:
            log(f"predicted {n + 1}/{len(val)}")
    result = metric.compute()["aggregate"]["mean"]

    reference = _read_labels(data / "labels.csv")
    subset = masks.parent / "val_pixel_size.csv"
    with subset.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["filename", "pixel size(mm)"])
        out.writerows([name, reference[name][0]] for name in names)
    hc_csv = masks.parent / "hc.csv"
    measure_directory(masks, subset, hc_csv)
    with hc_csv.open() as handle:
        measured = {row["filename"]: float(row["head_circumference_mm"])
                    for row in csv.DictReader(handle)}  # fmt: skip
    diffs = np.array([measured[name] - reference[name][1] for name in names])
    on_reference = np.array([
        head_circumference_mm(dataset[i].mask.array, reference[name][0]) - reference[name][1]
        for i, name in zip(val, names, strict=True)
    ])  # fmt: skip
    refs = np.array([reference[name][1] for name in names])
    by_size = {}
    for label, low, high in (("<150 mm", 0, 150), ("150-250 mm", 150, 250), (">=250 mm", 250, 1e9)):
        inside = (refs >= low) & (refs < high)
        if inside.any():
            by_size[label] = {"n": int(inside.sum()),
                              "mae_mm": round(float(np.abs(diffs[inside]).mean()), 3),
                              "mean_diff_mm": round(float(diffs[inside].mean()), 3)}  # fmt: skip
    return {
        "hc_by_size": by_size,
        "n_val": len(val),
        "val_subjects": len({dataset[i].subject for i in val}) if val else 0,
        "dice": result["dice"],
        "hd95_mm": result["hd95"],
        "hc_mae_mm": round(float(np.abs(diffs).mean()), 3),
        "hc_mean_diff_mm": round(float(diffs.mean()), 3),
        "hc_median_abs_mm": round(float(np.median(np.abs(diffs))), 3),
        "hc_max_abs_mm": round(float(np.abs(diffs).max()), 3),
        "hc_mae_on_reference_masks_mm": round(float(np.abs(on_reference).mean()), 3),
        "infer_seconds_per_image": round(float(np.mean(seconds)), 3),
        "mirror": mirror,
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
    }


def _read_labels(path: Path) -> dict[str, tuple[float, float]]:
    with path.open(newline="") as handle:
        return {
            row["filename"]: (float(row["pixel size(mm)"]), float(row["head circumference (mm)"]))
            for row in csv.DictReader(handle)
        }


def report(f: dict) -> None:
    def ci(m: dict) -> str:
        return f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"

    train = "-" if f["train_seconds"] is None else f"{f['train_seconds'] / 60:.1f} min"
    print_table(
        f"HC18, subject-grouped validation split ({f['n_val']} images, {f['val_subjects']} "
        "subjects), 95% bootstrap CI",
        ["metric", "medlens", "goal"],
        [
            ["Dice", ci(f["dice"]), f">= {GOALS['dice']}"],
            ["HD95 (mm)", ci(f["hd95_mm"]), ""],
            ["HC mean abs diff (mm)", f"{f['hc_mae_mm']:.3f}", f"<= {GOALS['hc_mae_mm']}"],
            ["HC mean diff (mm)", f"{f['hc_mean_diff_mm']:+.3f}", ""],
            ["HC median / max abs (mm)", f"{f['hc_median_abs_mm']:.2f} / {f['hc_max_abs_mm']:.2f}",
             ""],
            ["HC on reference masks (mm)", f"{f['hc_mae_on_reference_masks_mm']:.3f}", ""],
            ["training wall time", train, f"< {GOALS['train_minutes']:.0f} min"],
            ["inference per image", f"{f['infer_seconds_per_image'] * 1000:.0f} ms", ""],
        ],
    )  # fmt: skip
    print_table(
        "HC error by reference head circumference (the same validation images)",
        ["size range", "images", "mean abs diff (mm)", "mean diff (mm)"],
        [[k, v["n"], f"{v['mae_mm']:.2f}", f"{v['mean_diff_mm']:+.2f}"]
         for k, v in f.get("hc_by_size", {}).items()],
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
