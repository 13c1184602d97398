"""Classification on the task platform: plan, train, predict, evaluate and explain."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, Predictor, Task
from medlens.tasks.classification.plan import Plan
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder

__all__ = ["ClassificationPredictor", "ClassificationTask"]

HEADLINE = ("auc", "accuracy", "sensitivity", "specificity", "f1")


class ClassificationPredictor(Predictor):
    """A classification run's networks (one per fold, probabilities averaged)."""

    task = "classification"

    def __init__(self, run: RunFolder) -> None:
        from medlens.tasks.classification.bundle import load_run

        super().__init__(run)
        self.trained = load_run(run.path)

    def predict(self, images):
        """One :class:`~medlens.tasks.classification.bundle.ClassPrediction` per image,
        read as ``medlens predict`` reads files (resized to the run's input, same channels)."""
        from medlens.tasks.classification.bundle import class_predictions, predict_probs
        from medlens.tasks.classification.data import images_to_spec

        t = self.trained
        ids = [str(image.meta.get("path", f"image-{i}")) for i, image in enumerate(images)]
        probs = predict_probs(t.networks, images_to_spec(images, t.spec, ids), t.task)
        return class_predictions(ids, probs, t.class_names, t.metric_task, t.threshold,
                                 t.positive)  # fmt: skip

    def predict_path(self, source: Path, output: Path, *, split: str | None = None) -> str:
        from medlens._atomic import ensure_outside
        from medlens.tasks.classification.bundle import predict_probs, write_predictions
        from medlens.tasks.classification.data import read_inputs

        ensure_outside(output, source)
        t = self.trained
        images = read_inputs(source, t.spec, split=split)
        images.labels = None  # predictions do not need them; evaluate uses them
        probs = predict_probs(t.networks, images.images, t.task)
        write_predictions(output, images, probs, t.class_names, t.metric_task, t.threshold,
                          t.positive)  # fmt: skip
        return f"{len(images)} predictions: {output}"


@register_task
class ClassificationTask(Task):
    """Binary, multi-class, multi-label and ordinal classification of 2D images and volumes."""

    name = "classification"
    summary = "binary, multi-class, multi-label and ordinal classification, 2D and 3D"
    plan_type = Plan
    dataset_kinds = frozenset({"classification", "multilabel", "ordinal"})
    options = MappingProxyType(
        {"train": frozenset({"model", "positive_class"}), "predict": frozenset({"split"})}
    )

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print) -> Plan:
        from medlens.tasks.classification.plan import make_plan
        from medlens.tasks.classification.train import _split_held_out

        train_set, _, _ = _split_held_out(Path(data), 0, True)
        plan = make_plan(train_set.spec, len(train_set), train_set.task)
        return plan.with_overrides(overrides)

    def train(self, data, output, *, plan=None, epochs=None, folds=None, seed=0, resume=False,
              overrides=(), progress=True, log=print, model=None, positive_class=None):  # fmt: skip
        from medlens.models import list_models
        from medlens.tasks.classification.train import train_classification

        if model is not None and model not in list_models(task="classification"):
            known = ", ".join(list_models(task="classification"))
            raise MedlensError(f"--model {model}: not a classification model ({known})")
        return train_classification(data, output, model=model, epochs=epochs, folds=folds,
                                    seed=seed, resume=resume, overrides=overrides,
                                    progress=progress, log=log, positive_class=positive_class,
                                    plan=plan)  # fmt: skip

    def load_predictor(self, run: RunFolder, **options: Any) -> ClassificationPredictor:
        return ClassificationPredictor(run)

    def evaluate(self, run, data, *, split=None, n_boot=1000, progress=True) -> Evaluation:
        from medlens.metrics import evaluate_classification
        from medlens.tasks.classification.bundle import predict_probs
        from medlens.tasks.classification.data import load_labelled, read_inputs

        trained = ClassificationPredictor(run).trained
        data = Path(data)
        if data.suffix.lower() == ".npz":
            images = read_inputs(data, trained.spec, split=split)
        else:
            images = load_labelled(data, size=trained.spec.shape,
                                   presentation=trained.spec.presentation)  # fmt: skip
        if images.labels is None:
            raise MedlensError(f"{data}: no labels to evaluate against")
        probs = predict_probs(trained.networks, images.images, trained.task)
        labels = images.labels
        if trained.metric_task != "multilabel":
            labels = labels.reshape(-1).astype(int)
        result = evaluate_classification(labels, probs, trained.metric_task,
                                         class_names=trained.class_names,
                                         threshold=trained.threshold, n_boot=n_boot,
                                         positive=trained.positive)  # fmt: skip
        result["data"] = str(data)
        result["split"] = split or images.split
        lines = []
        if trained.positive is not None:
            lines.append(f"positive class: {trained.class_names[trained.positive]!r}")
        lines += [f"{name:<12} {_interval(result[name])}" for name in HEADLINE]
        return Evaluation(result, lines)

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None,
                    progress=True):  # fmt: skip
        from medlens.tasks.classification.explaining import explain_job

        return explain_job(predictor.trained, Path(source), split, target, limit)


def _interval(metric: dict) -> str:
    if metric.get("value") is None:
        return "n/a"
    if metric.get("low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f}  (95% CI {metric['low']:.3f} to {metric['high']:.3f})"
