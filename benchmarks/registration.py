"""Registration side by side: medlens register against SimpleITK, elastix and ANTs, same pairs.

Three sets, each method with its own defaults on the same files, in one process (run it in the
benchmark environment, which holds the peers: ``make bench-env``):

- **hippocampus**: inter-subject pairs of Decathlon hippocampus MRIs (Learn2Reg 2020's setting),
  drawn (seeded) from the sorted cases 101-200: medlens's weight was chosen on pairs of the first
  100, so these chose nothing. Dice and HD95 of the warped labels (mean of anterior, posterior);
- **histology**: both H&E / immunohistochemistry section pairs (2D RGB, different sizes): the
  target registration error of their landmarks relative to the fixed image's diagonal (ANHIR's
  rTRE), medlens with ``--similarity mi`` (the stains differ);
- **known** (SIMULATED): real images (the T1 brain series, the TotalSegmentator CT and MR) moved
  by random smooth diffeomorphisms (up to ``--amplitude`` mm), every second one also with its
  intensities remapped non-monotonically (a simulated second modality: medlens ``mind``, else
  ``lncc``; ``mi``'s deformable stage ended worse than no registration on all three such cases,
  1.24-4.1 mm against 1.12-1.26 mm without, MIND at 0.53 mm on the T1 one); the mean endpoint
  error of the recovered displacement (mm) where the fixed image is not background.

The learned methods (hippocampus only): ``medlens train --task registration`` with its defaults
on a Decathlon folder of the first 100 cases (so it chose nothing on the benchmark's pairs), then
the network alone (``medlens_learned``) and with ``REFINE_STEPS`` steps of instance optimisation
from its output (``medlens_learned_io``), as ``medlens register --method learned:RUN`` runs them.

For every method: folding (Jacobian determinant <= 0) and SDlogJ of its whole transform on the
fixed grid, and seconds per pair (the registration alone, reading and writing excluded).

    python benchmarks/registration.py                         # 20 + 2 + 10 pairs, all methods
    python benchmarks/registration.py --pairs 4 --known 2 --methods medlens,sitk_demons
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _registration_peers as peers
from _common import configure_threads, emit_json, environment, log, print_table, require_data

LEARNED = ("medlens_learned", "medlens_learned_io")
METHODS = ("medlens", *LEARNED, *peers.PEERS)
#: instance optimisation after the network for medlens_learned_io: steps, and the plan's
#: defaults (Adam 0.05, diffusion weight 0.25), chosen on 16 validation pairs of the run's own
#: first 100 cases: network 0.808 Dice / SDlogJ 0.135; 30 steps at weight 1: 0.807 / 0.23;
#: at 0.25: 0.816 / 0.32; 20-50 steps at the training weight 4: 0.790-0.795. Again after the
#: weight-8 network (0.796 / 0.089): weight 8 0.777 / 0.088, 2 0.797 / 0.175, 0.25 0.812 / 0.300
REFINE_STEPS = 30
REFINE = {"lr": 0.05, "weight": 0.25}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20, help="Hippocampus pairs.")
    parser.add_argument("--known", type=int, default=10, help="Known deformations.")
    parser.add_argument("--amplitude", type=float, default=4.0, help="mm, known deformations.")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sets", default="hippocampus,histology,known")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--learned-run",
        type=Path,
        help="A medlens registration run to score (default: train one on the first 100 "
        "hippocampus cases into WORKDIR/learned, reused when finished there).",
    )
    parser.add_argument("--epochs", type=int, help="Epochs of the learned run (its plan's).")
    args = parser.parse_args(argv)
    root = require_data("registration", "msd_hippocampus", "histology_pairs")
    threads = configure_threads()
    methods = [m for m in args.methods.split(",") if m]
    problems = peers.available()
    skipped = {m: problems[m] for m in methods if problems.get(m)}
    methods = [m for m in methods if m not in skipped]
    for name, why in skipped.items():
        log(f"{name} skipped: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        makers = {
            "hippocampus": lambda: hippocampus_pairs(root, args.pairs, args.seed),
            "histology": lambda: histology_pairs(root),
            "known": lambda: known_pairs(
                root, work / "known", args.known, args.amplitude, args.seed
            ),
        }
        cases = {name: makers[name]() for name in args.sets.split(",") if name}
        learned = None
        if set(LEARNED) & set(methods) and "hippocampus" in cases:
            learned = args.learned_run or train_learned(root, work / "learned", args.epochs)
            RUNS["run"] = learned
        results = {
            task: {
                m: [score(task, m, case) for case in items]
                for m in methods
                if m not in LEARNED or task == "hippocampus"  # trained on hippocampus only
            }
            for task, items in cases.items()
        }
    figures = summarise(results)
    report(figures, methods)
    emit_json(
        {
            **headline(figures),
            "tables": figures,
            "skipped": skipped,
            "pairs": {task: len(items) for task, items in cases.items()},
            "learned": learned_record(learned),
            "threads": threads,
            "environment": environment(["torch", "SimpleITK", "itk-elastix", "antspyx"]),
        }
    )
    return 0


def hippocampus_pairs(root: Path, count: int, seed: int) -> list[dict]:
    folder = root / "msd_hippocampus"
    cases = sorted(p.name[: -len(".nii.gz")] for p in (folder / "imagesTr").glob("*.nii.gz"))
    held = cases[100:]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        a, b = rng.choice(len(held), 2, replace=False)
        fixed, moving = held[a], held[b]
        out.append(
            {
                "id": f"{fixed}<-{moving}",
                "fixed": folder / "imagesTr" / f"{fixed}.nii.gz",
                "moving": folder / "imagesTr" / f"{moving}.nii.gz",
                "fixed_labels": folder / "labelsTr" / f"{fixed}.nii.gz",
                "moving_labels": folder / "labelsTr" / f"{moving}.nii.gz",
                "similarity": "lncc",
            }
        )
    return out


def histology_pairs(root: Path) -> list[dict]:
    import csv

    folder = root / "histology_pairs"
    out = []
    with (folder / "pairs-imgs-lnds_histol.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            out.append(
                {
                    "id": Path(row["Target image"]).stem,
                    "fixed": folder / row["Target image"],
                    "moving": folder / row["Source image"],
                    "landmarks": (
                        folder / row["Target landmarks"],
                        folder / row["Source landmarks"],
                    ),
                    "similarity": "mi",
                }
            )
    return out


def known_pairs(root: Path, work: Path, count: int, amplitude: float, seed: int) -> list[dict]:
    """SIMULATED: real images moved by known smooth diffeomorphisms (see the module's notes)."""
    import torch

    from medlens.io import load_image, save_image
    from medlens.registration.fields import integrate
    from medlens.registration.register import Registration

    sources = [
        root / "dicom" / "mr_t1_brain",
        root / "totalsegmentator" / "ct_small" / "example_ct_sm.nii.gz",
        root / "totalsegmentator" / "mr_small" / "example_mr_sm.nii.gz",
    ]
    sources = [s for s in sources if s.exists()]
    out = []
    for k in range(count if sources else 0):
        image = load_image(sources[k % len(sources)])
        n = image.spatial_dims
        rng = np.random.default_rng([seed, k])
        coarse = torch.from_numpy(rng.normal(size=(1, n, *[5] * n)).astype(np.float32))
        mode = ("linear", "bilinear", "trilinear")[n - 1]
        velocity = torch.nn.functional.interpolate(
            coarse, size=image.spatial_shape, mode=mode, align_corners=True
        )
        velocity = velocity / velocity.abs().amax() * amplitude  # mm
        spacing = torch.as_tensor(image.spacing, dtype=torch.float32).view(1, n, *[1] * n)
        truth = integrate(velocity / spacing)  # fixed voxels
        moved = Registration(image, image, np.eye(n + 1), integrate(-velocity / spacing)).warp()
        multimodal = k % 2 == 1
        if multimodal:  # SIMULATED second modality: a non-monotone remapping of intensities
            array = np.asarray(moved.array, np.float32)
            low, high = np.percentile(array, [1, 99])
            s = np.clip((array - low) / max(high - low, 1e-6), 0, 1)
            moved = moved.with_array((1 - s + 0.4 * np.sin(3 * np.pi * s)).astype(np.float32))
        folder = work / f"case_{k:02d}"
        fixed_path = save_image(
            image.with_array(np.asarray(image.array, np.float32)), folder / "fixed.nii.gz"
        )
        moving_path = save_image(moved, folder / "moving.nii.gz")
        linear = image.direction * np.asarray(image.spacing)[None, :]
        truth_mm = np.einsum("ij,j...->i...", linear, truth[0].numpy().astype(np.float64))
        array = np.asarray(image.array, np.float32)
        low, high = np.percentile(array, [1, 99])
        out.append(
            {
                "id": f"{sources[k % len(sources)].name}#{k}"
                + (" (multi-modal)" if multimodal else ""),
                "fixed": fixed_path,
                "moving": moving_path,
                "truth_mm": truth_mm,
                "foreground": (array - low) / max(high - low, 1e-6) > 0.1,
                "similarity": "mind" if multimodal else "lncc",
            }
        )
    return out


RUNS: dict = {}


def train_learned(root: Path, work: Path, epochs: int | None) -> Path:
    """``medlens train --task registration`` with its defaults on a Decathlon folder of the first
    100 sorted hippocampus cases (links to the shared files), the cases that chose medlens's
    classical weight; the benchmark's pairs come from the other 100."""
    import json

    from medlens.tasks.registration.train import train_registration
    from medlens.tasks.run_folder import RunFolder

    source = root / "msd_hippocampus"
    run = work / "run"
    if RunFolder(run).exists() and RunFolder(run).status == "complete":
        log(f"learned run: reusing {run}")
        return run
    subset = work / "hippocampus_first100"
    cases = sorted(p.name for p in (source / "imagesTr").glob("*.nii.gz"))[:100]
    for folder in ("imagesTr", "labelsTr"):
        (subset / folder).mkdir(parents=True, exist_ok=True)
        for name in cases:
            link = subset / folder / name
            if not link.exists():
                link.symlink_to(source / folder / name)
    spec = json.loads((source / "dataset.json").read_text())
    spec["training"] = [{"image": f"./imagesTr/{c}", "label": f"./labelsTr/{c}"} for c in cases]
    spec["numTraining"] = len(cases)
    (subset / "dataset.json").write_text(json.dumps(spec, indent=1))
    resume = RunFolder(run).exists()
    log(f"learned run: training on {len(cases)} cases into {run} ...")
    train_registration(subset, run, epochs=epochs, resume=resume, log=log)
    return run


def learned_record(run: Path | None) -> dict | None:
    if run is None:
        return None
    from medlens.tasks.run_folder import RunFolder

    info = RunFolder(run).info
    return {
        "run": str(run),
        "train_minutes": round(info.get("train_seconds", 0) / 60, 1),
        "validation": info.get("evaluation"),
        "refine_steps": REFINE_STEPS,
    }


def run_learned(case: dict, refine: int) -> dict:
    from medlens.io import load_image
    from medlens.tasks.registration.predict import load_registration_run, register_learned

    if "trained" not in RUNS:
        RUNS["trained"] = load_registration_run(RUNS["run"])
        RUNS["trained"].plan.refine.update(REFINE)
    fixed, moving = load_image(case["fixed"]), load_image(case["moving"])
    result = register_learned(RUNS["trained"], fixed, moving, refine=refine)
    labels = np.asarray(
        result.warp(load_image(case["moving_labels"], role="label"), labels=True).array
    )
    return {"seconds": result.seconds, "field": result.displacement_mm(), "labels": labels}


def run_medlens(case: dict) -> dict:
    from medlens.io import load_image
    from medlens.registration.register import register

    fixed, moving = load_image(case["fixed"]), load_image(case["moving"])
    result = register(fixed, moving, similarity=case["similarity"])
    labels = None
    if case.get("moving_labels"):
        labels = np.asarray(
            result.warp(load_image(case["moving_labels"], role="label"), labels=True).array
        )
    return {"seconds": result.seconds, "field": result.displacement_mm(), "labels": labels}


def score(task: str, method: str, case: dict) -> dict:
    from medlens.io import load_image
    from medlens.metrics.registration import folding_fraction, sdlogj
    from medlens.metrics.segmentation import dice, hausdorff95

    log(f"{task} {case['id']}: {method} ...")
    try:
        if method == "medlens":
            found = run_medlens(case)
        elif method in LEARNED:
            found = run_learned(case, REFINE_STEPS if method.endswith("_io") else 0)
        else:
            found = peers.PEERS[method](case["fixed"], case["moving"], case.get("moving_labels"))
    except Exception as error:  # a peer that fails on a pair is reported, not fatal
        log(f"  failed: {error}")
        return {"failed": str(error)[:200]}
    fixed = load_image(case["fixed"])
    n = fixed.spatial_dims
    field = np.asarray(found["field"], np.float64).reshape(n, *fixed.spatial_shape)
    linear = fixed.direction * np.asarray(fixed.spacing)[None, :]
    index_field = np.einsum("ij,j...->i...", np.linalg.inv(linear), field)
    out = {
        "seconds": found["seconds"],
        "folding": folding_fraction(index_field),
        "sdlogj": sdlogj(index_field),
    }
    if found.get("labels") is not None and case.get("fixed_labels"):
        reference = np.asarray(load_image(case["fixed_labels"], role="label").array)
        warped = np.asarray(found["labels"]).reshape(reference.shape)
        spacing = tuple(fixed.spacing)[::-1]
        out["dice"] = float(np.mean([dice(warped, reference, label=k) for k in (1, 2)]))
        distances = [hausdorff95(warped, reference, spacing, label=k) for k in (1, 2)]
        finite = [d for d in distances if np.isfinite(d)]
        if finite:
            out["hd95"] = float(np.mean(finite))
    if case.get("landmarks"):
        out.update(landmark_error(case, fixed, field))
    if case.get("truth_mm") is not None:
        error = np.linalg.norm(field - case["truth_mm"], axis=0)[case["foreground"]]
        out["epe"] = float(error.mean())
    log(f"  {', '.join(f'{k} {v:.4g}' for k, v in out.items())}")
    return out


def landmark_error(case: dict, fixed, field: np.ndarray) -> dict:
    """rTRE of the fixed landmarks moved by the field against the moving ones."""
    import torch

    from medlens.io import load_image
    from medlens.metrics.registration import target_registration_error
    from medlens.registration.outputs import matched_landmarks
    from medlens.transforms._warp import sample_at

    fixed_points, moving_points = matched_landmarks(*case["landmarks"])
    moving = load_image(case["moving"])
    shift = (
        sample_at(
            torch.from_numpy(field.astype(np.float32))[None],
            torch.from_numpy(fixed_points.astype(np.float32))[None],
        )[0]
        .double()
        .numpy()
    )
    mapped = fixed.index_to_world(fixed_points) + shift
    diagonal = float(np.linalg.norm(np.asarray(fixed.size) * fixed.spacing))
    tre = target_registration_error(mapped, moving.index_to_world(moving_points), diagonal=diagonal)
    return {"rtre": tre["rtre_median"]}


def summarise(results: dict) -> dict:
    out: dict = {}
    for task, by_method in results.items():
        out[task] = {}
        for method, rows in by_method.items():
            ok = [r for r in rows if "failed" not in r]
            entry = {"pairs": len(rows), "failed": len(rows) - len(ok)}
            for key in ("dice", "hd95", "rtre", "epe", "folding", "sdlogj", "seconds"):
                values = [r[key] for r in ok if key in r]
                if values:
                    entry[key] = (
                        statistics.median(values) if key == "rtre" else statistics.fmean(values)
                    )
            out[task][method] = entry
    return out


def headline(figures: dict) -> dict:
    """The issue's keys: medlens's figures are the learned run's with instance optimisation where
    it ran (else the classical ``medlens register``'s), against the best classical peer."""
    hippo = figures.get("hippocampus", {})
    ours = next((hippo[m] for m in (*LEARNED[::-1], "medlens") if m in hippo), {})
    which = next((m for m in (*LEARNED[::-1], "medlens") if m in hippo), None)
    classical = {m: f for m, f in hippo.items() if m in peers.PEERS and "dice" in f}
    best = max(classical, key=lambda m: classical[m]["dice"]) if classical else None
    speed = classical[best]["seconds"] / ours["seconds"] if best and ours.get("seconds") else None
    histology = figures.get("histology", {})
    return {
        "medlens_method": which,
        "dice_medlens": ours.get("dice"),
        "dice_medlens_classical": hippo.get("medlens", {}).get("dice"),
        "dice_medlens_learned": hippo.get("medlens_learned", {}).get("dice"),
        "dice_best_classical": classical[best]["dice"] if best else None,
        "best_classical": best,
        "speedup_vs_best_classical": speed,
        "folding_fraction": ours.get("folding"),
        "sdlogj": ours.get("sdlogj"),
        "seconds_per_pair_medlens": ours.get("seconds"),
        "rtre_median_medlens": histology.get("medlens", {}).get("rtre"),
        "rtre_median_elastix": histology.get("elastix", {}).get("rtre"),
        "epe_medlens": figures.get("known", {}).get("medlens", {}).get("epe"),
    }


def report(figures: dict, methods: list[str]) -> None:
    def f(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    for task, by_method in figures.items():
        rows = [
            [
                m,
                by_method[m]["pairs"] - by_method[m]["failed"],
                f(by_method[m].get("dice")),
                f(by_method[m].get("hd95"), 2),
                f(by_method[m].get("rtre"), 4),
                f(by_method[m].get("epe"), 2),
                f(100 * by_method[m]["folding"], 3) if "folding" in by_method[m] else "-",
                f(by_method[m].get("sdlogj")),
                f(by_method[m].get("seconds"), 1),
            ]
            for m in methods
            if m in by_method
        ]
        print_table(
            f"registration: {task}",
            [
                "method",
                "pairs",
                "Dice",
                "HD95 mm",
                "rTRE",
                "EPE mm",
                "folding %",
                "SDlogJ",
                "s/pair",
            ],
            rows,
        )


if __name__ == "__main__":
    raise SystemExit(main())
