"""Explanation methods: time per explanation, faithfulness and a pointing game, on this CPU.

Three models, each trained here with ``medlens train``'s defaults (only the epochs shortened where
noted), on real data of ``$MEDLENS_DATA/medmnist``:

* 2D: BreastMNIST (28x28 ultrasound, benign/normal vs malignant);
* 3D: AdrenalMNIST3D (28^3 CT, normal vs hyperplasia; ``--epochs-3d``, default 20);
* lesions: 64x64 axial CT slices (the middle slice and those 8 above and below it of every
  AdrenalMNIST3D-64 volume: 3564 training, 294 validation images) with simulated lesions blended
  into half of them (:func:`medlens.explain.lesions.simulate_lesions`: ellipses 5-9 px in radius,
  30-50 % of the image's range brighter or darker, soft edge, texture kept), and a classifier
  trained with the defaults (15 epochs) to find them. At 28x28 the last stage of a CNN is a 4x4
  map whose cells each see nearly the whole image: no coarse map localises there, so the pointing
  game uses 64x64 images (an 8x8 map).

Per model and method (Grad-CAM, Grad-CAM++, Integrated Gradients, SmoothGrad, occlusion, LIME,
KernelSHAP, Gradient SHAP): milliseconds per explanation, one image per call (median over the
images, after a warm-up call); deletion and insertion AUC (mean over the images); the Spearman
correlation of the map with the map of the fully re-initialised model (randomisation check,
flagged at >= 0.5). On the lesion set: the pointing game, the share of lesion images whose map
has its maximum on the lesion, with the pointing game's tolerance (Zhang et al., 2018: 15 pixels
of a 224-pixel image, so 4 pixels here), and exactly inside it. Goal (issue 6): Grad-CAM under
50 ms per 2D image; Grad-CAM's pointing accuracy at least 80 %. The JSON line (last line of
stdout) holds ``pointing_gradcam`` (with the tolerance) and ``pointing_gradcam_exact``.

    python benchmarks/explain.py                 # about 15 minutes on 2 cores
    python benchmarks/explain.py --quick         # a smoke run: fewer images and epochs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_threads, emit_json, environment, log, print_table, require_data

GOALS = {"gradcam_ms_2d": 50.0, "pointing_gradcam": 0.80}
SLOW = ("occlusion", "lime", "shap")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run: few images, epochs.")
    parser.add_argument("--workdir", type=Path, help="Keep the runs here (default: tmp).")
    parser.add_argument("--epochs-3d", type=int, default=20, help="AdrenalMNIST3D epochs.")
    parser.add_argument("--images", type=int, default=16, help="Images per 2D case.")
    parser.add_argument("--pointing-images", type=int, default=100, help="Lesion images scored.")
    args = parser.parse_args(argv)
    root = require_data(
        "explain",
        "medmnist/breastmnist.npz",
        "medmnist/adrenalmnist3d.npz",
        "medmnist/pneumoniamnist.npz",
    )
    threads = configure_threads()
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="medlens-explain-") as tmp:
            return run(args, root, Path(tmp), threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return run(args, root, args.workdir, threads)


def run(args, root: Path, work: Path, threads: dict[str, Any]) -> int:
    from medlens.explain import METHODS
    from medlens.explain.lesions import lesion_npz

    quick = args.quick
    n2d = 4 if quick else args.images
    n3d = 2 if quick else max(2, args.images // 4)
    results: dict[str, Any] = {}

    data = work / "data"
    data.mkdir(exist_ok=True)
    log("training the 2D BreastMNIST model ...")
    breast = _train(root / "medmnist/breastmnist.npz", work / "breast", 5 if quick else None)
    results["2d"] = _case(breast, root / "medmnist/breastmnist.npz", n2d, METHODS, quick)
    log("training the 3D AdrenalMNIST3D model ...")
    adrenal = _train(
        root / "medmnist/adrenalmnist3d.npz", work / "adrenal", 2 if quick else args.epochs_3d
    )
    results["3d"] = _case(adrenal, root / "medmnist/adrenalmnist3d.npz", n3d, METHODS, quick)

    log("simulating lesions in 64x64 CT slices and training a detector ...")
    slices = data / "adrenal_slices.npz"
    _ct_slices(root / "medmnist/adrenalmnist3d_64.npz", slices)
    lesions = data / "adrenal_slices_lesions.npz"
    masks = lesion_npz(slices, lesions, copies=1, radius=(5.0, 9.0), contrast=(0.3, 0.5))
    detector = _train(lesions, work / "lesions", 3 if quick else 15)
    results["pointing"] = _pointing(
        detector, lesions, masks["val_masks"], 20 if quick else args.pointing_images, METHODS
    )

    _report(results)
    point = results["pointing"]
    gradcam_ms = results["2d"]["methods"]["gradcam"]["ms_median"]
    payload = {
        "benchmark": "explain",
        "quick": quick,
        "gradcam_ms_2d": gradcam_ms,
        "pointing_gradcam": point["methods"]["gradcam"]["accuracy"],
        "pointing_gradcam_exact": point["methods"]["gradcam"]["accuracy_exact"],
        "goals": GOALS,
        "goals_met": {
            "gradcam_ms_2d": gradcam_ms < GOALS["gradcam_ms_2d"],
            "pointing_gradcam": point["methods"]["gradcam"]["accuracy"]
            >= GOALS["pointing_gradcam"],
        },
        **{f"pointing_{m.replace('+', 'p')}": point["methods"][m]["accuracy"] for m in METHODS},
        "results": results,
        "threads": threads,
        "environment": environment(["torch", "captum", "scikit-image", "numpy"]),
    }
    emit_json(payload)
    return 0


def _ct_slices(source: Path, destination: Path) -> None:
    """Three axial slices (middle, 8 above, 8 below) of every volume, as a 2D MedMNIST file."""
    if destination.is_file():
        return
    out = {}
    with np.load(source) as data:
        for split in ("train", "val"):
            volumes = data[f"{split}_images"]
            middle = volumes.shape[1] // 2
            images = np.concatenate([volumes[:, middle + o] for o in (-8, 0, 8)])
            out[f"{split}_images"] = images
            out[f"{split}_labels"] = np.zeros((len(images), 1), np.int64)
    np.savez(destination, **out)


def _train(npz: Path, output: Path, epochs: int | None) -> Path:
    from medlens.tasks.classification import train_classification

    if (output / "run.json").is_file() and '"complete"' in (output / "run.json").read_text():
        log(f"  reusing {output}")
        return output
    start = time.perf_counter()
    train_classification(
        npz, output, epochs=epochs, progress=False, resume=output.exists(), log=lambda *a: None
    )
    log(f"  trained in {time.perf_counter() - start:.0f} s")
    return output


def _inputs(run_dir: Path, npz: Path, n: int, split: str = "val"):
    from medlens.tasks.classification import load_run, read_inputs

    run = load_run(run_dir)
    images = read_inputs(npz, run.spec, split=split)
    x = torch.from_numpy(np.array(images.images[:n]))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    labels = None if images.labels is None else np.asarray(images.labels).reshape(-1)
    return run.networks[0].eval(), x, labels


def _case(run_dir: Path, npz: Path, n: int, methods, quick: bool) -> dict[str, Any]:
    """Timing (one image per call), deletion/insertion and randomisation for each method."""
    from medlens.explain import attribute
    from medlens.explain.faithfulness import deletion_insertion, randomisation_check

    model, x, _ = _inputs(run_dir, npz, n)
    with torch.no_grad():
        targets = model(x).argmax(1)
    out: dict[str, Any] = {"images": int(x.shape[0]), "shape": list(x.shape[1:]), "methods": {}}
    for method in methods:
        k = min(x.shape[0], 4 if method in SLOW and x.dim() == 5 else x.shape[0])
        attribute(model, x[:1], method, targets[:1])  # warm-up (imports, first-call costs)
        times, maps = [], []
        for i in range(k):
            start = time.perf_counter()
            maps.append(attribute(model, x[i : i + 1], method, targets[i : i + 1]))
            times.append(time.perf_counter() - start)
        amap = torch.cat(maps)
        curves = deletion_insertion(model, x[:k], amap, targets[:k])
        r = min(k, 2 if method in SLOW or quick else 4)
        check = randomisation_check(
            model,
            x[:r],
            lambda mdl, xx, tt, _m=method: attribute(mdl, xx, _m, tt),
            targets[:r],
            reference=amap[:r],
        )
        out["methods"][method] = {
            "ms_median": 1000 * statistics.median(times),
            "ms_mean": 1000 * statistics.mean(times),
            "images": k,
            "deletion_auc": float(np.mean(curves["deletion_auc"])),
            "insertion_auc": float(np.mean(curves["insertion_auc"])),
            "randomisation_spearman": check["final"],
            "randomisation_flagged": check["flagged"],
        }
        log(f"  {method}: {out['methods'][method]['ms_median']:.1f} ms")
    return out


def _pointing(run_dir: Path, npz: Path, masks: np.ndarray, n: int, methods) -> dict[str, Any]:
    """Pointing game on the lesion images of the validation split."""
    from sklearn.metrics import roc_auc_score

    from medlens.explain import attribute
    from medlens.explain.faithfulness import pointing_hits

    model, x, labels = _inputs(run_dir, npz, 10**9)
    with torch.no_grad():
        probs = model(x).softmax(1)[:, 1].numpy()
    auc = float(roc_auc_score(labels, probs))
    positives = np.flatnonzero(labels == 1)[:n]
    xp, mp = x[positives], masks[positives]
    target = torch.ones(len(positives), dtype=torch.long)
    tolerance = round(15 / 224 * min(x.shape[2:]))  # the pointing game's 15 px at 224
    out: dict[str, Any] = {
        "detector_auc": auc,
        "lesion_images": len(positives),
        "tolerance_px": tolerance,
        "methods": {},
    }
    for method in methods:
        maps = attribute(model, xp, method, target)
        hits = pointing_hits(maps, mp, tolerance=tolerance)
        exact = pointing_hits(maps, mp, tolerance=0)
        out["methods"][method] = {
            "accuracy": float(hits.mean()),
            "accuracy_exact": float(exact.mean()),
        }
        log(f"  pointing {method}: {hits.mean():.3f}")
    return out


def _report(results: dict[str, Any]) -> None:
    from medlens.explain import METHOD_NAMES

    for case, title in (("2d", "2D BreastMNIST"), ("3d", "3D AdrenalMNIST3D")):
        res = results[case]
        rows = [
            [
                METHOD_NAMES[m],
                f"{e['ms_median']:.1f}",
                e["images"],
                f"{e['deletion_auc']:.3f}",
                f"{e['insertion_auc']:.3f}",
                f"{e['randomisation_spearman']:.2f}"
                + (" flagged" if e["randomisation_flagged"] else ""),
            ]
            for m, e in res["methods"].items()
        ]
        print_table(
            f"{title}: per explanation on this CPU, input {res['shape']}",
            [
                "method",
                "ms / image",
                "images",
                "deletion AUC",
                "insertion AUC",
                "randomisation rho",
            ],
            rows,
        )
    point = results["pointing"]
    rows = [
        [METHOD_NAMES[m], f"{e['accuracy']:.3f}", f"{e['accuracy_exact']:.3f}"]
        for m, e in point["methods"].items()
    ]
    print_table(
        f"Pointing game: {point['lesion_images']} simulated-lesion images "
        f"(detector AUC {point['detector_auc']:.3f})",
        ["method", f"hit (within {point['tolerance_px']} px)", "hit (inside)"],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
