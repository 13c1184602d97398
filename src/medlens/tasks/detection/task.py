"""Detection on the task platform: plan, train, predict, evaluate, export and serve."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, ExportSpec, Prediction, Predictor, Task
from medlens.tasks.detection.plan import DetectionPlan
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder

__all__ = ["BoxPrediction", "DetectionPredictor", "DetectionTask", "write_detections"]


@dataclass
class BoxPrediction(Prediction):
    """The boxes found in one image: corners in the input's pixels (0 at the image's first
    corner, COCO's convention: index coordinates + 0.5) and in world millimetres, with scores
    and class names."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # pixels, corners
    boxes_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # LPS world corners
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: list[str] = field(default_factory=list)
    series: Path | None = None  # the DICOM file or series folder it was predicted from
    series_uid: str | None = None  # the series in ``series``, where that folder holds several

    formats = ("sr",)
    dicom_form = "sr"

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        """``"sr"``: the boxes as a DICOM Structured Report in the source's study,
        ``<folder>/<name>.sr.dcm`` (:func:`medlens.io.dicomsr.write_detection_sr`; ``context``:
        ``name``, ``model_name``, ``model_version``, and ``score_threshold`` to report only the
        boxes scoring at least that); the input must be DICOM."""
        from medlens._atomic import safe_name
        from medlens.io.dicomsr import write_detection_sr

        if fmt not in self.formats:
            raise MedlensError(f"boxes have no {fmt} form (json, sr)")
        if self.series is None:
            raise MedlensError(f"{self.id}: a DICOM Structured Report needs a DICOM input")
        name = safe_name(context.get("name") or self.id, max_length=120)
        return write_detection_sr(
            self.series,
            Path(folder) / f"{name}.sr.dcm",
            boxes=self.boxes,
            boxes_mm=self.boxes_mm,
            scores=self.scores,
            labels=self.labels,
            model_name=context.get("model_name") or "medlens",
            model_version=context.get("model_version") or "unknown",
            series_uid=self.series_uid,
            score_threshold=context.get("score_threshold"),
        )

    @property
    def spatial_dims(self) -> int:
        return self.boxes.shape[1] // 2

    def rows(self) -> list[dict[str, Any]]:
        """One ``detections.csv`` row per box: ``image,label,score,x1,y1,x2,y2`` (plus
        ``z1,z2`` in 3D) in pixels, then the world corners in mm."""
        n = self.spatial_dims
        axes = "xyz"[:n]
        out = []
        for box, mm, score, label in zip(
            self.boxes, self.boxes_mm, self.scores, self.labels, strict=True
        ):
            row: dict[str, Any] = {
                "image": self.id,
                "label": label,
                "score": round(float(score), 5),
            }
            for i, a in enumerate(axes):
                row[f"{a}1"] = round(float(box[i]), 2)
            for i, a in enumerate(axes):
                row[f"{a}2"] = round(float(box[n + i]), 2)
            for i, a in enumerate(axes):
                row[f"{a}1_mm"] = round(float(mm[i]), 3)
                row[f"{a}2_mm"] = round(float(mm[n + i]), 3)
            out.append(row)
        return out

    def row(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return {
            "id": self.id,
            "detections": len(self.labels),
            **{f"count_{k}": v for k, v in sorted(counts.items())},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "detections": [
                {
                    "label": r["label"],
                    "score": r["score"],
                    "box": [v for k, v in r.items() if len(k) == 2 and k[1] in "12"],
                    "box_mm": [v for k, v in r.items() if k.endswith("_mm")],
                }
                for r in self.rows()
            ],
        }


def write_detections(predictions: list[BoxPrediction], output: Path) -> list[Path]:
    """``detections.csv`` and ``detections.json`` of ``predictions`` in ``output``."""
    from medlens._atomic import atomic_write_json, atomic_write_text

    output.mkdir(parents=True, exist_ok=True)
    rows = [r for p in predictions for r in p.rows()]
    n = predictions[0].spatial_dims if predictions else 2
    axes = "xyz"[:n]
    columns = ["image", "label", "score", *(f"{a}1" for a in "xy"), *(f"{a}2" for a in "xy")]
    if n == 3:
        columns = ["image", "label", "score", "x1", "y1", "x2", "y2", "z1", "z2"]
    columns += [f"{a}{e}_mm" for e in "12" for a in axes]
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "detections.csv", buffer.getvalue())
    atomic_write_json(output / "detections.json", {"images": [p.to_json() for p in predictions]})
    return [output / "detections.csv", output / "detections.json"]


class DetectionPredictor(Predictor):
    """A detection run's FCOS network(s), predicting boxes on each input's own grid."""

    task = "detection"

    def __init__(self, run: RunFolder, *, mirror: bool | None = None) -> None:
        from medlens.tasks.detection.predict import load_detection_run

        super().__init__(run)
        self.trained = load_detection_run(run.path)
        self.mirror = mirror

    @property
    def answer_formats(self) -> tuple[str, ...]:
        return BoxPrediction.formats  # a report of boxes on an image or a series: any dims

    def input_spec(self) -> dict[str, Any]:
        plan = self.trained.plan
        return {
            "spatial_dims": plan.spatial_dims,
            "channels": plan.in_channels,
            "modality": plan.modality,
            "target_spacing_mm": plan.target_spacing,
            "patch_size": plan.patch_size,
            "any_size": True,
            "classes": plan.class_names,
        }

    def predict(self, images) -> list[BoxPrediction]:
        from medlens.io.dicom import is_dicom_file
        from medlens.tasks.detection.predict import detect_image

        names = self.trained.plan.class_names
        out = []
        for i, image in enumerate(images):
            name = Path(str(image.meta.get("path", f"image-{i}"))).name
            pixels, world, scores, labels = detect_image(self.trained, image, mirror=self.mirror)
            # a DICOM series (3D), or a DICOM file (2D: series_uid is None for files)
            source, uid = image.meta.get("source"), image.meta.get("series_uid")
            series = source if uid or (source and is_dicom_file(Path(source))) else None
            out.append(
                BoxPrediction(
                    name,
                    pixels + 0.5,
                    world,
                    scores,
                    [names[int(k)] for k in labels],
                    series=Path(series) if series else None,
                    series_uid=uid,
                )
            )
        return out

    def predict_path(self, source: Path, output: Path, *, mirror: bool | None = None) -> str:
        from medlens._atomic import ensure_outside
        from medlens.errors import DatasetError

        if not Path(source).exists():
            raise DatasetError("does not exist", source)
        ensure_outside(output, source)
        if mirror is not None:
            self.mirror = mirror
        predictions = self.predict(self.read(Path(source)))
        write_detections(predictions, Path(output))
        reports = self._structured_reports(predictions, Path(output))
        found = sum(len(p.labels) for p in predictions)
        extra = f" and {len(reports)} DICOM SR" if reports else ""
        return (
            f"{found} boxes in {len(predictions)} images: {Path(output) / 'detections.csv'}{extra}"
        )

    def _structured_reports(self, predictions: list[BoxPrediction], output: Path) -> list[Path]:
        """``<name>.sr.dcm`` beside ``detections.csv`` for each DICOM input (file or series);
        one that cannot be written is a warning (its rows stand)."""
        import warnings

        from medlens.io.discover import file_stem

        context = {"model_name": self.run.path.name, "model_version": self.run.algorithm_version()}
        written = []
        for prediction in predictions:
            if prediction.series is None:
                continue
            try:
                written.append(
                    prediction.encode("sr", output, name=file_stem(prediction.id), **context)
                )
            except (MedlensError, ValueError, AttributeError) as exc:
                warnings.warn(
                    f"{prediction.series}: no DICOM Structured Report ({exc})", stacklevel=3
                )
        return written


@register_task
class DetectionTask(Task):
    """Object detection and lesion localisation, 2D and 3D, planned from the boxes."""

    name = "detection"
    summary = "boxes around objects, 2D and 3D (FCOS, planned from the boxes in millimetres)"
    plan_type = DetectionPlan
    dataset_kinds = frozenset({"detection"})
    options = MappingProxyType(
        {
            "train": frozenset({"fold"}),
            "predict": frozenset({"mirror"}),
            "evaluate": frozenset({"output", "mirror"}),
        }
    )

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print):
        from medlens.data import fingerprint
        from medlens.tasks.detection.data import open_boxes
        from medlens.tasks.detection.plan import box_statistics, make_plan

        dataset = open_boxes(data, overrides=overrides, progress=True)
        plan = make_plan(
            fingerprint(dataset, max_samples=max_samples, progress=True),
            box_statistics(dataset),
            device=device,
            boxes_from_labels=dataset.meta.get("boxes_from_labels"),
        )
        return plan.with_overrides(overrides) if overrides else plan

    def train(
        self,
        data,
        output,
        *,
        plan=None,
        epochs=None,
        folds=None,
        seed=0,
        resume=False,
        overrides=(),
        progress=True,
        log=print,
        fold=None,
    ):
        from medlens.tasks.detection.train import train_detection

        return train_detection(
            data,
            output,
            plan=plan,
            epochs=epochs,
            folds=folds,
            fold=fold,
            seed=seed,
            resume=resume,
            overrides=overrides,
            progress=progress,
            log=log,
        )

    def load_predictor(self, run: RunFolder, **options: Any) -> DetectionPredictor:
        return DetectionPredictor(run, **options)

    def evaluate(
        self, run, data, *, split=None, n_boot=1000, progress=True, output=None, mirror=None
    ) -> Evaluation:
        from medlens.tasks.detection.evaluate import evaluate_detection

        trained = DetectionPredictor(run).trained
        result, files = evaluate_detection(
            trained,
            Path(data),
            split=split,
            output=output,
            n_boot=n_boot,
            mirror=mirror,
            progress=progress,
        )
        ap = result["ap"]
        lines = [
            f"mAP@0.5 {ap['map50']:.4f}  mAP@0.5:0.95 {ap['map50_95']:.4f}  "
            f"FROC CPM {result['froc']['cpm']:.4f}  ({result['n_cases']} images)"
        ]
        if "localisation" in result:
            from medlens.tasks.detection.train import localisation_line

            lines.append(localisation_line(result["localisation"]))
        lines += [f"{k}: {v}" for k, v in files.items()]
        return Evaluation(result, lines, files)

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None, progress=True):
        from medlens.tasks.detection.explaining import explain_job

        if split is not None:
            raise MedlensError("--split is for .npz inputs of classification runs")
        return explain_job(predictor.trained, Path(source), target, limit)

    def export_spec(self, run: RunFolder) -> ExportSpec:
        import torch

        from medlens.tasks.detection.predict import load_detection_run

        t = load_detection_run(run.path)
        plan = t.plan
        outside = {
            "input": {"channels": plan.in_channels, "spatial_dims": plan.spatial_dims},
            "normalisation": dict(plan.normalisation),
            "resampling": {"spacing_mm": plan.target_spacing},
            "output": "(1, P, K + 2n + 1): class logits, face distances in strides, centre-ness",
            "decoding": dict(plan.inference),
            "strides": plan.strides,
            "class_names": plan.class_names,
        }
        example = torch.randn(
            (1, plan.in_channels, *plan.patch_size), generator=torch.Generator().manual_seed(0)
        )
        return ExportSpec(
            t.networks,
            example,
            dynamic_spatial=True,
            outside=outside,
            spatial_divisor=[32] * plan.spatial_dims,
            output="fcos",
        )
