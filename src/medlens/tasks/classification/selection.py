"""Choosing the model by cross-validation when the data are small, and ensembling the folds.

A small labelled set (MedMNIST's BreastMNIST: 546 training and 78 validation images) cannot
both train a model and tell which model is better: 78 images choose epochs and a model by
chance as much as by merit, and report figures the choice has seen. So for small 2D sets the
defaults pool the file's ``train`` and ``val`` splits, train every candidate plan with K-fold
cross-validation (each fold choosing its best epoch on its own tuning fold), keep the candidate
with the best out-of-fold AUC, and predict with the K models of that candidate as an ensemble.
The run's figures are its out-of-fold predictions over every labelled image, and say so; they
are slightly optimistic only by the choice among the few candidates.

The run folder is the winner's (``fold-0`` ... ``fold-K-1``, ``run.json`` with ``"selection"``
listing every candidate, its plan and its out-of-fold figures); ``candidates/<name>/`` keeps
each candidate's ``metrics.json`` and ``run.json``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

__all__ = ["SELECTION_BUDGET", "SELECT_MAX_IMAGES", "candidate_plans", "select_and_train"]

#: Labelled images up to which ``select="auto"`` chooses by cross-validation (2D only).
SELECT_MAX_IMAGES = 3000
#: Image presentations all candidates and folds share (about ten minutes on two CPU cores for
#: 28x28 images with the small CNN).
SELECTION_BUDGET = 480_000
FOLDS = 5
EPOCH_BOUNDS = (20, 150)


def candidate_plans(
    spec: Any, n_images: int, task: str, folds: int = FOLDS
) -> list[tuple[str, Any]]:
    """The plans compared: the planned default, and the same with stronger augmentation and
    dropout (small sets overfit); epochs shared out of :data:`SELECTION_BUDGET`."""
    import numpy as np

    from medlens.tasks.classification.plan import make_plan

    base = make_plan(spec, n_images, task)
    strong = copy.deepcopy(base)
    strong.augment.update(rotate=20.0, scale=0.15, contrast=0.3)
    strong.model_kwargs["dropout"] = 0.4
    strong.reason = base.reason + ", stronger augmentation and dropout"
    candidates = [("default", base), ("regularised", strong)]
    per_model = SELECTION_BUDGET / (len(candidates) * folds)
    fold_images = max(1.0, n_images * (folds - 1) / folds)
    epochs = int(np.clip(round(per_model / fold_images), *EPOCH_BOUNDS))
    for _, plan in candidates:
        plan.train = plan.train.replace(epochs=epochs)
    return candidates


def select_and_train(
    data: Path,
    output: Path,
    *,
    seed: int,
    resume: bool,
    overrides,
    progress,
    n_boot: int,
    log,
    positive_class,
    folds: int | None,
) -> dict[str, Any]:
    """Train every candidate with K-fold cross-validation, keep the best (module notes)."""
    from medlens.tasks.classification.train import train_classification
    from medlens.tasks.run_folder import RunFolder

    folder = RunFolder(output)
    if folder.exists():
        if not resume:
            raise MedlensError(f"{output}: holds a run already; use --resume or a new folder")
        if folder.info.get("status") == "complete" and "selection" in folder.info:
            return folder.info
    started = time.perf_counter()
    k = folds or FOLDS
    images, _, _ = pooled(Path(data), seed, progress)
    from medlens.tasks.classification.bundle import metric_task

    task = metric_task(images.task, len(images.class_names))
    candidates = candidate_plans(images.spec, len(images), images.task, k)
    log(f"choosing among {len(candidates)} plans by {k}-fold cross-validation over all "
        f"{len(images)} labelled images ({candidates[0][1].train.epochs} epochs each)")  # fmt: skip
    root = output / "candidates"
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for name, plan in candidates:
        where = root / name
        plan_path = plan.save(root / f"{name}.plan.json")
        if (where / "run.json").exists() and _complete(where):
            info = json.loads((where / "run.json").read_text())
        else:
            log(f"candidate {name}: {plan.model} ({plan.reason})")
            info = train_classification(
                data,
                where,
                folds=k,
                seed=seed,
                plan=plan_path,
                resume=(where / "run.json").exists(),
                overrides=overrides,
                progress=progress,
                n_boot=n_boot,
                positive_class=positive_class,
                log=lambda line, n=name: log(f"  [{n}] {line}"),
                select="off",
                pool=True,
            )
        metrics = json.loads((where / "metrics.json").read_text())
        score = _score(metrics, task)
        results.append({"name": name, "model": plan.model, "reason": plan.reason,
                        "augment": plan.augment, "model_kwargs": plan.model_kwargs,
                        "epochs": plan.train.epochs, "oof_score": score,
                        "train_seconds": info.get("train_seconds")})  # fmt: skip
        log(f"candidate {name}: out-of-fold {_score_name(task)} {score:.4f}")
    best = max(range(len(results)), key=lambda i: (results[i]["oof_score"], -i))
    winner = results[best]
    _promote(root / winner["name"], output)
    info = json.loads((output / "run.json").read_text())
    others = ", ".join(f"{r['name']} {r['oof_score']:.4f}" for r in results)
    info["plan"]["reason"] = (
        f"{winner['reason']}; chosen by {k}-fold cross-validation over train + val (out-of-fold "
        f"{_score_name(task)}: {others})"
    )
    info["selection"] = {"by": f"out-of-fold {_score_name(task)}, {k} folds over train + val",
                         "chosen": winner["name"], "candidates": results}  # fmt: skip
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    info["data"]["held_out_from"] = (
        "none: every labelled image trained a fold; figures are out of fold"
    )
    RunFolder(output).write(info)
    log(f"chose {winner['name']} ({winner['model']}); the {k} folds predict as an ensemble")
    return info


def selects(data, output, select, resume, model, plan, epochs, folds) -> bool:
    """Whether this run chooses its plan by cross-validation (see ``select``)."""
    if select == "off":
        return False
    if resume and (output / "run.json").is_file():
        return "selection" in json.loads((output / "run.json").read_text())
    if resume and (output / "candidates").is_dir():
        return True
    if select == "cv":
        return True
    if model is not None or plan is not None or epochs is not None or not data.exists():
        return False
    from medlens.data import available_splits, open_dataset

    try:
        if data.suffix.lower() == ".npz":
            parts = [open_dataset(data, split=s) for s in ("train", "val")
                     if s in available_splits(data)]  # fmt: skip
        else:
            parts = [open_dataset(data)]
    except (MedlensError, OSError):
        return False  # the job itself reports what is wrong with the data
    first = parts[0]
    small = sum(len(p) for p in parts) <= SELECT_MAX_IMAGES
    return first.spatial_dims == 2 and first.task != "multilabel" and small


def pooled(data: Path, seed: int = 0, progress: bool = False):
    """Every labelled image (a ``.npz``'s train and val splits together), nothing held out."""
    note = "none: train and val pooled for cross-validation; the figures are out of fold"
    import numpy as np

    from medlens.tasks.classification.data import ImageSet, load_labelled

    if data.suffix.lower() != ".npz":
        return load_labelled(data, progress=progress), None, note
    from medlens.data import available_splits

    parts = [load_labelled(data, s) for s in ("train", "val") if s in available_splits(data)]
    first = parts[0]
    together = ImageSet(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [i for p in parts for i in p.ids],
        first.task, list(first.class_names), first.name, first.source, "train+val",
        None, first.presentation,
    )  # fmt: skip
    return together, None, note


def _complete(where: Path) -> bool:
    try:
        return json.loads((where / "run.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def _score_name(task: str) -> str:
    return "AUC" if task != "ordinal" else "quadratic kappa"


def _score(metrics: dict[str, Any], task: str) -> float:
    key = "kappa" if task == "ordinal" else "auc"
    value = (metrics.get(key) or {}).get("value")
    return float("-inf") if value is None else float(value)


def _promote(winner: Path, output: Path) -> None:
    """Move the winner's run into ``output``; the others keep their metrics and run.json."""
    for entry in sorted(winner.iterdir()):
        target = output / entry.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if entry.name in ("run.json", "metrics.json"):
            shutil.copy2(entry, target)  # the candidate keeps its record too
        else:
            shutil.move(str(entry), str(target))
    for other in sorted(p for p in winner.parent.iterdir() if p.is_dir()):
        for checkpoint in other.glob("fold-*"):
            shutil.rmtree(checkpoint)
