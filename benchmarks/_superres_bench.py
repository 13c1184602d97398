"""Super-resolution for ``benchmarks/reconstruction.py``: x4 in 2D and through-plane in 3D.

- **2D x4** (``medlens train --task reconstruction`` on images: the defaults but the schedule):
  trained on HC18 ultrasound (subjects whose number is not a multiple of 5) and BCCD
  microscopy (``train``); scored on held-out HC18 subjects (multiples of 5), BCCD ``val``
  and the four histology sections (no training image is histology). Each test image is
  degraded (block averages of 4x4) and brought back; PSNR against the original with its
  maximum as the range, beside cubic-spline ("bicubic") and nearest interpolation of the same
  low-resolution image.
- **Through-plane** (SMORE: trained on the thick-slice volumes' own in-plane slices): the T1
  brain series (1.2 mm slices, 1.05 mm pixels) degraded to 3.6 and 4.8 mm slices (3x and 4x
  block averages along the slice axis), one run per thickness trained on the thick volumes,
  scored against the 1.2 mm original (half the 2D run's epochs: the thick volumes hold few
  slices); at 4x also the held-out hippocampus MRIs (every 8th
  subject, 1 mm, degraded to 4 mm along the array's first axis).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _common import link, log


def sources_2d(root: Path, work: Path, limit: int) -> dict[str, Path]:
    out = {k: work / "sr_sources" / k for k in ("train", "hc18", "bccd", "histology")}
    if (work / "sr_sources" / ".done").exists():
        return out
    held_out = []
    for path in sorted((root / "hc18" / "images").glob("*_HC.png")):
        if int(path.name[:3]) % 5:
            link(path, out["train"] / "hc18" / path.name)
        else:
            held_out.append(path)
    for path in held_out[:: max(1, len(held_out) // limit)][:limit]:
        link(path, out["hc18"] / path.name)
    voc = root / "bccd"
    for split, target in (("train", out["train"] / "bccd"), ("val", out["bccd"])):
        names = (voc / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        for name in names[: None if split == "train" else limit]:
            link(voc / "JPEGImages" / f"{name}.jpg", target / f"{name}.jpg")
    for path in sorted((root / "histology_pairs").rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            link(path, out["histology"] / f"{path.parent.name}{path.name}")
    (work / "sr_sources" / ".done").touch()
    return out


def volumes_3d(root: Path, work: Path) -> dict[str, Path]:
    """Thin originals and their thick versions (NIfTI), made once."""
    from medlens.io import load_image, save_image
    from medlens.tasks.reconstruction.superres import superres_lr

    base = work / "sr_volumes"
    out = {"t1": base / "t1_thin", "hippocampus": base / "hippocampus_thin"}
    for f in (3, 4):
        out[f"t1_{f}x"] = base / f"t1_thick_{f}x"
    out["hippocampus_4x"] = base / "hippocampus_thick_4x"
    if (base / ".done").exists():
        return out
    t1 = load_image(root / "dicom" / "mr_t1_brain")
    save_image(t1, _mk(out["t1"]) / "t1.nii.gz")
    for f in (3, 4):
        save_image(superres_lr(t1, [f, 1, 1]), _mk(out[f"t1_{f}x"]) / "t1.nii.gz")
    cases = sorted((root / "msd_hippocampus" / "imagesTr").glob("*.nii.gz"))
    for i, case in enumerate(cases):
        if i % 8 == 0:
            image = load_image(case)
            save_image(image, _mk(out["hippocampus"]) / case.name)
            save_image(superres_lr(image, [4, 1, 1]), _mk(out["hippocampus_4x"]) / case.name)
    (base / ".done").touch()
    return out


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _train(data: Path, run: Path, settings: list[str], quick: bool) -> float:
    from medlens._json import read_json
    from medlens.tasks.reconstruction.train import train_reconstruction

    if not (run / "run.json").exists() or read_json(run / "run.json")["status"] != "complete":
        log(f"training super-resolution on {data} into {run} ...")
        extra = ["train.epochs=1", "train.batches_per_epoch=2"] if quick else []
        train_reconstruction(data, run, overrides=[*settings, *extra], log=log,
                             resume=(run / "fold-0" / "last.pt").exists())  # fmt: skip
    return round(read_json(run / "run.json")["train_seconds"] / 60, 2)


def _score(run: Path, data: Path, name: str) -> dict:
    import medlens
    from medlens.tasks.reconstruction.superres import evaluate_superres

    trained = medlens.load_predictor(run).trained
    result, rows, _ = evaluate_superres(trained, data, n_boot=1000, progress=False)
    m = result["metrics"]
    log(f"{name}: medlens {m['psnr']['mean']:.2f} dB, cubic {m['cubic_psnr']['mean']:.2f}, "
        f"nearest {m['nearest_psnr']['mean']:.2f} ({len(rows)} images)")  # fmt: skip
    return {"n": len(rows), "rows": rows, "gain": result["psnr_gain_vs_cubic"],
            **{k: m[k]["mean"] for k in ("psnr", "cubic_psnr", "nearest_psnr", "ssim",
                                         "cubic_ssim", "seconds")}}  # fmt: skip


def superres(root: Path, work: Path, args) -> dict:
    """Train and score both settings; the figures of the benchmark's JSON."""
    from medlens.metrics.reconstruction import paired_difference

    limit = 4 if args.quick else 20
    found = sources_2d(root, work, limit)
    epochs = [f"train.epochs={args.sr_epochs}"]
    figures: dict = {"sr_train_minutes": {}}
    figures["sr_train_minutes"]["x4"] = _train(found["train"], work / "sr_run_x4", epochs,
                                               args.quick)  # fmt: skip
    per_set, rows = {}, []
    for name in ("hc18", "bccd", "histology"):
        if found[name].exists():
            scored = _score(work / "sr_run_x4", found[name], f"x4 {name}")
            rows += [{**r, "id": f"{name}/{r['id']}"} for r in scored.pop("rows")]
            per_set[name] = scored
    ours = rows
    cubic = [{**r, "psnr": r["cubic_psnr"]} for r in rows]
    gain = paired_difference(ours, cubic, "psnr", n_boot=1000)
    figures.update(sr_x4_per_set=_plain(per_set), sr_psnr_gain_vs_bicubic_x4=gain["mean"],
                   sr_psnr_gain_vs_bicubic_x4_ci=[gain["low"], gain["high"]],
                   sr_x4_images=len(rows))  # fmt: skip
    volumes = volumes_3d(root, work)
    through = {}
    for f in (3, 4):
        run = work / f"sr_run_t1_{f}x"
        data = volumes[f"t1_{f}x"] if f == 3 else volumes[f"t1_{f}x"].parent / "thick_4x"
        if f == 4:  # the T1 and the held-out hippocampus subjects, all thick
            for folder in (volumes["t1_4x"], volumes["hippocampus_4x"]):
                for path in folder.glob("*.nii.gz"):
                    link(path, data / f"{folder.name}-{path.name}")
        # the target is the 1.2 mm slice, not the 1.05 mm pixel the plan would aim at
        settings = [f"train.epochs={max(1, args.sr_epochs // 2)}", f"factors=[{f},1,1]"]
        figures["sr_train_minutes"][f"through_{f}x"] = _train(data, run, settings, args.quick)
        through[f"t1_{f * 1.2:.1f}mm"] = _score(run, volumes["t1"], f"through-plane T1 {f}x")
        if f == 4:
            through["hippocampus_4mm"] = _score(run, volumes["hippocampus"],
                                                "through-plane hippocampus 4x")  # fmt: skip
    for value in through.values():
        value.pop("rows")
    t1 = [through["t1_3.6mm"]["gain"]["mean"], through["t1_4.8mm"]["gain"]["mean"]]
    figures.update(sr_through_plane=_plain(through), sr_psnr_gain_through_plane=float(np.mean(t1)),
                   sr_psnr_gain_through_plane_3_6mm=t1[0],
                   sr_psnr_gain_through_plane_4_8mm=t1[1])  # fmt: skip
    return figures


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value
