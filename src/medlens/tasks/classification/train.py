"""``medlens train --task classification``: from a dataset to a validated, reported classifier.

Honest evaluation is built into the layout of the data:

- the training images are split (stratified, seeded, saved in ``splits.json``) into the part
  the network learns from and a *tuning* part that picks the best epoch and the decision
  threshold (Youden's J); with ``--folds K`` each of K folds tunes on its own held-out part and
  the thresholds come from the out-of-fold predictions;
- the held-out split (the ``.npz``'s ``val`` split, or 15% of a folder dataset set aside before
  anything else) is touched once, at the end, for the metrics with 95% bootstrap intervals and
  the report.

Each fold's trainer checkpoints every epoch; ``resume=True`` finishes folds that are done,
continues the one that was interrupted and starts the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens import __version__
from medlens._atomic import atomic_write_json, ensure_outside
from medlens.errors import DatasetError, MedlensError
from medlens.tasks.classification.bundle import (
    RUN_FORMAT,
    metric_task,
    positive_index,
    predict_probs,
    read_run_info,
    recorded_positive,
    write_predictions,
)
from medlens.tasks.classification.calibration import calibrate_out_of_fold, mirroring_helps
from medlens.tasks.classification.data import ImageSet, load_labelled
from medlens.tasks.classification.plan import (
    Plan,
    build_augment,
    build_network,
    fit_normaliser,
    make_plan,
)
from medlens.tasks.run_folder import RunFolder, failed_cleanly

__all__ = ["train_classification"]

HELD_OUT_FRACTION = 0.15
TUNE_FRACTION = 0.15


def train_classification(
    data: str | Path,
    output: str | Path,
    *,
    model: str | None = None,
    epochs: int | None = None,
    folds: int | None = None,
    seed: int = 0,
    resume: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
    n_boot: int = 1000,
    log: Callable[[str], None] = print,
    positive_class: str | int | None = None,
    plan: str | Path | None = None,
    select: str = "auto",
    pool: bool = False,
) -> dict[str, Any]:
    """Train, tune, evaluate and report; returns the run's ``run.json`` content.

    Args:
        data: a MedMNIST ``.npz`` (its ``train`` split trains, ``val`` is held out) or any
            labelled classification dataset medlens opens (CSV of labels, folders).
        output: the run folder (created; must not be inside the data's folder).
        model: a registered model name; by default chosen from the data (and said which).
        epochs: number of epochs; by default from the plan.
        folds: ``K >= 2`` for K-fold cross-validation and a K-model ensemble.
        seed: seeds the splits, the initialisation, the batches and the augmentation.
        resume: continue an interrupted run in ``output``.
        overrides: ``key=value`` training settings (see :class:`~medlens.engine.TrainConfig`).
        positive_class: binary tasks: the positive class, by name or index (default: index 1);
            sensitivity, specificity, the threshold and the predictions refer to it, and
            ``run.json`` records it (``positive_class``, ``positive_index``).
        plan: a plan file (``medlens plan``) to train by instead of planning; ``epochs`` and
            ``overrides`` still apply.
        select: ``"auto"``: small 2D sets (up to
            :data:`~medlens.tasks.classification.selection.SELECT_MAX_IMAGES` labelled images)
            with nothing named (no model, plan or epochs) choose their plan by cross-validation
            over train + val and predict with the fold ensemble
            (:mod:`~medlens.tasks.classification.selection`); ``"cv"``: always; ``"off"``: never
            (train on ``train``, tune on part of it, evaluate once on ``val``).
        pool: train on every labelled image (a ``.npz``'s train and val splits together), hold
            nothing out; the figures are then the out-of-fold ones.
    """
    from medlens.engine import distributed as D

    owns_group = D.launched_by_torchrun() and not D.current_dist().enabled
    dist = D.init_distributed()  # under torchrun: every rank trains, rank 0 writes
    from medlens.tasks.classification.selection import select_and_train, selects

    if select not in ("auto", "cv", "off"):
        raise MedlensError(f"select={select!r}: use auto, cv or off")
    try:
        if selects(Path(data), Path(output), select, resume, model, plan, epochs, folds):
            with failed_cleanly(output, resume=resume, enabled=dist.is_main):
                return select_and_train(
                    Path(data),
                    Path(output),
                    seed=seed,
                    resume=resume,
                    overrides=overrides,
                    progress=progress,
                    n_boot=n_boot,
                    log=log,
                    positive_class=positive_class,
                    folds=folds,
                )
        with failed_cleanly(output, resume=resume, enabled=dist.is_main):
            return _job(data, output, model, epochs, folds, seed, resume, overrides, progress,
                        n_boot, log, dist, positive_class, plan, pool)  # fmt: skip
    finally:
        if owns_group:
            D.destroy_distributed()


def _job(data, output, model, epochs, folds, seed, resume, overrides, progress, n_boot, log, dist,
         positive_class, plan_path=None, pool=False):  # fmt: skip
    from medlens.data import kfold_splits, save_splits, train_val_split

    main = dist.is_main
    write = atomic_write_json if main else _skip
    if not main:
        log, progress = _skip, False

    def barrier() -> None:
        if dist.enabled:
            torch.distributed.barrier()

    data, output = Path(data), Path(output)
    if not data.exists():
        raise DatasetError("does not exist", data)
    ensure_outside(output, data)
    if folds is not None and folds < 2:
        raise MedlensError(f"--folds must be at least 2, got {folds}")
    started = time.perf_counter()
    from medlens.tasks.classification.selection import pooled

    split = pooled if pool else _split_held_out
    train_set, held_out, held_out_note = split(data, seed, progress)
    task = metric_task(train_set.task, len(train_set.class_names))
    positive = positive_index(positive_class, train_set.class_names, task)
    num_outputs = len(train_set.class_names)
    if resume:
        info = read_run_info(output)
        if positive_class is not None and positive != recorded_positive(info):
            raise MedlensError(
                f"{output}: the run's positive class is {info.get('positive_class')!r}; "
                "resume without --positive-class or start a new run"
            )
        positive = recorded_positive(info)
        plan = _resumed_plan(Plan.from_dict(info["plan"]), info.get("overrides", []), overrides)
        folds_n = int(info["folds"])
        split_records = json.loads((output / "splits.json").read_text())["folds"]
        log(f"resuming {output}: {info['plan']['model']}, {folds_n} fold(s)")
    else:
        if RunFolder(output).exists():
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        barrier()  # every rank has checked before rank 0 writes
        if main:
            output.mkdir(parents=True, exist_ok=True)
        plan = _new_plan(train_set, model, epochs, plan_path).with_overrides(overrides)
        labels_for_split = None if task == "multilabel" else train_set.labels
        labels_array = _split_labels(train_set, labels_for_split)
        grouping = {"groups": train_set.subjects, "ids": train_set.ids}
        if folds:
            split_records = kfold_splits(labels_array, folds, seed=seed, **grouping)
        else:
            split_records = [train_val_split(labels_array, TUNE_FRACTION, seed=seed, **grouping)]
        folds_n = len(split_records)
        if main:
            save_splits(output / "splits.json", split_records if folds else split_records[0])
        mean, std = fit_normaliser(train_set.images)
        info = {
            "format": RUN_FORMAT,
            "medlens": __version__,
            "status": "training",
            "task": train_set.task,
            "metric_task": task,
            "class_names": train_set.class_names,
            **(
                {}
                if positive is None
                else {"positive_class": train_set.class_names[positive], "positive_index": positive}
            ),
            "num_outputs": num_outputs,
            "input": train_set.spec.to_dict(),
            "normalisation": {"mean": mean, "std": std, "scale_uint8": 1 / 255},
            "plan": plan.to_dict(),
            "folds": folds_n,
            "seed": seed,
            "overrides": list(overrides),
            "data": {
                "source": str(data),
                "name": train_set.name,
                "train": len(train_set),
                "held_out": None if held_out is None else len(held_out),
                "held_out_from": held_out_note,
            },
        }
        write(output / "run.json", info)
        from medlens.preprocessing import ChannelZScore, Preprocessor

        scaler = ChannelZScore.from_normalisation(info["normalisation"])  # fit_normaliser's step
        write(output / "preprocessing.json", Preprocessor([scaler]).to_dict())
        verb = "chose" if plan.chosen else "using"
        log(
            f"medlens {verb} {plan.model} ({plan.reason}); {plan.train.epochs} epochs, "
            f"{folds_n} fold(s), {len(train_set)} training images"
        )
    config = plan.train.replace(seed=seed, progress=progress)
    norm = info["normalisation"]
    augment = build_augment(plan.augment, train_set.spatial_dims)
    oof = np.full((len(train_set), num_outputs), np.nan)
    flips = [int(a) for a in plan.augment.get("flip_axes") or []]
    oof_tta = oof.copy()
    for fold, record in enumerate(split_records):
        train_idx = np.asarray(record["train_indices"])
        tune_idx = np.asarray(record["val_indices"])
        fold_dir = output / f"fold-{fold}"
        torch.manual_seed(seed * 1000 + fold)  # the initial weights: seeded, different per fold
        network = build_network(plan, train_set.spec, num_outputs, norm["mean"], norm["std"])
        if not (resume and (fold_dir / "done.json").exists()):
            log(
                f"fold {fold + 1}/{folds_n}: training on {len(train_idx)}, "
                f"tuning on {len(tune_idx)}"
            )
            _fit_fold(
                network, config, train_set, train_idx, tune_idx, fold_dir, augment, task, resume
            )
            barrier()  # rank 0 has written the fold's checkpoints
        from medlens.engine import load_weights

        load_weights(network, _best(fold_dir))
        oof[tune_idx] = predict_probs([network], train_set.images[tune_idx], train_set.task)
        if flips:
            oof_tta[tune_idx] = predict_probs([network], train_set.images[tune_idx],
                                              train_set.task, flips=flips)  # fmt: skip
    tuned = ~np.isnan(oof).any(axis=1)
    tta = bool(flips) and mirroring_helps(oof, oof_tta, tuned, train_set, task, positive, log)
    oof = oof_tta if tta else oof
    calibration, oof = calibrate_out_of_fold(oof, tuned, train_set, task, log)
    threshold = None
    if task in ("binary", "multilabel"):
        from medlens.metrics import choose_thresholds

        threshold = choose_thresholds(train_set.labels[tuned], oof[tuned], task, positive)
    info.update(status="complete", threshold=threshold, tta_flips=flips if tta else [],
                **calibration)  # fmt: skip
    if task != "multilabel":
        counts = np.bincount(np.asarray(train_set.labels).reshape(-1).astype(int),
                             minlength=num_outputs)  # fmt: skip
        info["train_prior"] = (counts / max(counts.sum(), 1)).tolist()
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    if not main:  # evaluation and report are rank 0's
        barrier()
        return info
    RunFolder(output).write(info)
    if held_out is not None:
        evaluation, probs = _evaluate_held_out(output, info, held_out, n_boot, seed, log)
        keys = ("auc", "accuracy", "sensitivity", "specificity", "f1", "accuracy_at_0.5")
        info["evaluation"] = {k: evaluation[k] for k in keys if k in evaluation}
        report_data = held_out
    else:  # no held-out images: report the out-of-fold predictions, and say so
        from medlens.metrics import evaluate_classification

        report_data, probs = train_set.subset(np.flatnonzero(tuned)), oof[tuned]
        evaluation = evaluate_classification(
            report_data.labels, probs, task, class_names=train_set.class_names,
            threshold=threshold, n_boot=n_boot, seed=seed, positive=positive,
        )  # fmt: skip
        evaluation["split"] = "tuning images (out-of-fold): optimistic, nothing was held out"
        if pool:
            evaluation["split"] = (
                f"out-of-fold over all {len(report_data)} labelled images (train + val pooled; "
                "each fold's images were predicted by the model that did not train on them)"
            )
        if task == "binary" and threshold is not None:  # the argmax's accuracy beside ours
            plain = evaluate_classification(report_data.labels, probs, "binary", n_boot=n_boot,
                                            seed=seed, positive=positive)  # fmt: skip
            evaluation["accuracy_at_0.5"] = plain["accuracy"]
        keys = ("auc", "accuracy", "sensitivity", "specificity", "f1", "accuracy_at_0.5")
        info["evaluation"] = {k: evaluation[k] for k in keys if k in evaluation}
        info["evaluation"]["split"] = evaluation["split"]
        atomic_write_json(output / "metrics.json", evaluation)
    RunFolder(output).write(info)
    _report(output, info, report_data, evaluation, probs, log)
    barrier()
    return info


# ------------------------------------------------------------------------------ the pieces
def _split_held_out(data: Path, seed: int, progress: bool):
    """Training images and the held-out evaluation set (``val`` split or 15% set aside)."""
    if data.suffix.lower() == ".npz":
        from medlens.data import available_splits

        train_set = load_labelled(data, "train")
        splits = available_splits(data)
        held = "val" if "val" in splits else None
        if held is None:
            return train_set, None, "none: the file has no val split"
        return train_set, load_labelled(data, held), f"the file's {held} split"
    from medlens.data import train_val_split

    everything = load_labelled(data, progress=progress)
    labels = None if everything.task == "multilabel" else everything.labels
    record = train_val_split(
        _split_labels(everything, labels),
        HELD_OUT_FRACTION,
        seed=seed + 1,
        ids=everything.ids,
        groups=everything.subjects,  # one patient's images stay on one side
    )
    train_set = everything.subset(record["train_indices"])
    held_out = everything.subset(record["val_indices"])
    return train_set, held_out, f"{HELD_OUT_FRACTION:.0%} of the data, set aside before training"


def _split_labels(data: ImageSet, labels: np.ndarray | None) -> np.ndarray:
    return labels if labels is not None else np.zeros(len(data), dtype=np.int64)


def _new_plan(train_set: ImageSet, model: str | None, epochs: int | None, path) -> Plan:
    """The plan of a new run: the plan file given, or planned from the training images."""
    if path is None:
        return make_plan(train_set.spec, len(train_set), train_set.task, model=model,
                         epochs=epochs)  # fmt: skip
    if model is not None:
        raise MedlensError("--model with --plan: name the model in the plan")
    plan = Plan.load(path)
    if epochs is not None:
        plan.train = plan.train.replace(epochs=int(epochs))
    return plan


def _resumed_plan(plan: Plan, recorded: list[str], overrides: Sequence[str]) -> Plan:
    """The plan of a resumed run: its settings (runs from before the typed plan kept their
    ``--set`` items beside it) and this resume's training settings (the trainer refuses those
    a resume may not change); the model and augmentation cannot change."""
    resumed = plan.with_overrides([*recorded, *overrides])
    if {**resumed.to_dict(), "train": None} != {**plan.with_overrides(recorded).to_dict(),
                                                "train": None}:  # fmt: skip
        raise MedlensError("--set: only training settings may change when resuming a run")
    return resumed


def _fit_fold(network, config, data, train_idx, tune_idx, fold_dir, augment, task, resume):
    from medlens.engine import TensorBatches, Trainer
    from medlens.engine.distributed import current_dist
    from medlens.metrics import classification_metrics

    per_rank = len(train_idx) // max(current_dist().world_size, 1)

    labels = torch.from_numpy(np.asarray(data.labels))
    train_batches = TensorBatches(
        data.images[train_idx],
        labels[train_idx],
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=per_rank > config.batch_size,  # no last tiny batch, but never no batch
        seed=config.seed,
        augment=augment,
    )
    tune_images, tune_labels = data.images[tune_idx], np.asarray(data.labels)[tune_idx]

    def evaluate(model, _val):
        probs = predict_probs([model], tune_images, data.task)
        metrics = classification_metrics(tune_labels, probs, task)
        auc = metrics.get("auc")
        return {
            "auc": float("nan") if auc is None else float(auc),
            "accuracy": float(metrics.get("accuracy", float("nan"))),
        }

    trainer = Trainer(
        network,
        config,
        train_batches,
        val_data=tune_idx,
        output_dir=fold_dir,
        evaluate_fn=evaluate,
        task=data.task,
    )
    trainer.fit(resume=resume and (fold_dir / "last.pt").exists())
    best = trainer.tracker.state_dict() if hasattr(trainer.tracker, "state_dict") else {}
    if trainer.dist.is_main:
        atomic_write_json(fold_dir / "done.json", {"epochs": trainer.epoch, "best": best})


def _best(fold_dir: Path) -> Path:
    from medlens.engine import reported_checkpoint

    return reported_checkpoint(fold_dir)


def _evaluate_held_out(output, info, held_out, n_boot, seed, log) -> dict[str, Any]:
    from medlens.metrics import evaluate_classification
    from medlens.tasks.classification.bundle import load_run

    run = load_run(output)
    probs = run.probabilities(held_out.images)
    evaluation = evaluate_classification(
        held_out.labels,
        probs,
        run.metric_task,
        class_names=run.class_names,
        threshold=info.get("threshold"),
        n_boot=n_boot,
        seed=seed,
        positive=run.positive,
    )
    evaluation["split"] = info["data"]["held_out_from"]
    if run.metric_task == "binary" and info.get("threshold") is not None:
        # Published benchmarks (MedMNIST) report accuracy at the argmax: give it beside ours.
        plain = evaluate_classification(
            held_out.labels, probs, "binary", class_names=run.class_names, n_boot=n_boot,
            seed=seed, positive=run.positive,
        )  # fmt: skip
        evaluation["accuracy_at_0.5"] = plain["accuracy"]
    atomic_write_json(output / "metrics.json", evaluation)
    write_predictions(
        output / "predictions.csv",
        held_out,
        probs,
        run.class_names,
        run.metric_task,
        info.get("threshold"),
        run.positive,
    )
    auc, acc = evaluation["auc"], evaluation["accuracy"]
    log(f"held-out ({evaluation['split']}, n={len(held_out)}): AUC {_ci(auc)}, accuracy {_ci(acc)}")
    return evaluation, probs


def _ci(metric: dict[str, Any]) -> str:
    if metric.get("value") is None:
        return "n/a"
    if metric.get("low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def _report(output: Path, info, data: ImageSet, evaluation, probs, log) -> None:
    from medlens.tasks.classification.reporting import write_run_report

    path = write_run_report(output, info, data, evaluation, probs)
    log(f"report: {path}")


def _skip(*args: Any, **kwargs: Any) -> None:
    """What ranks other than 0 do instead of writing or printing."""
