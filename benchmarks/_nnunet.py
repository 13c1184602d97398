"""nnU-Net (``nnunetv2``) side by side with medlens: the same cases, split and CPU budget.

Used by ``benchmarks/hippocampus.py`` (3D NIfTI, ``3d_fullres``) and ``benchmarks/hc18.py`` (2D
PNG, ``2d``). Where ``nnunetv2`` is importable (the benchmark environment, ``make bench-env`` plus
``pip install nnunetv2``), :func:`side_by_side`:

1. writes an nnU-Net raw dataset of links to the user's images and labels (nothing is copied,
   nothing is written into the input folder) and runs nnU-Net's own fingerprint, planner and
   preprocessing of the given configuration (``3d_fullres``, its default for 3D; ``2d`` for 2D
   images, which nnU-Net reads as a user's PNGs: ``NaturalImage2DIO``, pixel spacing 1);
2. writes medlens's split as ``splits_final.json``, so nnU-Net validates on the same cases;
3. trains nnU-Net's stock ``nnUNetTrainer`` on the CPU with the number of epochs that fits the
   wall-clock budget medlens used, rounded to the nearest epoch (what its fixed-epoch variants
   ``nnUNetTrainer_Xepochs`` do: they only set ``num_epochs``; the epoch time comes from a short
   probe run of the same trainer; nnU-Net trains in float32 on a CPU, its autocast is CUDA-only),
   then nnU-Net's own validation (sliding window, mirroring) of the held-out fold. Where even
   half an epoch of 250 iterations does not fit the budget, it trains one epoch of the
   iterations that fit (``nnunet_iterations_per_epoch`` says so);
4. times ``nnUNetPredictor`` end to end per case (reading, preprocessing, network with
   mirroring, resampling back, writing the mask), one case at a time as medlens is timed.

Each nnU-Net step runs in a child process of this one (nnU-Net reads its folders from
environment variables when imported). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TRAIN_ITERATIONS = 250  # nnU-Net's iterations per epoch (and a fifth of it to validate)
PROBE_ITERATIONS, PROBE_VAL_ITERATIONS = 10, 2


def status() -> str | None:
    """``None`` where nnU-Net can run here, else why not."""
    if importlib.util.find_spec("nnunetv2") is None:
        return (
            "not run: nnunetv2 is not importable here (install it into the benchmark "
            "environment, benchmarks/README.md)"
        )
    return None


def side_by_side(
    images: list[Path],
    labels: list[Path],
    splits: list[dict],
    *,
    work: Path,
    budget_seconds: float,
    label_names: dict[str, int],
    infer: list[Path],
    dataset_id: int = 504,
    name: str = "MedlensBench",
    iterations: int = TRAIN_ITERATIONS,
    configuration: str = "3d_fullres",
    file_ending: str = ".nii.gz",
    channel: str = "MRI",
    log=print,
) -> dict:
    """Train and time nnU-Net as the module says; returns its figures and where its
    validation predictions are (``validation_dirs``: masks named by case id, ``file_ending``).
    ``images`` and ``labels`` end in ``file_ending``; a case's id is its image's name without it."""
    env = _env(work)
    kind = {"configuration": configuration, "file_ending": file_ending}
    dataset = f"Dataset{dataset_id:03d}_{name}"
    raw = Path(env["nnUNet_raw"]) / dataset
    done = work / "side-by-side.json"  # a finished side-by-side is reused (scoring reruns)
    if done.is_file():
        log(f"nnU-Net: reusing the training recorded in {done}")
        figures = json.loads(done.read_text())
    else:
        _raw_dataset(raw, images, labels, label_names, channel=channel, file_ending=file_ending)
        figures = _prepare_and_train(env, raw, dataset_id, splits, budget_seconds, iterations,
                                     work, kind, log)  # fmt: skip
        done.write_text(json.dumps(figures, indent=1))
    results = Path(env["nnUNet_results"]) / dataset / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    timing = json.loads(_child(env, "infer", dataset_id, folds=len(splits),
                               files=[str(p) for p in infer], out=str(work / "nnunet-infer"),
                               log=log, **kind))  # fmt: skip
    return {
        **figures,
        "nnunet_version": _version(),
        "nnunet_configuration": configuration,
        "nnunet_infer_seconds_per_case": timing["seconds_per_case"],
        "validation_dirs": [str(results / f"fold_{k}" / "validation") for k in range(len(splits))],
    }


def _prepare_and_train(env, raw, dataset_id, splits, budget_seconds, iterations, work, kind,
                       log) -> dict:  # fmt: skip
    start = time.perf_counter()
    _child(env, "prepare", dataset_id, log=log, **kind)
    preprocess_seconds = time.perf_counter() - start
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    (pre / "splits_final.json").write_text(
        json.dumps([{"train": s["train"], "val": s["val"]} for s in splits], indent=1)
    )
    per_fold = budget_seconds / len(splits)
    probe = json.loads(_child(_env(work / "probe"), "probe", dataset_id, raw=raw, log=log, **kind))
    iteration_s = probe["train_iteration_s"] + probe["val_iteration_s"] / 5
    epoch_seconds = iteration_s * iterations
    # the nearest whole number of epochs (never fewer than one): nnU-Net gets at least the
    # budget whenever the remainder is over half an epoch
    available = per_fold - probe["startup_s"]
    epochs = max(1, round(available / epoch_seconds))
    if available < epoch_seconds / 2:  # not even half an epoch: one epoch of what fits
        iterations = max(PROBE_ITERATIONS, int(available / iteration_s))
    log(
        f"nnU-Net: {epoch_seconds:.0f} s per epoch of {TRAIN_ITERATIONS} iterations on this "
        f"CPU; {epochs} epoch(s) of {iterations} iterations fit {per_fold / 60:.1f} min per fold"
    )
    train_seconds = []
    for k in range(len(splits)):
        start = time.perf_counter()
        _child(env, "train", dataset_id, fold=k, epochs=epochs, iterations=iterations, log=log,
               **kind)  # fmt: skip
        train_seconds.append(time.perf_counter() - start)
    return {
        "nnunet_epochs": epochs,
        "nnunet_iterations_per_epoch": iterations,
        "nnunet_epoch_seconds": round(epoch_seconds, 1),
        "nnunet_preprocess_minutes": round(preprocess_seconds / 60, 2),
        "nnunet_train_minutes": round(sum(train_seconds) / 60, 2),
        "nnunet_budget_minutes": round(budget_seconds / 60, 2),
    }


# ------------------------------------------------------------------------------ in this process
def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[key] = str(root / key)
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    # one augmentation worker: on 2 cores its probe measured 4.0 s a training iteration with
    # one, 4.6 with two (fighting the training threads), 6.4 with single-threaded workers
    env.setdefault("nnUNet_n_proc_DA", "1")
    env["nnUNet_compile"] = "f"  # as medlens, no torch.compile on the CPU
    return env


def _raw_dataset(raw: Path, images: list[Path], labels: list[Path], names: dict[str, int], *,
                 channel: str, file_ending: str) -> None:  # fmt: skip
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for image, label in zip(images, labels, strict=True):
        case = image.name.removesuffix(file_ending)
        for link, target in ((raw / "imagesTr" / f"{case}_0000{file_ending}", image),
                             (raw / "labelsTr" / f"{case}{file_ending}", label)):  # fmt: skip
            if not link.is_symlink():
                link.symlink_to(target.resolve())
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel},
        "labels": names,
        "numTraining": len(images),
        "file_ending": file_ending,
    }, indent=1))  # fmt: skip


def _child(env: dict, command: str, dataset_id: int, log=print, **kwargs) -> str:
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}
    args = [sys.executable, str(Path(__file__).resolve()), command, str(dataset_id),
            json.dumps(options)]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"nnU-Net {command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")


# ------------------------------------------------------------------------------ child processes
def _prepare(dataset_id: int, options: dict) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    n = os.cpu_count() or 2
    extract_fingerprints([dataset_id], num_processes=n, check_dataset_integrity=True)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=(options["configuration"],), num_processes=(n,))
    print("{}")


def _trainer(dataset_id: int, fold: int, configuration: str):
    """nnU-Net's stock trainer, set up as ``nnUNetv2_train ID CONFIGURATION FOLD -device cpu``."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(dataset_id), configuration, fold, "nnUNetTrainer",
                                 "nnUNetPlans", False, device=torch.device("cpu"))  # fmt: skip


def _probe(dataset_id: int, options: dict) -> None:
    """Time the stock trainer's iterations on a copy of the preprocessed data (its own folders)."""
    import shutil

    from nnunetv2.paths import nnUNet_preprocessed

    # the probe's environment points elsewhere: link the real preprocessed data there
    real = Path(options["raw"]).parents[1] / "nnUNet_preprocessed" / Path(options["raw"]).name
    mine = Path(nnUNet_preprocessed) / real.name
    if not mine.exists():
        shutil.copytree(real, mine, symlinks=True)
    trainer = _trainer(dataset_id, 0, options["configuration"])
    trainer.num_epochs = 2
    trainer.num_iterations_per_epoch = PROBE_ITERATIONS
    trainer.num_val_iterations_per_epoch = PROBE_VAL_ITERATIONS
    start = time.perf_counter()
    trainer.run_training()
    total = time.perf_counter() - start
    starts = trainer.logger.get_value("epoch_start_timestamps", step=None)
    ends = trainer.logger.get_value("epoch_end_timestamps", step=None)
    second = ends[1] - starts[1]
    # a validation iteration (no backward pass) costs about a third of a training one
    train_s = second / (PROBE_ITERATIONS + PROBE_VAL_ITERATIONS / 3)
    epochs_s = sum(e - s for s, e in zip(starts, ends, strict=True))
    print(json.dumps({"train_iteration_s": train_s, "val_iteration_s": train_s / 3,
                      "startup_s": max(0.0, total - epochs_s)}))  # fmt: skip


def _train(dataset_id: int, options: dict) -> None:
    trainer = _trainer(dataset_id, int(options["fold"]), options["configuration"])
    trainer.num_epochs = int(options["epochs"])  # as nnUNetTrainer_Xepochs does
    if int(options["iterations"]) != TRAIN_ITERATIONS:  # a smoke run only
        trainer.num_iterations_per_epoch = int(options["iterations"])
        trainer.num_val_iterations_per_epoch = max(1, int(options["iterations"]) // 5)
    trainer.run_training()
    trainer.perform_actual_validation(False)
    print("{}")


def _infer(dataset_id: int, options: dict) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = (Path(nnUNet_results) / maybe_convert_to_dataset_name(dataset_id)
              / f"nnUNetTrainer__nnUNetPlans__{options['configuration']}")  # fmt: skip
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)  # fmt: skip
    predictor.initialize_from_trained_model_folder(
        str(folder), use_folds=tuple(range(options["folds"]))
    )
    out = Path(options["out"])
    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    for file in options["files"]:  # one case at a time, end to end, as medlens is timed
        case = Path(file).name.removesuffix(options["file_ending"])
        start = time.perf_counter()
        predictor.predict_from_files_sequential(
            [[file]], [str(out / case)], save_probabilities=False, overwrite=True
        )
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds_per_case": round(sum(seconds) / len(seconds), 3)}))


if __name__ == "__main__":
    command, dataset_id, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    {"prepare": _prepare, "probe": _probe, "train": _train, "infer": _infer}[command](
        dataset_id, options
    )
