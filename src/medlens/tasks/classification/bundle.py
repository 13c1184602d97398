"""A trained classification run on disk, and prediction with it.

The run folder is the contract between ``medlens train``, ``evaluate`` and ``predict``::

    run.json            task, classes, positive class (binary), input spec, plan, folds,
                        thresholds, status
    splits.json         which training images each fold trained and tuned on
    preprocessing.json  the input grid and the fitted normalisation (also inside the weights)
    fold-K/             config.json, history.jsonl, last.pt, best.pt of fold K
    metrics.json        held-out evaluation with 95% bootstrap intervals
    predictions.csv     held-out predictions
    report.html         the report

Every checkpoint loads with ``torch.load(weights_only=True)``. Several folds predict as an
ensemble: the mean of their probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.tasks.classification.data import ImageSet, InputSpec
from medlens.tasks.classification.plan import Classifier, Plan, build_network
from medlens.tasks.run_folder import status_problem

__all__ = [
    "RUN_FORMAT",
    "Run",
    "load_run",
    "metric_task",
    "positive_index",
    "predict_probs",
    "recorded_positive",
    "write_predictions",
]

RUN_FORMAT = "medlens.classification/1"


def metric_task(task: str, n_classes: int) -> str:
    """The metrics' task name: ``binary``, ``multiclass``, ``multilabel`` or ``ordinal``."""
    if task in ("multilabel", "ordinal"):
        return task
    return "binary" if n_classes == 2 else "multiclass"


def positive_index(value: str | int | None, class_names: list[str], task: str) -> int | None:
    """The index of the positive class ``value`` names (a class name, else an index), for a
    binary ``task`` (the metrics' task name); None for other tasks and no choice, as before:
    class 1 of a binary task is positive."""
    if value is None:
        return 1 if task == "binary" else None
    if task != "binary":
        raise MedlensError(
            f"--positive-class is for binary classification; this task is {task} "
            f"({len(class_names)} classes)"
        )
    text = str(value)
    if text in class_names:
        return class_names.index(text)
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    choices = ", ".join(f"{i} = {name!r}" for i, name in enumerate(class_names))
    raise MedlensError(f"--positive-class {text!r}: not one of the classes ({choices})")


@dataclass
class Run:
    """A loaded run: its networks (one per fold) and what prediction needs."""

    path: Path
    info: dict[str, Any]
    networks: list[Classifier]

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_dict(self.info["input"])

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def threshold(self) -> float | list[float] | None:
        return self.info.get("threshold")

    @property
    def metric_task(self) -> str:
        return metric_task(self.task, len(self.class_names))

    @property
    def positive(self) -> int | None:
        return recorded_positive(self.info)


def recorded_positive(info: dict[str, Any]) -> int | None:
    """Binary: the index of the run's positive class (runs from before it was recorded: 1)."""
    if metric_task(info["task"], len(info["class_names"])) != "binary":
        return None
    return int(info.get("positive_index", 1))


def read_run_info(path: Path, run_format: str | None = RUN_FORMAT) -> dict[str, Any]:
    """``run.json`` of a run folder, checked to be a ``run_format`` run (None: any task)."""
    manifest = path / "run.json"
    if not manifest.is_file():
        raise MedlensError(f"{path}: not a medlens run folder (no run.json)")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedlensError(f"{manifest}: not valid JSON ({exc})") from None
    if run_format is not None and info.get("format") != run_format:
        raise MedlensError(f"{manifest}: not a {run_format} run")
    return info


def load_run(path: str | Path) -> Run:
    """Load a finished run's networks (best checkpoint of each fold, EMA weights if kept)."""
    from medlens.engine import load_weights, reported_checkpoint

    path = Path(path)
    info = read_run_info(path)
    problem = status_problem(path, info)
    if problem is not None:
        raise MedlensError(f"{path}: {problem}")
    spec = InputSpec.from_dict(info["input"])
    plan = Plan.from_dict(info["plan"])
    norm = info["normalisation"]
    networks = []
    for fold in range(int(info["folds"])):
        checkpoint = reported_checkpoint(path / f"fold-{fold}")
        network = build_network(plan, spec, int(info["num_outputs"]), norm["mean"], norm["std"])
        load_weights(network, checkpoint)
        networks.append(network.eval())
    return Run(path, info, networks)


@torch.no_grad()
def predict_probs(
    networks: list[Classifier], images: np.ndarray, task: str, *, batch_size: int = 128
) -> np.ndarray:
    """Mean class probabilities of ``networks`` on ``images`` ``(N, C, ...)``: ``(N, K)``."""
    out = np.zeros((images.shape[0], 0), dtype=np.float64)
    for network in networks:
        network.eval()
        parts = []
        for start in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.array(images[start : start + batch_size]))
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            logits = network(x).float()
            probs = torch.sigmoid(logits) if task == "multilabel" else logits.softmax(dim=1)
            parts.append(probs.double().numpy())
        probs = np.concatenate(parts) if parts else np.zeros((0, 0))
        out = probs if out.shape[1] == 0 else out + probs
    return out / max(len(networks), 1)


def predicted_labels(
    probs: np.ndarray, metric_task: str, threshold: Any, positive: int | None = None
) -> np.ndarray:
    """Class index per row (argmax; binary: the ``positive`` class, 1 by default, when its
    probability reaches the tuned threshold) or 0/1 per class."""
    from medlens.metrics._inputs import decide

    return decide(probs, metric_task, threshold, 1 if positive is None else positive)


def write_predictions(
    path: str | Path,
    data: ImageSet,
    probs: np.ndarray,
    class_names: list[str],
    metric_task: str,
    threshold: Any,
    positive: int | None = None,
) -> Path:
    """One row per image in input order: id, ``prob_<class>`` per class, the prediction(s)."""
    import csv
    import io

    from medlens._atomic import atomic_write_text

    labels = predicted_labels(probs, metric_task, threshold, positive)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["id", *(f"prob_{name}" for name in class_names)]
    if metric_task == "multilabel":
        header += [f"pred_{name}" for name in class_names]
    else:
        header += ["pred_index", "pred_label"]
    if data.labels is not None:
        header += ["true_label"] if metric_task != "multilabel" else []
    writer.writerow(header)
    for i, sample_id in enumerate(data.ids):
        row: list[Any] = [sample_id, *(f"{p:.6f}" for p in probs[i])]
        if metric_task == "multilabel":
            row += [int(v) for v in labels[i]]
        else:
            row += [int(labels[i]), class_names[int(labels[i])]]
            if data.labels is not None:
                row.append(class_names[int(data.labels[i])])
        writer.writerow(row)
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)
