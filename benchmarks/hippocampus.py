"""3D segmentation of the Decathlon hippocampus (Task04) with medlens' defaults, cross-validated.

Runs what ``medlens train --task segmentation --data msd_hippocampus --folds K --output RUN``
runs (the plan from the dataset's fingerprint, K subject-grouped folds), then scores every case
with the model of the fold that did not train on it (``medlens evaluate`` on the run's own
data: out of fold), per label (anterior, posterior): Dice and HD95 with 95% bootstrap
intervals. Inference seconds per case are timed end to end as ``medlens predict`` runs it
(reading the NIfTI, resampling, sliding window with mirroring as the default says, resampling
back, writing), on the first ``--infer-cases`` cases.

nnU-Net side by side (``benchmarks/_nnunet.py``) needs ``nnunetv2`` in the benchmark environment:
its own planning and preprocessing of the same cases, medlens's split as ``splits_final.json``,
its stock trainer on the CPU for the number of epochs that fits medlens's training time, its own
validation of the held-out cases (scored here by the same metric code as medlens's), and
``nnUNetPredictor`` timed end to end per case with its default mirroring, against ``medlens
predict`` with mirroring on. Where it is not importable the ``nnunet_*`` figures are ``null`` and
``nnunet_status`` says why. nnU-Net's published Decathlon figures on this task (1000 epochs on a
GPU) are Dice about 0.90 (anterior) and 0.89 (posterior).

    python benchmarks/hippocampus.py                       # 5 folds, the defaults
    python benchmarks/hippocampus.py --fold 0              # fold 0 of the 5 only (40 cases)
    python benchmarks/hippocampus.py --workdir W           # keep (and reuse) W/fold_k runs;
                                                           # a fold killed mid-run resumes
    python benchmarks/hippocampus.py --folds 2 --set train.epochs=2 --set train.batches_per_epoch=5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _nnunet
from _common import configure_threads, emit_json, environment, log, print_table, require_data
from medlens._json import read_json

PUBLISHED_NNUNET = {"anterior": 0.90, "posterior": 0.89}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, help="Train and score this fold of --folds only.")
    parser.add_argument("--set", action="append", default=[], help="Plan override key=value.")
    parser.add_argument("--run", type=Path, help="Evaluate this finished run instead.")
    parser.add_argument("--workdir", type=Path, help="Keep (and reuse) W/fold_k runs here.")
    parser.add_argument("--infer-cases", type=int, default=10)
    parser.add_argument("--no-nnunet", action="store_true", help="Skip nnU-Net side by side.")
    args = parser.parse_args(argv)

    root = require_data("hippocampus", "msd_hippocampus")
    data = root / "msd_hippocampus"
    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = [args.run] if args.run else train_folds(data, work, args)
        figures = evaluate(runs, data, work, args.infer_cases)
        seconds = [read_json(run / "run.json").get("train_seconds") for run in runs]
        per_fold = [None if s is None else round(s / 60, 2) for s in seconds]
        figures["train_minutes_per_fold"] = per_fold
        # one model's training (the default trains one split); a multi-fold --run: its total
        figures["train_minutes"] = per_fold[0]
        side = {"nnunet_dice_mean": None, "inference_speedup_vs_nnunet": None,
                "nnunet_status": "not run: --no-nnunet"}  # fmt: skip
        if not args.no_nnunet:
            side = nnunet(runs[0], data, work, args.infer_cases, seconds[0], figures)
        figures.update(side)
    report(figures)
    figures["threads"] = threads
    figures["environment"] = environment(["medlens", "torch", "numpy"])
    emit_json({"benchmark": "hippocampus", **figures})
    return 0


def train_folds(data: Path, work: Path, args) -> list[Path]:
    """The fold runs ``work/fold_k`` (each ``medlens train --folds K --fold k``), reused where
    finished; without --fold, every fold, so every case is scored out of fold."""
    from medlens.tasks.segmentation.train import train_segmentation

    runs = []
    for fold in [args.fold] if args.fold is not None else range(args.folds):
        run = work / f"fold_{fold}"
        if (run / "run.json").is_file() and read_json(run / "run.json").get("train_seconds"):
            log(f"reusing the finished run {run}")
        elif (run / "run.json").is_file():  # killed: continue from its last checkpoint
            log(f"resuming fold {fold} of {args.folds} in {run} from its last epoch ...")
            train_segmentation(data, run, folds=args.folds, fold=fold, overrides=args.set,
                               progress=False, log=log, resume=True)  # fmt: skip
        else:
            log(f"training fold {fold} of {args.folds} with the defaults into {run} ...")
            train_segmentation(data, run, folds=args.folds, fold=fold, overrides=args.set,
                               progress=False, log=log)  # fmt: skip
        runs.append(run)
    return runs


def evaluate(runs: list[Path], data: Path, work: Path, infer_cases: int) -> dict:
    """Each run scored on its own held-out cases (``medlens evaluate``), the cases pooled over
    the runs with bootstrap intervals; inference timed end to end on the last run (the
    newest, so today's defaults)."""
    from medlens.metrics import aggregate_segmentation
    from medlens.tasks.registry import load_predictor
    from medlens.tasks.segmentation.evaluate import evaluate_segmentation

    figures: dict = {}
    for mirror in (None, True):  # the defaults, then mirroring on (as nnU-Net predicts)
        cases, per_run = [], []
        for run in runs:
            out = work / "evaluation" / f"{run.name}-{mirror}"
            result = evaluate_segmentation(run, data, split="val", output=out, n_boot=0,
                                           progress=False, mirror=mirror)  # fmt: skip
            cases += result["cases"]
            per_run.append(round(result["aggregate"]["mean"]["dice"]["mean"], 4))
        pooled = aggregate_segmentation(cases, n_boot=1000)
        dice, hd95 = _per_label(pooled["aggregate"]["per_class"])
        suffix = "" if mirror is None else "_mirror"
        figures[f"dice_per_label_cv{suffix}"] = dice
        figures[f"dice_mean_cv{suffix}"] = sum(d["mean"] for d in dice.values()) / len(dice)
        figures[f"hd95_mm_cv{suffix}"] = hd95
        figures[f"dice_mean_per_fold{suffix}"] = per_run
    images = sorted((data / "imagesTr").glob("*.nii.gz"))[:infer_cases]
    for mirror in (None, True):
        predictor = load_predictor(runs[-1], mirror=mirror)  # the newest: current defaults
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
        suffix = "" if mirror is None else "_mirror"
        figures[f"infer_seconds_per_case{suffix}"] = round(sum(seconds) / max(len(seconds), 1), 3)
    figures["timed_run"] = runs[-1].name
    figures["n_cases"] = len(cases)
    figures["folds_scored"] = len(runs)
    figures["figures_from"] = (
        f"out of fold: {len(cases)} cases of {len(runs)} run(s), each case predicted by a model "
        "that did not train on it (its fold chose only the best epoch and the postprocessing)"
    )
    return figures


def _per_label(per_class: dict) -> tuple[dict, dict]:
    return ({name: per_class[name]["dice"] for name in per_class},
            {name: per_class[name]["hd95"] for name in per_class})  # fmt: skip


def nnunet(run: Path, data: Path, work: Path, infer_cases: int, budget: float | None,
           mine: dict) -> dict:  # fmt: skip
    """nnU-Net trained on the same split and budget (``_nnunet.side_by_side``), scored by the
    same metric code on the same held-out cases, where ``nnunetv2`` is installed."""
    why = _nnunet.status() or (None if budget else "not run: the run recorded no training time")
    if why is not None:
        return {"nnunet_dice_mean": None, "inference_speedup_vs_nnunet": None, "nnunet_status": why}
    from medlens import load_image
    from medlens.data import load_splits
    from medlens.metrics import SegmentationMetric

    splits = load_splits(run / "splits.json")
    splits = [splits] if isinstance(splits, dict) else splits
    names = read_json(data / "dataset.json")["labels"]
    images = sorted((data / "imagesTr").glob("*.nii.gz"))
    labels = [data / "labelsTr" / image.name for image in images]
    log(
        f"nnU-Net: planning, preprocessing and training on the same split for {budget / 60:.1f} min"
    )
    side = _nnunet.side_by_side(images, labels, splits, work=work / "nnunet", budget_seconds=budget,
                                label_names={name: int(v) for v, name in names.items()},
                                infer=images[:infer_cases], log=log)  # fmt: skip
    classes = {int(v): n for v, n in names.items()}
    metric = SegmentationMetric(labels=[v for v in classes if v], tolerance_mm=1.0, n_boot=1000,
                                class_names=classes)  # fmt: skip
    for folder in side.pop("validation_dirs"):
        for file in sorted(Path(folder).glob("*.nii.gz")):
            pred = load_image(file)
            ref = load_image(data / "labelsTr" / file.name)
            metric.update(pred.array.astype(int), ref.array.astype(int), pred, case_id=file.name)
    dice, hd95 = _per_label(metric.compute()["aggregate"]["per_class"])
    side.update(
        nnunet_dice_per_label=dice,
        nnunet_dice_mean=sum(d["mean"] for d in dice.values()) / len(dice),
        nnunet_hd95_mm=hd95,
        same_cases_medlens_dice_mean=mine["dice_mean_per_fold_mirror"][0],
        inference_speedup_vs_nnunet=round(
            side["nnunet_infer_seconds_per_case"] / mine["infer_seconds_per_case_mirror"], 2
        ),
        nnunet_status="run",
    )
    return side


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
