"""Classification on the task platform: plan, train, predict, evaluate and explain."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, ExportSpec, Predictor, Task
from medlens.tasks.classification.plan import Plan
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder

__all__ = ["ClassificationPredictor", "ClassificationTask"]

HEADLINE = ("auc", "accuracy", "sensitivity", "specificity", "f1")


class ClassificationPredictor(Predictor):
    """A classification run's networks (one per fold, probabilities averaged)."""

    task = "classification"
    batches_images = True

    def __init__(self, run: RunFolder) -> None:
        from medlens.tasks.classification.bundle import load_run

        super().__init__(run)
        self.trained = load_run(run.path)

    @property
    def load_options(self):
        return self.trained.spec.load_options

    @property
    def answer_formats(self):
        return ("sr",)  # a DICOM input's Structured Report

    def input_spec(self):
        spec = self.trained.spec
        return {"spatial_dims": spec.spatial_dims, "channels": spec.channels,
                "shape": list(spec.shape), "resized": True,
                "dicom_pixels": "as the viewer shows them for projection X-ray"
                if spec.presentation == "auto" else "modality values"}  # fmt: skip

    def predict(self, images):
        """One :class:`~medlens.tasks.classification.bundle.ClassPrediction` per image,
        read as ``medlens predict`` reads files (resized to the run's input, same channels)."""
        from medlens.tasks.classification.bundle import class_predictions
        from medlens.tasks.classification.data import images_to_spec

        t = self.trained
        ids = [str(image.meta.get("path", f"image-{i}")) for i, image in enumerate(images)]
        probs = t.probabilities(images_to_spec(images, t.spec, ids))
        out = class_predictions(ids, probs, t.class_names, t.metric_task, t.threshold, t.positive)
        for prediction, image in zip(out, images, strict=True):
            # a DICOM input: its SR can be written
            prediction.source = image.meta.get("source")
            prediction.series_uid = image.meta.get("series_uid")
        return out

    def predict_path(self, source: Path, output: Path, *, split: str | None = None,
                     adapt_prior: bool | None = None) -> str:  # fmt: skip
        from medlens._atomic import atomic_write_json, ensure_outside
        from medlens.tasks.classification.bundle import write_predictions
        from medlens.tasks.classification.data import read_inputs

        ensure_outside(output, source)
        t = self.trained
        images = read_inputs(source, t.spec, split=split)
        images.labels = None  # predictions do not need them; evaluate uses them
        probs = t.probabilities(images.images)
        threshold, record = t.threshold, {"rule": t.decision_rule(bool(adapt_prior)),
                                          "temperature": t.temperature}  # fmt: skip
        if adapt_prior:
            probs, record["prior"] = t.adapt(probs)
            threshold = None  # the adapted posteriors' most probable class
        write_predictions(output, images, probs, t.class_names, t.metric_task, threshold,
                          t.positive)  # fmt: skip
        sidecar = decision_path(output)
        atomic_write_json(sidecar, record)
        lines = [
            f"{len(images)} predictions: {output}",
            f"decision: {record['rule']} ({sidecar.name})",
        ]
        reports = self._structured_reports(source, output, images.ids, probs, threshold)
        if reports:
            lines.append(f"{len(reports)} DICOM Structured Reports: {reports[0].parent}")
        if adapt_prior:
            prior = ", ".join(f"{k} {v:.3f}" for k, v in record["prior"]["estimated_prior"].items())
            lines.append(f"class prior estimated on these images (EM): {prior}")
        return "\n".join(lines)

    def _structured_reports(self, source: Path, output: Path, ids, probs, threshold) -> list:
        """One DICOM SR per DICOM input (file, or series for 3D models), in ``<output>_sr/``."""
        from medlens.io.dicom import is_dicom_file
        from medlens.io.discover import discover_inputs
        from medlens.tasks.classification.bundle import class_predictions

        t = self.trained
        if Path(source).is_file() and Path(source).suffix.lower() == ".npz":
            return []
        items = discover_inputs(source, spatial_dims=t.spec.spatial_dims)
        predictions = class_predictions(list(ids), probs, t.class_names, t.metric_task,
                                        threshold, t.positive)  # fmt: skip
        folder, context, written = output.with_name(output.stem + "_sr"), None, []
        for item, prediction in zip(items, predictions, strict=True):
            if item.series_uid is None and not is_dicom_file(item.source):
                continue
            context = context or {"model_name": self.run.path.name,
                                  "model_version": self.run.algorithm_version()}  # fmt: skip
            prediction.source, prediction.series_uid = str(item.source), item.series_uid
            try:
                written.append(prediction.encode("sr", folder, name=item.name, **context))
            except (MedlensError, ValueError, AttributeError) as exc:  # the CSV row stands
                warnings.warn(f"{item.source}: no DICOM Structured Report ({exc})", stacklevel=2)
        return written


@register_task
class ClassificationTask(Task):
    """Binary, multi-class, multi-label and ordinal classification of 2D images and volumes."""

    name = "classification"
    summary = "binary, multi-class, multi-label and ordinal classification, 2D and 3D"
    plan_type = Plan
    dataset_kinds = frozenset({"classification", "multilabel", "ordinal"})
    options = MappingProxyType(
        {
            "train": frozenset({"model", "positive_class", "select"}),
            "predict": frozenset({"split", "adapt_prior"}),
            "evaluate": frozenset({"adapt_prior"}),
        }
    )

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print) -> Plan:
        from medlens.tasks.classification.plan import make_plan
        from medlens.tasks.classification.train import _split_held_out

        train_set, _, _ = _split_held_out(Path(data), 0, True)
        plan = make_plan(train_set.spec, len(train_set), train_set.task)
        return plan.with_overrides(overrides)

    def train(self, data, output, *, plan=None, epochs=None, folds=None, seed=0, resume=False,
              overrides=(), progress=True, log=print, model=None, positive_class=None,
              select=None):  # fmt: skip
        from medlens.models import list_models
        from medlens.tasks.classification.train import train_classification

        if model is not None and model not in list_models(task="classification"):
            known = ", ".join(list_models(task="classification"))
            raise MedlensError(f"--model {model}: not a classification model ({known})")
        return train_classification(data, output, model=model, epochs=epochs, folds=folds,
                                    seed=seed, resume=resume, overrides=overrides,
                                    progress=progress, log=log, positive_class=positive_class,
                                    plan=plan, select=select or "auto")  # fmt: skip

    def load_predictor(self, run: RunFolder, **options: Any) -> ClassificationPredictor:
        return ClassificationPredictor(run)

    def evaluate(self, run, data, *, split=None, n_boot=1000, progress=True,
                 adapt_prior=None) -> Evaluation:  # fmt: skip
        from medlens.metrics import evaluate_classification
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
        probs = trained.probabilities(images.images)
        threshold, adapted = trained.threshold, None
        if adapt_prior:  # the images' labels are not used: only their posteriors
            probs, adapted = trained.adapt(probs)
            threshold = None
        labels = images.labels
        if trained.metric_task != "multilabel":
            labels = labels.reshape(-1).astype(int)
        result = evaluate_classification(labels, probs, trained.metric_task,
                                         class_names=trained.class_names,
                                         threshold=threshold, n_boot=n_boot,
                                         positive=trained.positive)  # fmt: skip
        result["data"] = str(data)
        result["split"] = split or images.split
        result["decision_rule"] = trained.decision_rule(bool(adapt_prior))
        if adapted is not None:
            result["prior_adaptation"] = adapted
        lines = [f"decision: {result['decision_rule']}"]
        if trained.positive is not None:
            lines.append(f"positive class: {trained.class_names[trained.positive]!r}")
        lines += [f"{name:<12} {_interval(result[name])}" for name in HEADLINE]
        return Evaluation(result, lines)

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None,
                    progress=True):  # fmt: skip
        from medlens.tasks.classification.explaining import explain_job

        return explain_job(predictor.trained, Path(source), split, target, limit)

    def export_spec(self, run: RunFolder) -> ExportSpec:
        import torch

        from medlens.tasks.classification.bundle import load_run

        t = load_run(run.path)
        spec = t.spec
        multilabel = t.metric_task == "multilabel"
        outside = {
            "input": {
                "channels": spec.channels,
                "shape": list(spec.shape),
                "reading": "each image resized to shape (linear); colour to grey by the mean "
                "of its channels, grey to colour by repetition; DICOM pixels: "
                + (
                    "as the viewer shows X-ray"
                    if spec.presentation == "auto"
                    else "modality values"
                ),
                "scaling": "8-bit values divided by 255 (images that are not 8-bit: scaled to "
                "0..255 by their own range first)"
                if spec.uint8
                else "values as read",
            },
            "normalisation": "inside the graph: (x - mean) / std per channel",
            "test_time_flips": list(t.info.get("tta_flips") or []),
            "probabilities": ("sigmoid of each logit" if multilabel else "softmax of the logits")
            + ", calibrated (temperature, class biases), averaged over the flips and folds",
            "temperature": t.temperature,
            "bias": t.info.get("bias"),
            "classes": t.class_names,
            "threshold": t.threshold,
            "decision": t.decision_rule(),
        }
        example = torch.rand(
            (1, spec.channels, *spec.shape), generator=torch.Generator().manual_seed(0)
        )
        return ExportSpec(t.networks, example, dynamic_spatial=False, outside=outside)


def _interval(metric: dict) -> str:
    if metric.get("value") is None:
        return "n/a"
    if metric.get("low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f}  (95% CI {metric['low']:.3f} to {metric['high']:.3f})"


def decision_path(output: Path) -> Path:
    """Where ``predict`` records its decision rule: ``preds.csv`` -> ``preds.decision.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.decision.json")
