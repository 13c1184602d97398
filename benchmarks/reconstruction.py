"""Undersampled MRI on SIMULATED k-space from real images: medlens against zero-filled, SENSE,
compressed sensing (L1-wavelet, total variation) and deepinv's VarNet, side by side in one run.

Data (``medlens simulate kspace``: real magnitude images, synthetic smooth phase, birdcage coils,
complex noise of 1% of the maximum, fastMRI random masks; every figure is on SIMULATED k-space):

- training (at most 96 slices per series): Sunnybrook cine MRI of patients SC-HF-I-1 and
  SC-HF-I-4 (folders SCD0000101, SCD0000301) and the Decathlon hippocampus MRIs whose sorted
  index is not a multiple of 4;
- held out, each reported on its own and pooled: the third Sunnybrook patient (SCD0000401),
  every 8th hippocampus subject (none of them trained), the T1 brain series and the
  TotalSegmentator MR (anatomy no training image shows); each at 4x and 8x (the same k-space, two
  masks).

medlens trains with the defaults of ``medlens train --task reconstruction`` but for the
accelerations (``accelerations=[4,8]``: one network for both) and the schedule (``--epochs``,
sized to the budget). The compressed-sensing weights are chosen per acceleration on slices of
the run's validation files (which chose only the epoch), never on the test sets. The peer
(``--peer-python .venv-peer/bin/python``, deepinv in its own environment: it needs
torchvision) trains deepinv's VarNet on the same files for medlens's training time
(``benchmarks/_deepinv_peer.py``) and reconstructs the same measurements.

Figures per volume as fastMRI computes them (PSNR and SSIM against the reference's maximum,
NMSE), 95% bootstrap intervals over volumes; gains are paired per volume. Seconds per slice are
medlens's on the 256x256 slices (Sunnybrook, T1 brain), this CPU, nothing else running.

Usage::

    python benchmarks/reconstruction.py --workdir /tmp/recon [--coils 8] [--peer-python P]
    python benchmarks/reconstruction.py --quick      # a few minutes: tiny schedules, no claims
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    configure_threads,
    emit_json,
    environment,
    link,
    log,
    print_table,
    require_data,
)

ACCELERATIONS = (4, 8)
TEST_SETS = ("sunnybrook", "hippocampus", "brain_t1", "ts_mr")
METHODS = ("zero_filled", "sense", "cs_wavelet", "cs_tv", "deepinv_varnet", "medlens")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="Keep (and reuse) data and runs here.")
    parser.add_argument("--coils", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batches", type=int, default=40, help="Batches per epoch.")
    parser.add_argument("--peer-python", type=Path, help="Python of the deepinv venv.")
    parser.add_argument("--skip-cs", action="store_true", help="No compressed sensing (slow).")
    parser.add_argument("--skip-mri", action="store_true")
    parser.add_argument("--skip-sr", action="store_true")
    parser.add_argument("--sr-epochs", type=int, default=24, help="2D super-resolution epochs.")
    parser.add_argument("--quick", action="store_true", help="Tiny schedules: a smoke run.")
    args = parser.parse_args(argv)
    root = require_data("reconstruction", "sunnybrook", "msd_hippocampus", "dicom/mr_t1_brain")
    threads = configure_threads()
    figures: dict = {"benchmark": "reconstruction"}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.workdir or Path(tmp)
        if not args.skip_mri:
            work = base / f"coils{args.coils}"
            work.mkdir(parents=True, exist_ok=True)
            train_set, tests = make_data(root, work, args)
            run = work / "run"
            minutes = train(train_set, run, args)
            peer = run_peer(train_set, tests, work, minutes, args) if args.peer_python else None
            figures.update(score(run, tests, peer, args), coils=args.coils,
                           mri_train_minutes=minutes)  # fmt: skip
        if not args.skip_sr:
            from _superres_bench import superres

            figures.update(superres(root, base / "superres", args))
    figures.update(
        data="MRI: SIMULATED k-space from real magnitude images (synthetic phase, birdcage "
        "coils, 1% noise, fastMRI random masks); test sets hold out subjects and whole "
        "anatomies. Super-resolution: real images degraded by block averages (simulated "
        "low resolution), held-out images and subjects",
        threads=threads,
        environment=environment(["medlens", "torch", "numpy", "scikit-image", "sigpy"]),
    )
    report(figures)
    emit_json(figures)
    return 0


# ------------------------------------------------------------------------------------------ data
def sources(root: Path, work: Path) -> dict[str, Path]:
    """Folders of links to the real images: ``train`` and one per test set (made once)."""
    out = {name: work / "sources" / name for name in ("train", *TEST_SETS)}
    if (work / "sources" / ".done").exists():
        return out
    sunny = root / "sunnybrook" / "dicoms"
    for patient in ("SCD0000101", "SCD0000301"):
        link(sunny / patient, out["train"] / patient)
    link(sunny / "SCD0000401", out["sunnybrook"] / "SCD0000401")
    cases = sorted((root / "msd_hippocampus" / "imagesTr").glob("*.nii.gz"))
    for i, case in enumerate(cases):
        if i % 4:
            link(case, out["train"] / "hippocampus" / case.name)
        elif i % 8 == 0:
            link(case, out["hippocampus"] / case.name)
    link(root / "dicom" / "mr_t1_brain", out["brain_t1"] / "mr_t1_brain")
    mr = root / "totalsegmentator" / "mr_small" / "example_mr_sm.nii.gz"
    if mr.exists():
        link(mr, out["ts_mr"] / mr.name)
    (work / "sources" / ".done").touch()
    return out


def make_data(root: Path, work: Path, args) -> tuple[Path, dict[tuple[str, int], Path]]:
    from medlens.reconstruction.simulate import simulate_kspace_dataset

    found = sources(root, work)
    quick = 4 if args.quick else None
    train_set = work / "kspace_train"
    if not (train_set / "dataset.json").exists():
        log("simulating the training k-space ...")
        simulate_kspace_dataset(found["train"], train_set, coils=args.coils, acceleration=4,
                                seed=0, max_slices=quick or 96, progress=False)  # fmt: skip
    tests = {}
    for name in TEST_SETS:
        if not found[name].exists():
            continue
        for accel in ACCELERATIONS:
            folder = work / f"kspace_test_{name}_{accel}x"
            if not (folder / "dataset.json").exists():
                log(f"simulating the held-out {name} k-space at {accel}x ...")
                simulate_kspace_dataset(found[name], folder, coils=args.coils,
                                        acceleration=accel, seed=1, max_slices=quick or 16,
                                        progress=False)  # fmt: skip
            tests[(name, accel)] = folder
    return train_set, tests


# ----------------------------------------------------------------------------------- training
def train(data: Path, run: Path, args) -> float:
    from medlens._json import read_json
    from medlens.tasks.reconstruction.train import train_reconstruction

    if not (run / "run.json").exists() or read_json(run / "run.json")["status"] != "complete":
        epochs, batches = (1, 2) if args.quick else (args.epochs, args.batches)
        log(f"training medlens ({epochs} epochs of {batches} batches) into {run} ...")
        settings = ["accelerations=[4,8]", f"train.batches_per_epoch={batches}"]
        train_reconstruction(data, run, epochs=epochs, overrides=settings, log=log,
                             resume=(run / "fold-0" / "last.pt").exists())  # fmt: skip
    return round(read_json(run / "run.json")["train_seconds"] / 60, 2)


def run_peer(train_set: Path, tests: dict, work: Path, minutes: float, args) -> Path:
    out = work / "peer"
    if (out / "peer.json").exists():
        return out
    seconds = 30 if args.quick else int(minutes * 60)
    command = [str(args.peer_python), str(Path(__file__).with_name("_deepinv_peer.py")),
               "--train", str(train_set), "--out", str(out), "--seconds", str(seconds),
               "--accelerations", *map(str, ACCELERATIONS)]  # fmt: skip
    for folder in tests.values():
        command += ["--test", str(folder)]
    log(f"training deepinv's VarNet for {seconds} s in {args.peer_python} ...")
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return out


# ------------------------------------------------------------------------------------ scoring
def tuned(trained) -> None:
    """The run's compressed-sensing weights, chosen on its validation files at each acceleration
    (``baselines.json``, :mod:`medlens.tasks.reconstruction.tuning`); runs made before training
    wrote it get it here, the same way."""
    from medlens.tasks.reconstruction.data import open_kspace
    from medlens.tasks.reconstruction.tuning import FILE, tune_baselines

    if not (trained.path / FILE).exists():
        source = open_kspace(trained.info["data"]["source"])
        split = json.loads((trained.path / "splits.json").read_text())["folds"][0]
        tune_baselines(source, split["val_indices"], trained.plan, trained.path, log)


def score(run: Path, tests: dict, peer: Path | None, args) -> dict:
    import medlens
    from medlens.metrics import mean_summary
    from medlens.metrics.reconstruction import nmse, paired_difference, psnr, ssim
    from medlens.reconstruction.baselines import reconstruct_volume
    from medlens.tasks.reconstruction.data import open_kspace, reference, slice_maps
    from medlens.tasks.reconstruction.predict import reconstruct, scored_pair
    from medlens.tasks.reconstruction.tuning import baseline_params

    trained = medlens.load_predictor(run).trained
    methods = ["zero_filled", "medlens"]
    if args.coils > 1:
        methods.insert(1, "sense")
    if not args.skip_cs:
        methods[1:1] = ["cs_wavelet", "cs_tv"]
    if peer is not None:
        methods.insert(-1, "deepinv_varnet")
    tuned(trained)
    rows: dict[tuple[str, int], list[dict]] = {}
    timing = {m: [] for m in methods}
    fast = []
    for (name, accel), folder in tests.items():
        source = open_kspace(folder)
        for i in range(len(source.files)):
            data = source.load(i)
            maps = [slice_maps(data, s, trained.plan) for s in range(data.slices)]
            target = np.stack([reference(data, s, maps[s]) for s in range(data.slices)])
            images = {}
            for method in methods:
                started = time.perf_counter()
                if method == "medlens":
                    images[method], seconds = reconstruct(trained, data)
                    if data.shape == (256, 256):
                        fast.append(seconds / data.slices)
                elif method == "deepinv_varnet":
                    got = np.load(peer / folder.name / f"{data.path.stem}.npz")
                    images[method], seconds = got["image"], float(got["seconds"])
                else:
                    params = baseline_params(trained.path, method, data.mask)
                    images[method] = reconstruct_volume(method, data.kspace, data.mask,
                                                        np.stack(maps), **params)  # fmt: skip
                    seconds = time.perf_counter() - started
                timing[method].append(seconds / data.slices)
            for method, image in images.items():
                out, ref = scored_pair(data, image, target)
                peak = float(ref.max())
                rows.setdefault((method, accel), []).append(
                    {"id": f"{name}/{data.path.stem}", "set": name,
                     "psnr": psnr(ref, out, peak), "ssim": ssim(ref, out, peak),
                     "nmse": nmse(ref, out)})  # fmt: skip
        log(f"scored {name} at {accel}x")
    figures: dict = {"methods": methods, "per_method": {}, "per_set": {}}
    for (method, accel), found in rows.items():
        key = f"{method}_{accel}x"
        figures["per_method"][key] = {k: mean_summary([r[k] for r in found], 1000)
                                      for k in ("psnr", "ssim", "nmse")}  # fmt: skip
        for name in TEST_SETS:
            these = [r["psnr"] for r in found if r["set"] == name]
            if these:
                figures["per_set"].setdefault(name, {})[key] = round(float(np.mean(these)), 3)
        figures["per_method"][key]["seconds_per_slice"] = round(float(np.mean(timing[method])), 4)
    for accel in ACCELERATIONS:
        ours = rows[("medlens", accel)]
        for other, label in (("zero_filled", "zero_filled"), ("cs_wavelet", "cs"),
                             ("cs_tv", "cs_tv"), ("sense", "sense"),
                             ("deepinv_varnet", "deepinv")):  # fmt: skip
            if (other, accel) in rows:
                gain = paired_difference(ours, rows[(other, accel)], "psnr", n_boot=1000)
                figures[f"psnr_gain_vs_{label}_{accel}x"] = round(float(gain["mean"]), 3)
                figures[f"psnr_gain_vs_{label}_{accel}x_ci"] = [gain.get("low"), gain.get("high")]
    figures["seconds_per_slice_256"] = round(float(np.mean(fast)), 4) if fast else None
    figures["test_volumes"] = {f"{a}x": len(rows[("medlens", a)]) for a in ACCELERATIONS}
    return figures


def report(figures: dict) -> None:
    if "per_method" in figures:
        report_mri(figures)
    if "sr_x4_per_set" in figures:
        rows = [[f"x4 {name}", s["n"], f"{s['psnr']:.2f}", f"{s['cubic_psnr']:.2f}",
                 f"{s['nearest_psnr']:.2f}", f"{s['gain']['mean']:+.2f}"]
                for name, s in figures["sr_x4_per_set"].items()]  # fmt: skip
        rows += [[f"through-plane {name}", s["n"], f"{s['psnr']:.2f}", f"{s['cubic_psnr']:.2f}",
                  f"{s['nearest_psnr']:.2f}", f"{s['gain']['mean']:+.2f}"]
                 for name, s in figures["sr_through_plane"].items()]  # fmt: skip
        print_table(
            "Super-resolution, held-out images (PSNR dB against the originals)",
            ["set", "images", "medlens", "cubic", "nearest", "gain vs cubic"],
            rows,
        )


def report_mri(figures: dict) -> None:
    rows = []
    for key, summary in figures["per_method"].items():
        p, s = summary["psnr"], summary["ssim"]
        rows.append([key, f"{p['mean']:.2f} [{p['low']:.2f}, {p['high']:.2f}]",
                     f"{s['mean']:.4f}", f"{summary['nmse']['mean']:.4f}",
                     summary["seconds_per_slice"]])  # fmt: skip
    print_table("MRI reconstruction, held-out SIMULATED k-space (per volume, pooled sets)",
                ["method", "PSNR dB [95% CI]", "SSIM", "NMSE", "s/slice"], rows)  # fmt: skip
    sets = figures["per_set"]
    keys = sorted({k for v in sets.values() for k in v})
    print_table("PSNR per held-out set (dB)", ["set", *keys],
                [[name, *(sets[name].get(k, "") for k in keys)] for name in sets])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
