"""3D segmentation of the Decathlon hippocampus (Task04) with medlens' defaults, cross-validated.

Runs what ``medlens train --task segmentation --data msd_hippocampus --folds K --output RUN``
runs (the plan from the dataset's fingerprint, K subject-grouped folds), then scores every case
with the model of the fold that did not train on it (``medlens evaluate`` on the run's own
data: out of fold), per label (anterior, posterior): Dice and HD95 with 95% bootstrap
intervals. Inference seconds per case are timed end to end as ``medlens predict`` runs it
(reading the NIfTI, resampling, sliding window with mirroring as the default says, resampling
back, writing), on the first ``--infer-cases`` cases.

nnU-Net side by side needs ``nnunetv2`` (the benchmark environment; its resolver takes about 20
minutes to install it): where it is not importable the ``nnunet_*`` figures are ``null`` and
``nnunet_status`` says why. nnU-Net's published Decathlon figures on this task are Dice about
0.90 (anterior) and 0.89 (posterior).

    python benchmarks/hippocampus.py                       # 5 folds, the defaults
    python benchmarks/hippocampus.py --fold 0              # fold 0 of the 5 only (40 cases)
    python benchmarks/hippocampus.py --folds 2 --set train.epochs=2 --set train.batches_per_epoch=5
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import configure_threads, emit_json, environment, log, print_table, require_data

PUBLISHED_NNUNET = {"anterior": 0.90, "posterior": 0.89}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, help="Train and score this fold of --folds only.")
    parser.add_argument("--set", action="append", default=[], help="Plan override key=value.")
    parser.add_argument("--run", type=Path, help="Evaluate this finished run instead.")
    parser.add_argument("--workdir", type=Path, help="Keep the run here (default: tmp).")
    parser.add_argument("--infer-cases", type=int, default=10)
    args = parser.parse_args(argv)

    root = require_data("hippocampus", "msd_hippocampus")
    data = root / "msd_hippocampus"
    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run, train_seconds = args.run, None
        if run is None:
            from medlens.tasks.segmentation.train import train_segmentation

            run = work / "run"
            which = (
                f"fold {args.fold} of {args.folds}"
                if args.fold is not None
                else f"{args.folds} folds"
            )
            log(f"training {which} with the defaults into {run} ...")
            start = time.perf_counter()
            train_segmentation(data, run, folds=args.folds, fold=args.fold, overrides=args.set,
                               progress=False, log=log)  # fmt: skip
            train_seconds = time.perf_counter() - start
        figures = evaluate(run, data, work, args.infer_cases)
    figures["train_minutes"] = None if train_seconds is None else round(train_seconds / 60, 2)
    figures.update(nnunet())
    report(figures)
    figures["threads"] = threads
    figures["environment"] = environment(["medlens", "torch", "numpy"])
    emit_json({"benchmark": "hippocampus", **figures})
    return 0


def evaluate(run: Path, data: Path, work: Path, infer_cases: int) -> dict:
    from medlens.tasks.registry import load_predictor
    from medlens.tasks.segmentation.evaluate import evaluate_segmentation

    result = evaluate_segmentation(run, data, split="val", output=work / "evaluation",
                                   n_boot=1000, progress=False)  # fmt: skip
    per_class = result["aggregate"]["per_class"]
    dice = {name: per_class[name]["dice"] for name in per_class}
    hd95 = {name: per_class[name]["hd95"] for name in per_class}
    predictor = load_predictor(run)
    images = sorted((data / "imagesTr").glob("*.nii.gz"))[:infer_cases]
    (work / "one").mkdir(exist_ok=True)
    seconds = []
    for image in images:  # end to end, one case at a time, as medlens predict does
        source = work / "one" / image.name
        source.unlink(missing_ok=True)
        source.symlink_to(image)
        start = time.perf_counter()
        predictor.predict_path(work / "one", work / "masks")
        seconds.append(time.perf_counter() - start)
        source.unlink()
    return {
        "n_cases": result["n_cases"],
        "folds": result.get("folds") and len(set(result["folds"])),
        "dice_per_label_cv": dice,
        "dice_mean_cv": sum(d["mean"] for d in dice.values()) / len(dice),
        "hd95_mm_cv": hd95,
        "infer_seconds_per_case": round(sum(seconds) / max(len(seconds), 1), 3),
        "figures_from": result["cases_description"],
    }


def nnunet() -> dict:
    """nnU-Net trained on the same split and budget, where ``nnunetv2`` is installed."""
    if importlib.util.find_spec("nnunetv2") is None:
        return {
            "nnunet_dice_mean": None,
            "inference_speedup_vs_nnunet": None,
            "nnunet_status": "not run: nnunetv2 is not importable here (install it into the "
            "benchmark environment, benchmarks/README.md)",
        }
    return {
        "nnunet_dice_mean": None,
        "inference_speedup_vs_nnunet": None,
        "nnunet_status": "not run: the side-by-side nnU-Net training is not built yet",
    }


def report(f: dict) -> None:
    def ci(m: dict) -> str:
        return f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"

    published = PUBLISHED_NNUNET
    rows = [[name, ci(f["dice_per_label_cv"][name]), ci(f["hd95_mm_cv"][name]),
             published.get(name.lower(), "")] for name in f["dice_per_label_cv"]]  # fmt: skip
    print_table(
        f"Decathlon hippocampus, out of fold over {f['n_cases']} cases (95% bootstrap CI)",
        ["label", "Dice", "HD95 (mm)", "nnU-Net published Dice"],
        rows,
    )
    train = "-" if f["train_minutes"] is None else f"{f['train_minutes']:.1f} min"
    speed = f"{f['infer_seconds_per_case']:.2f} s per case"
    print(f"mean Dice {f['dice_mean_cv']:.4f}; training {train}; inference {speed}; "
          f"nnU-Net: {f['nnunet_status']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
