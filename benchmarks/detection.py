"""Detection with the defaults: BCCD blood cells (2D) and SIMULATED lesions in real CT and MR (3D).

BCCD: ``medlens train --task detection --data bccd`` (the defaults; trained on VOC's ``train``,
the best epoch chosen on ``val``), then scored on ``val`` as ``medlens evaluate`` scores it: COCO
mAP@0.5 and @0.5:0.95 per class (pycocotools' rules) with bootstrap intervals, counting errors
per class, and ``medlens predict``'s seconds per image end to end. ``val`` chose the best epoch,
so it is a validation figure; the official test split is held out of the project.

3D: ``medlens datasets simulate-lesions`` inserts SIMULATED lesions (3-30 mm, at least two voxels
wide) into crops of the real TotalSegmentator CT, MR and CT DICOM series and of the Decathlon
hippocampus MRIs: a training set (seed 0: the three scans and 150 hippocampus subjects) and a
held-out test set (seed 1: new lesions in new crops of the same three scans and in the other 50
hippocampus subjects; ``_lesion_sources.py``). The defaults train on the first (their validation
split grouped by subject); the second is scored by the FROC (LUNA16's hit rule, CPM) beside
a classical baseline, scikit-image's Laplacian-of-Gaussian blob detector, on the same volumes
with the same rule. Inference seconds per volume are timed on a 128^3 volume on the plan's grid.

Organ localisation (3D, real labels): the Decathlon hippocampus (``msd_hippocampus``, 200 MRI
cases) read as detection, one box per structure (anterior and posterior) from its label maps
(``medlens train --task detection --data msd_hippocampus --folds 5 --fold 0``). Scored on fold
0's 40 cases, which chose the best epoch and the mirroring (a validation figure): AP and each
structure's best box against its true box (IoU, centre and wall distances in mm), once on the
plan's grid as ``medlens evaluate`` scores it and once from ``medlens predict``'s world boxes.

Usage::

    python benchmarks/detection.py --workdir /tmp/det      # keeps (and reuses) the runs there
    python benchmarks/detection.py --skip-3d --skip-organs --workdir W    # BCCD only
    python benchmarks/detection.py --skip-3d --skip-bccd     # hippocampus localisation only
    python benchmarks/detection.py --quick                  # a minute: tiny schedules, no claims

The peer, with ``--peer-python .venv-peer/bin/python``: Ultralytics YOLO11n from its model YAML
(random initialisation, as medlens starts), trained on BCCD's ``train`` for medlens's training
minutes (Ultralytics' ``time`` budget; its own validation on ``val`` keeps its best epoch, as
medlens's does) by ``benchmarks/_yolo_peer.py`` in its own environment: torchvision, which YOLO
needs, cannot be imported beside medlens's CPU torch (benchmarks/README.md). Both detectors'
boxes on ``val`` are then scored by the same COCO AP code against the same boxes, in the images'
own pixels, each predicting with its own defaults.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_threads, emit_json, environment, log, print_table, require_data
from _lesion_sources import split_sources
from medlens._json import read_json

QUICK = ["train.epochs=1", "train.batches_per_epoch=2", "train.val_every=1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="Keep (and reuse) the runs here.")
    parser.add_argument("--skip-3d", action="store_true")
    parser.add_argument("--skip-bccd", action="store_true")
    parser.add_argument("--skip-organs", action="store_true")
    parser.add_argument("--peer-python", type=Path, help="Python of the YOLO venv (the peer).")
    parser.add_argument("--volumes", type=int, default=160, help="Simulated training volumes.")
    parser.add_argument("--test-volumes", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="Tiny schedules: a smoke run.")
    args = parser.parse_args(argv)
    root = require_data("detection", "bccd")
    threads = configure_threads()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_bccd:
            figures.update(bccd(root / "bccd", work / "bccd", args.quick))
            if args.peer_python:
                figures.update(yolo_peer(root / "bccd", work, figures, args))
        if not args.skip_3d:
            figures.update(lesions3d(root, work / "lesions3d", args))
        if not args.skip_organs:
            figures.update(organs(root / "msd_hippocampus", work / "hippocampus", args.quick))
    report(figures)
    figures["threads"] = threads
    figures.setdefault("peer", "not run: YOLO needs torchvision, in its own venv (--peer-python)")
    figures["environment"] = environment(["medlens", "torch", "numpy", "scikit-image"])
    emit_json({"benchmark": "detection", **figures})
    return 0


def train(data: Path, run: Path, quick: bool, **cv) -> float:
    """Train with the defaults into ``run`` (reused when finished; ``cv``: ``folds``, ``fold``);
    training minutes."""
    from medlens.tasks.detection.train import train_detection

    if not (run / "run.json").exists() or read_json(run / "run.json")["status"] != "complete":
        log(f"training the defaults on {data} into {run} ...")
        train_detection(data, run, overrides=QUICK if quick else (), log=log, **cv)
    return round(read_json(run / "run.json")["train_seconds"] / 60, 2)


def bccd(data: Path, run: Path, quick: bool) -> dict:
    import medlens
    from medlens.tasks.detection.evaluate import evaluate_detection

    minutes = train(data, run, quick)
    predictor = medlens.load_predictor(run)
    log("scoring BCCD val ...")
    result, _ = evaluate_detection(
        predictor.trained, data, output=run / "evaluation", progress=False
    )
    names = result["class_names"]
    ap = result["ap"]
    images = sorted((data / "JPEGImages").glob("*.jpg"))[:20]
    loaded = [medlens.load_image(p) for p in images]
    predictor.predict(loaded[:1])  # warm-up
    started = time.perf_counter()
    predictor.predict(loaded)
    per_image = (time.perf_counter() - started) / len(loaded)
    counts = result["counts"]["per_class"]
    return {
        "bccd_map50": ap["map50"],
        "bccd_map50_95": ap["map50_95"],
        "bccd_map50_ci": ap["map50_ci"],
        "bccd_ap50_per_class": {names[int(k)]: v for k, v in ap["ap50_per_class"].items()},
        "bccd_ap50_95_per_class": {names[int(k)]: v for k, v in ap["ap50_95_per_class"].items()},
        "bccd_count_mae_per_class": {
            names[int(k)] if k.isdigit() else k: v["mae"] for k, v in counts.items()
        },
        "bccd_train_minutes": minutes,
        "bccd_seconds_per_image": round(per_image, 3),
        "bccd_split": "val (87 images; it chose the best epoch: a validation figure)",
    }


def yolo_peer(data: Path, work: Path, figures: dict, args) -> dict:
    """YOLO trained for medlens's BCCD minutes in its own venv; both scored alike on val."""
    import json
    import subprocess

    import medlens
    from medlens.data import VOCDataset
    from medlens.metrics.detection import average_precision

    out = work / "yolo"
    minutes = 0.3 if args.quick else figures["bccd_train_minutes"]
    if not (out / "predictions.json").exists():
        log(f"training the peer (YOLO, {minutes} min) with {args.peer_python} ...")
        script = Path(__file__).resolve().parent / "_yolo_peer.py"
        command = [str(args.peer_python), str(script), "--data", str(data), "--out", str(out)]
        subprocess.run([*command, "--minutes", str(minutes)], check=True)
    peer = json.loads((out / "predictions.json").read_text())
    val = VOCDataset(data, split="val")
    if peer["classes"] != val.class_names:
        raise SystemExit(f"the peer's classes {peer['classes']} are not {val.class_names}")
    samples = list(val)
    predictor = medlens.load_predictor(work / "bccd")
    found = predictor.predict([s.image for s in samples])
    index = {name: k for k, name in enumerate(val.class_names)}
    truths, ours, theirs = [], [], []
    for sample, mine in zip(samples, found, strict=True):
        ignore = sample.meta.get("ignore")
        truths.append({"boxes": sample.fields["boxes"], "labels": sample.label, "ignore": ignore})
        # both write pixels with 0 at the first pixel's outer edge; index coordinates: - 0.5
        labels = [index[n] for n in mine.labels]
        ours.append(
            {"boxes": np.asarray(mine.boxes) - 0.5, "scores": mine.scores, "labels": labels}
        )
        q = peer["predictions"][sample.id]
        boxes = np.asarray(q["boxes"], float).reshape(-1, 4) - 0.5
        theirs.append({"boxes": boxes, "scores": q["scores"], "labels": q["labels"]})
    classes = range(len(val.class_names))
    a = average_precision(ours, truths, classes=classes, n_boot=1000)
    b = average_precision(theirs, truths, classes=classes, n_boot=1000)
    return {
        "peer": f"Ultralytics {peer['ultralytics']} {peer['model']} from scratch (torch "
        f"{peer['torch']}), {peer['epochs']} epochs in {peer['train_seconds'] / 60:.1f} min",
        "peer_bccd_map50": b["map50"],
        "peer_bccd_map50_ci": b["map50_ci"],
        "peer_bccd_map50_95": b["map50_95"],
        "peer_bccd_ap50_per_class": {
            val.class_names[int(k)]: v for k, v in b["ap50_per_class"].items()
        },
        "peer_bccd_train_minutes": round(peer["train_seconds"] / 60, 2),
        "peer_bccd_seconds_per_image": peer["seconds_per_image"],
        "bccd_map50_same_scoring": a["map50"],
        "bccd_map50_95_same_scoring": a["map50_95"],
        "bccd_map50_ratio_vs_peer": round(a["map50"] / b["map50"], 3) if b["map50"] else None,
    }


def lesions3d(root: Path, work: Path, args) -> dict:
    import medlens
    from medlens.data.simulate_lesions import simulate_lesion_dataset
    from medlens.tasks.detection.evaluate import evaluate_detection

    work.mkdir(parents=True, exist_ok=True)
    train_sources, test_sources = split_sources(root, work)
    train_set, test_set = work / "simulated_train", work / "simulated_test"
    for folder, source, count, seed in (
        (train_set, train_sources, args.volumes, 0),
        (test_set, test_sources, args.test_volumes, 1),
    ):
        if not (folder / "annotations.csv").exists():
            simulate_lesion_dataset(
                source, folder, count=4 if args.quick else count, seed=seed, progress=False
            )
    run = work / "run"
    minutes = train(train_set, run, args.quick)
    predictor = medlens.load_predictor(run)
    log("scoring the held-out simulated volumes ...")
    result, _ = evaluate_detection(
        predictor.trained, test_set, split="all", output=run / "evaluation", progress=False
    )
    baseline = log_baseline(test_set, predictor.trained.plan)
    seconds = time_128(predictor)
    froc = result["froc"]
    seen = {f"lesions3d_{k}": v for k, v in visibility(test_set, predictor.trained).items()}
    return {
        **seen,
        "lesions3d_cpm": froc["cpm"],
        "lesions3d_cpm_ci": froc["cpm_ci"],
        "lesions3d_sensitivity_at": froc["sensitivity_at"],
        "lesions3d_cpm_log_baseline": baseline["cpm"],
        "lesions3d_log_baseline_sensitivity_at": baseline["sensitivity_at"],
        "lesions3d_map50": result["ap"]["map50"],
        "lesions3d_train_minutes": minutes,
        "lesions3d_test_volumes": result["n_cases"],
        "lesions3d_test_findings": froc["n_findings"],
        "seconds_per_volume_128": seconds,
        "lesions3d_data": "SIMULATED lesions in crops of the real TotalSegmentator CT, MR and "
        "CT DICOM series and 150 Decathlon hippocampus MRIs; test: seed 1 (new lesions, new "
        "crops of the same three scans, the other 50 hippocampus subjects)",
    }


def organs(data: Path, run: Path, quick: bool) -> dict:
    import medlens
    from medlens.data import open_detection
    from medlens.metrics.localisation import localisation_errors
    from medlens.tasks.detection.evaluate import evaluate_detection

    if not data.is_dir():
        return {"hippocampus_status": f"skipped: {data} is missing"}
    minutes = train(data, run, quick, folds=5, fold=0)
    predictor = medlens.load_predictor(run)
    log("scoring fold 0's held-out hippocampus cases ...")
    result, _ = evaluate_detection(
        predictor.trained, data, output=run / "evaluation", progress=False
    )
    names, ap, grid = result["class_names"], result["ap"], result["localisation"]
    # the same cases end to end: medlens predict's world boxes against the label maps' boxes
    dataset = open_detection(data)
    wanted = set(read_json(run / "splits.json")["folds"][0]["val"])
    samples = [dataset[i] for i, case in enumerate(dataset.ids()) if case in wanted]
    started = time.perf_counter()
    found = predictor.predict([s.image for s in samples])
    per_case = (time.perf_counter() - started) / len(samples)
    index = {name: k for k, name in enumerate(names)}
    detections = [
        {"boxes": p.boxes_mm, "scores": p.scores, "labels": [index[n] for n in p.labels]}
        for p in found
    ]
    truths = [{"boxes": s.meta["boxes_world"], "labels": s.label} for s in samples]
    world = localisation_errors(detections, truths, classes=range(len(names)), n_boot=1000)
    figures = {
        "hippocampus_map50": ap["map50"],
        "hippocampus_map50_95": ap["map50_95"],
        "hippocampus_ap50_95_per_class": {
            names[int(k)]: v for k, v in ap["ap50_95_per_class"].items()
        },
        "hippocampus_train_minutes": minutes,
        "hippocampus_seconds_per_case": round(per_case, 3),
        "hippocampus_cases": len(samples),
        "hippocampus_split": "fold 0 of 5 (40 cases; it chose the best epoch and the mirroring)",
    }
    for where, loc in (("", grid), ("_predict_world", world)):
        for key in ("detected", "iou", "centre_mm", "wall_mm"):
            figures[f"hippocampus_{key}{where}"] = loc["all"].get(key)
            if f"{key}_ci" in loc["all"]:
                figures[f"hippocampus_{key}{where}_ci"] = loc["all"][f"{key}_ci"]
        figures[f"hippocampus_per_class{where}"] = {
            names[int(k)]: {m: v.get(m) for m in ("detected", "iou", "centre_mm", "wall_mm")}
            for k, v in loc["per_class"].items()
        }
    return figures


def visibility(folder: Path, trained) -> dict:
    """Per lesion of a simulated set: its contrast (``lesions.csv``'s delta) in units of the
    volume's voxel noise (1.4826 x the MAD of the image minus its 3x3x3 median), a Rose-type SNR
    (that x the root of its voxel count), and the best score of a detection within its radius;
    plus the scores at 1 and 8 false positives per volume (no mirroring)."""
    import csv

    from scipy import ndimage

    from medlens.data import open_dataset
    from medlens.tasks.detection.data import preprocess_case
    from medlens.tasks.detection.predict import detect_array

    plan, lesions = trained.plan, {}
    with (folder / "lesions.csv").open() as handle:
        for row in csv.DictReader(handle):
            lesions.setdefault(row["seriesuid"], []).append(abs(float(row["delta"])))
    dataset = open_dataset(folder)
    cnr, snr, best, false = [], [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        array = sample.image.array.astype(np.float64)
        residual = array - ndimage.median_filter(array, 3)
        sigma = max(1.4826 * float(np.median(np.abs(residual - np.median(residual)))), 1e-6)
        case = preprocess_case(sample, plan)
        boxes, scores, _ = detect_array(trained.networks, case.image, plan, mirror=False)
        spacing = np.asarray(case.meta["grid_spacing"], float)
        found = (boxes[:, :3] + boxes[:, 3:]) / 2 * spacing
        hit = np.zeros(len(scores), bool)
        voxel = float(np.prod(sample.image.spacing))
        diameters = np.asarray(case.meta["diameter_mm"], float)
        centres = (case.boxes[:, :3] + case.boxes[:, 3:]) / 2 * spacing
        for delta, centre, d in zip(lesions.get(sample.id, []), centres, diameters, strict=True):
            near = np.linalg.norm(found - centre, axis=1) <= d / 2
            hit |= near
            cnr.append(delta / sigma)
            snr.append(delta / sigma * np.sqrt(np.pi / 6 * d**3 / voxel))
            best.append(float(scores[near].max()) if near.any() else 0.0)
        false.append(scores[~hit])
    others = np.sort(np.concatenate(false))[::-1] if false else np.zeros(0)
    n = len(dataset)
    at = {k: float(others[min(len(others) - 1, k * n)]) if len(others) else 0.0 for k in (1, 8)}
    best = np.asarray(best)
    return {
        "noise_cnr_median": round(float(np.median(cnr)), 2),
        "rose_snr_median": round(float(np.median(snr)), 1),
        "rose_snr_over_20": float(np.mean(np.asarray(snr) > 20)),
        "score_at_1fp": round(at[1], 4),
        "score_at_8fp": round(at[8], 4),
        "best_score_median": round(float(np.median(best)), 4),
    }


def log_baseline(test_set: Path, plan) -> dict:
    """FROC of scikit-image's LoG blob detector on the test volumes (on the plan's grid), the
    same hit rule; a blob's score is its LoG response."""
    from skimage.feature import blob_log

    from medlens.data import open_dataset
    from medlens.metrics.detection import froc
    from medlens.tasks.detection.data import preprocess_case

    dataset = open_dataset(test_set)
    scans, findings = [], []
    spacing = np.asarray(plan.target_spacing, float)
    low, high = 1.5 / spacing.max(), 15.0 / spacing.min()  # radii 1.5-15 mm in voxels
    for i in range(len(dataset)):
        case = preprocess_case(dataset[i], plan)
        volume = case.image[0]
        found = []
        for sign in (1.0, -1.0):  # bright and dark lesions
            v = sign * volume
            v = (v - v.min()) / max(float(np.ptp(v)), 1e-6)
            blobs = blob_log(
                v,
                min_sigma=low / np.sqrt(3),
                max_sigma=high / np.sqrt(3),
                num_sigma=8,
                threshold=0.02,
            )
            found.extend(blobs.tolist())
        blobs = np.asarray(found).reshape(-1, 4)
        centres = blobs[:, :3][:, ::-1] * spacing  # array order -> x, y, z; voxels -> mm
        score = np.array([_response(volume, b) for b in blobs]) if len(blobs) else np.zeros(0)
        scans.append({"centres": centres, "scores": score})
        sizes = (case.boxes[:, 3:] - case.boxes[:, :3]) * spacing
        radii = sizes.min(axis=1) / 2 if len(sizes) else np.zeros(0)
        diameters = case.meta.get("diameter_mm")
        if diameters is not None and len(diameters) == len(radii):
            radii = np.where(np.isfinite(diameters), np.asarray(diameters) / 2, radii)
        centre = (case.boxes[:, :3] + case.boxes[:, 3:]) / 2 * spacing
        findings.append({"centres": centre, "radii": np.asarray(radii, float)})
    return froc(scans, findings, n_boot=200)


def _response(volume: np.ndarray, blob) -> float:
    """Contrast of a blob: |mean inside its radius - mean of the shell around it|."""
    z, y, x, sigma = blob
    r = max(1.0, sigma * np.sqrt(3))
    lo = [max(0, int(c - 2 * r)) for c in (z, y, x)]
    hi = [min(s, int(c + 2 * r) + 1) for c, s in zip((z, y, x), volume.shape, strict=True)]
    patch = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    d = np.sqrt(((grid - np.array([z, y, x])) ** 2).sum(-1))
    inside, shell = patch[d <= r], patch[(d > r) & (d <= 2 * r)]
    if not inside.size or not shell.size:
        return 0.0
    return float(abs(inside.mean() - shell.mean()))


def time_128(predictor) -> float:
    """Seconds to predict one 128^3 volume on the plan's grid (median of three)."""
    from medlens.image import Image

    plan = predictor.trained.plan
    rng = np.random.default_rng(0)
    image = Image(
        rng.normal(0, 1, (128, 128, 128)).astype(np.float32), spacing=tuple(plan.target_spacing)
    )
    predictor.predict([image])
    times = []
    for _ in range(3):
        started = time.perf_counter()
        predictor.predict([image])
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)), 2)


def report(f: dict) -> None:
    if "bccd_map50" in f:
        rows = [
            [
                name,
                f"{f['bccd_ap50_per_class'][name]:.3f}",
                f"{f['bccd_ap50_95_per_class'][name]:.3f}",
                f"{f['bccd_count_mae_per_class'].get(name, float('nan')):.2f}",
            ]
            for name in f["bccd_ap50_per_class"]
        ]
        rows.append(["mean", f"{f['bccd_map50']:.3f}", f"{f['bccd_map50_95']:.3f}", ""])
        print_table(
            "BCCD val (chose the best epoch): AP per class",
            ["class", "AP@0.5", "AP@0.5:0.95", "count MAE"],
            rows,
        )
        print(f"training {f['bccd_train_minutes']} min; {f['bccd_seconds_per_image']} s per image")
    if "lesions3d_cpm" in f:
        rows = [
            ["medlens (defaults)", f"{f['lesions3d_cpm']:.3f}"]
            + [f"{v:.2f}" for v in f["lesions3d_sensitivity_at"].values()],
            ["LoG blobs (scikit-image)", f"{f['lesions3d_cpm_log_baseline']:.3f}"]
            + [f"{v:.2f}" for v in f["lesions3d_log_baseline_sensitivity_at"].values()],
        ]
        print_table(
            "SIMULATED 3D lesions, held-out volumes: FROC (LUNA16 rule)",
            ["detector", "CPM", *[f"{k} FP" for k in f["lesions3d_sensitivity_at"]]],
            rows,
        )
        print(
            f"training {f['lesions3d_train_minutes']} min; "
            f"{f['seconds_per_volume_128']} s per 128^3 volume"
        )
    if "hippocampus_map50" in f:
        places = (("grid (evaluate)", ""), ("world (predict)", "_predict_world"))
        rows = [
            [where, name, *(_f(v[m]) for m in ("detected", "iou", "centre_mm", "wall_mm"))]
            for where, key in places
            for name, v in f[f"hippocampus_per_class{key}"].items()
        ]
        print_table(
            "Hippocampus localisation, fold 0 (validation): each structure's best box",
            ["boxes", "structure", "found", "IoU", "centre mm", "wall mm"],
            rows,
        )
        print(
            f"mAP@0.5 {f['hippocampus_map50']:.3f}, mAP@0.5:0.95 {f['hippocampus_map50_95']:.3f}; "
            f"training {f['hippocampus_train_minutes']} min; "
            f"{f['hippocampus_seconds_per_case']} s per case"
        )


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
