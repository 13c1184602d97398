"""A trained classification run on disk, and prediction with it.

The run folder is the contract between ``medlens train``, ``evaluate`` and ``predict``::

    run.json            task, classes, positive class (binary), input spec, plan, folds,
                        thresholds, status
    splits.json         which training images each fold trained and tuned on
    preprocessing.json  the fitted normalisation as a medlens.preprocessing pipeline (also
                        inside the weights; run.json holds the input grid)
    fold-K/             config.json, history.jsonl, last.pt, best.pt of fold K
    metrics.json        held-out evaluation with 95% bootstrap intervals
    predictions.csv     held-out predictions
    report.html         the report

Every checkpoint loads with ``torch.load(weights_only=True)``. Several folds predict as an
ensemble: the mean of their probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.tasks.base import Prediction
from medlens.tasks.classification.data import ImageSet, InputSpec
from medlens.tasks.classification.plan import Classifier, Plan, build_network
from medlens.tasks.run_folder import RunFolder, run_format

__all__ = [
    "RUN_FORMAT",
    "ClassPrediction",
    "Run",
    "class_predictions",
    "load_run",
    "metric_task",
    "positive_index",
    "predict_probs",
    "recorded_positive",
    "write_predictions",
    "write_rows",
]

RUN_FORMAT = run_format("classification")


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

    @property
    def temperature(self) -> float:
        """The calibration temperature fitted out of fold (runs from before it: 1)."""
        return float(self.info.get("temperature") or 1.0)

    def adapt(self, probs: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """``probs`` of a new site's images adapted to its class prior, estimated from them
        (EM, :func:`~medlens.tasks.classification.calibration.adapt_prior`), and the record."""
        from medlens.tasks.classification.calibration import adapt_prior

        train_prior = self.info.get("train_prior")
        if self.metric_task == "multilabel" or train_prior is None:
            raise MedlensError(
                f"{self.path}: --adapt-prior needs a single-label run that recorded its training "
                "class prior (runs trained by this medlens do)"
            )
        adapted, prior, steps = adapt_prior(probs, np.asarray(train_prior))
        names = self.class_names
        return adapted, {
            "training_prior": dict(zip(names, map(float, train_prior), strict=True)),
            "estimated_prior": dict(zip(names, map(float, prior), strict=True)),
            "images": len(probs),
            "em_iterations": int(steps),
        }

    def decision_rule(self, adapted: bool = False) -> str:
        """How the predicted class is chosen, in words."""
        calibrated = (
            f"probabilities calibrated by temperature {self.temperature:.3f}"
            f"{' and class biases' if self.info.get('bias') else ''} (fitted out of fold)"
            if self.temperature != 1.0 or self.info.get("bias")
            else "probabilities as the network gives them"
        )
        if adapted:
            rule = "the most probable class after adapting to the estimated class prior"
        elif self.metric_task == "binary" and self.threshold is not None:
            name = self.class_names[1 if self.positive is None else self.positive]
            cut = float(np.asarray(self.threshold, dtype=float).reshape(-1)[0])
            rule = f"{name!r} when its probability >= {cut:.4f} (Youden's J, out of fold)"
        elif self.metric_task == "multilabel":
            rule = "each class present when its probability reaches its Youden threshold"
        else:
            rule = "the most probable class"
        return f"{rule}; {calibrated}"

    def probabilities(self, images: np.ndarray, networks: list[Classifier] | None = None):
        """Calibrated class probabilities ``(N, K)`` of the folds' ensemble (or ``networks``)."""
        from medlens.tasks.classification.calibration import apply_temperature

        flips = self.info.get("tta_flips") or ()
        probs = predict_probs(self.networks if networks is None else networks, images, self.task,
                              flips=flips)  # fmt: skip
        return apply_temperature(probs, self.temperature, self.metric_task, self.info.get("bias"))

    @torch.no_grad()
    def features(self, images: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
        """The first fold's pooled penultimate features ``(N, F)`` of ``images`` ``(N, C, ...)``
        (read as :meth:`probabilities` reads them): the space in which
        :mod:`medlens.metrics.generative` compares real and generated images."""
        network = self.networks[0].eval()
        parts = []
        for start in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.array(images[start : start + batch_size]))
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            maps = network.forward_features(x)
            parts.append(network.backbone.forward_head(maps, pre_logits=True).double().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0))


def recorded_positive(info: dict[str, Any]) -> int | None:
    """Binary: the index of the run's positive class (runs from before it was recorded: 1)."""
    if metric_task(info["task"], len(info["class_names"])) != "binary":
        return None
    return int(info.get("positive_index", 1))


def read_run_info(path: Path, run_format: str | None = RUN_FORMAT) -> dict[str, Any]:
    """``run.json`` of a run folder, checked to be a ``run_format`` run (None: any task)."""
    folder = RunFolder(path)
    info = folder.info
    if run_format is not None and info.get("format") != run_format:
        raise MedlensError(f"{folder.manifest}: not a {run_format} run")
    return info


def load_run(path: str | Path) -> Run:
    """Load a finished run's networks (best checkpoint of each fold, EMA weights if kept)."""
    folder = RunFolder(path).require("classification")
    info = folder.info
    spec = InputSpec.from_dict(info["input"])
    plan = Plan.from_dict(info["plan"])
    norm = info["normalisation"]
    outputs = int(info["num_outputs"])
    networks = folder.load_networks(
        lambda: build_network(plan, spec, outputs, norm["mean"], norm["std"])
    )
    return Run(folder.path, info, networks)


@torch.no_grad()
def predict_probs(
    networks: list[Classifier],
    images: np.ndarray,
    task: str,
    *,
    batch_size: int = 128,
    flips: Sequence[int] = (),
) -> np.ndarray:
    """Mean class probabilities of ``networks`` on ``images`` ``(N, C, ...)``: ``(N, K)``.

    ``flips``: spatial axes (0 = the first after the channel) to mirror for test-time
    augmentation; the probabilities are averaged over the image and each single mirror.
    """
    out = np.zeros((images.shape[0], 0), dtype=np.float64)
    views: list[tuple[int, ...]] = [(), *((2 + int(a),) for a in flips)]
    for network in networks:
        network.eval()
        parts = []
        for start in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.array(images[start : start + batch_size]))
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            total = None
            for dims in views:
                logits = network(torch.flip(x, dims) if dims else x).float()
                p = torch.sigmoid(logits) if task == "multilabel" else logits.softmax(dim=1)
                total = p if total is None else total + p
            parts.append((total / len(views)).double().numpy())
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


@dataclass
class ClassPrediction(Prediction):
    """One image's class probabilities and decision; it writes itself as a CSV row."""

    probabilities: np.ndarray
    class_names: list[str]
    metric_task: str
    decision: Any  # class index, or 0/1 per class (multi-label)
    true_label: int | None = None
    threshold: Any = None  # the tuned threshold(s) of the decision; None: the most probable
    source: str | None = None  # the DICOM file or series folder it was predicted from
    series_uid: str | None = None  # the series read from ``source`` (a folder of several)

    formats = ("sr",)
    dicom_form = "sr"

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        """``"sr"``: a DICOM Structured Report in the source's study, ``<folder>/<name>.sr.dcm``
        (``context``: ``name``, ``model_name``, ``model_version``; see
        :func:`medlens.io.dicomsr.write_classification_sr`); the input must be DICOM."""
        from medlens._atomic import safe_name
        from medlens.errors import MedlensError
        from medlens.io.dicomsr import write_classification_sr

        if fmt != "sr":
            raise MedlensError(f"a classification has no {fmt} form (json, sr)")
        if self.source is None:
            raise MedlensError(f"{self.id}: a DICOM Structured Report needs a DICOM input")
        probabilities = dict(zip(self.class_names, map(float, self.probabilities), strict=True))
        name = safe_name(context.get("name", "result"), max_length=120)
        return write_classification_sr(
            self.source, Path(folder) / f"{name}.sr.dcm", probabilities=probabilities,
            predicted=self.label, threshold=self.threshold, series_uid=self.series_uid,
            model_name=context.get("model_name", "medlens"),
            model_version=context.get("model_version", "unknown"),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """``probabilities`` (class -> p), ``predicted`` (a class, or the classes present for
        multi-label) and ``threshold``."""
        threshold = self.threshold
        if threshold is not None:
            threshold = np.asarray(threshold, dtype=float).round(6).tolist()
        return {
            "probabilities": {name: round(float(p), 6) for name, p
                              in zip(self.class_names, self.probabilities, strict=True)},
            "predicted": self.label,
            "threshold": threshold,
        }  # fmt: skip

    @property
    def label(self) -> str | list[str]:
        """The predicted class name (multi-label: the names predicted present)."""
        if self.metric_task == "multilabel":
            return [n for n, on in zip(self.class_names, self.decision, strict=True) if on]
        return self.class_names[int(self.decision)]

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id}
        row.update({f"prob_{n}": f"{p:.6f}" for n, p in zip(self.class_names, self.probabilities,
                                                             strict=True)})  # fmt: skip
        if self.metric_task == "multilabel":
            row.update({f"pred_{n}": int(v) for n, v in zip(self.class_names, self.decision,
                                                            strict=True)})  # fmt: skip
            return row
        row.update(pred_index=int(self.decision), pred_label=self.label)
        if self.true_label is not None:
            row["true_label"] = self.class_names[int(self.true_label)]
        return row


def class_predictions(
    ids: list[str],
    probs: np.ndarray,
    class_names: list[str],
    metric_task: str,
    threshold: Any,
    positive: int | None = None,
    labels: np.ndarray | None = None,
) -> list[ClassPrediction]:
    """One :class:`ClassPrediction` per row of ``probs`` (``labels``: the truth, if known)."""
    decisions = predicted_labels(probs, metric_task, threshold, positive)
    truth = labels if labels is not None and metric_task != "multilabel" else None
    return [
        ClassPrediction(
            sample_id,
            probs[i],
            class_names,
            metric_task,
            decisions[i],
            None if truth is None else int(truth[i]),
            threshold if metric_task in ("binary", "multilabel") else None,
        )
        for i, sample_id in enumerate(ids)
    ]


def write_rows(path: str | Path, predictions: list[Prediction]) -> Path:
    """A CSV of the predictions' rows, in order (columns in the first row's order)."""
    import csv
    import io

    from medlens._atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header: list[str] = []
    for prediction in predictions:
        header += [k for k in prediction.row() if k not in header]
    writer.writerow(header)
    for prediction in predictions:
        row = prediction.row()
        writer.writerow([row.get(k, "") for k in header])
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def write_predictions(
    path: str | Path,
    data: ImageSet,
    probs: np.ndarray,
    class_names: list[str],
    metric_task: str,
    threshold: Any,
    positive: int | None = None,
) -> Path:
    """One row per image in input order: id, ``prob_<class>`` per class, the prediction(s)
    (and ``true_label`` when ``data`` has labels)."""
    predictions = class_predictions(list(data.ids), probs, class_names, metric_task, threshold,
                                    positive, data.labels)  # fmt: skip
    if not predictions:
        header = ["id", *(f"prob_{name}" for name in class_names)]
        header += ([f"pred_{n}" for n in class_names] if metric_task == "multilabel"
                   else ["pred_index", "pred_label"])  # fmt: skip
        from medlens._atomic import atomic_write_text

        atomic_write_text(Path(path), ",".join(header) + "\r\n")
        return Path(path)
    return write_rows(path, predictions)
