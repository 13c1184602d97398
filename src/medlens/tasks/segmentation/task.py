"""Segmentation on the task platform: plan, train, predict, evaluate and explain."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, ExportSpec, Predictor, Task
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder
from medlens.tasks.segmentation.plan import SegmentationPlan

__all__ = ["SegmentationPredictor", "SegmentationTask"]

#: ``--model`` names for segmentation: the plan's U-Net with a plain or a residual encoder.
ENCODERS = {"unet": "plain", "resunet": "residual"}


class SegmentationPredictor(Predictor):
    """A segmentation run's U-Net(s), predicting label maps on each input's own grid."""

    task = "segmentation"

    def __init__(self, run: RunFolder, *, mirror: bool | None = None) -> None:
        from medlens.tasks.segmentation.predict import load_segmentation_run

        super().__init__(run)
        self.trained = load_segmentation_run(run.path)
        self.mirror = mirror

    @property
    def answer_formats(self):
        from medlens.tasks.segmentation.predict import MaskPrediction

        # a PNG holds a 2D mask; a DICOM SEG needs a series (3D)
        unfit = "seg" if self.trained.plan.spatial_dims == 2 else "png"
        return tuple(f for f in MaskPrediction.formats if f != unfit)

    def input_spec(self):
        plan = self.trained.plan
        return {"spatial_dims": plan.spatial_dims, "channels": plan.in_channels,
                "modality": plan.modality, "target_spacing_mm": plan.target_spacing,
                "patch_size": plan.patch_size, "any_size": True,
                "training_range": plan.training_range}  # fmt: skip

    def predict(self, images):
        """One :class:`~medlens.tasks.segmentation.predict.MaskPrediction` per image."""
        from medlens.io.discover import file_stem
        from medlens.tasks.segmentation.predict import MaskPrediction, predict_image

        out = []
        for i, image in enumerate(images):
            name = Path(str(image.meta.get("path", f"image-{i}"))).name
            labels = predict_image(self.trained, image, mirror=self.mirror)
            series = image.meta.get("source") if image.meta.get("series_uid") else None
            out.append(MaskPrediction(name, labels, file_stem(name),
                                      series=Path(series) if series else None,
                                      label_values=self.trained.plan.label_values,
                                      class_names=self.info.get("class_names")))  # fmt: skip
        return out

    def predict_path(self, source: Path, output: Path, *, mirror: bool | None = None) -> str:
        from medlens.tasks.segmentation.predict import predict_inputs

        chosen = self.mirror if mirror is None else mirror
        written = predict_inputs(self.trained, source, output, mirror=chosen)
        segs = sum(p.name.endswith(".seg.dcm") for p in written)
        extra = f" and {segs} DICOM SEG" if segs else ""
        return f"{len(written) - segs} masks{extra}: {output}"


@register_task
class SegmentationTask(Task):
    """Semantic segmentation of 2D images and volumes, self-configured from the data."""

    name = "segmentation"
    summary = "semantic segmentation, 2D and 3D, planned from the dataset (nnU-Net's rules)"
    plan_type = SegmentationPlan
    dataset_kinds = frozenset({"segmentation"})
    options = MappingProxyType(
        {
            "train": frozenset({"model", "fold"}),
            "predict": frozenset({"mirror"}),
            "evaluate": frozenset({"output", "mirror", "tolerance_mm"}),
        }
    )

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print):
        from medlens.data import fingerprint, open_dataset
        from medlens.tasks.segmentation.plan import PlanError, make_plan

        if device not in ("cpu", "gpu"):
            raise PlanError(f"--device {device}: choose cpu or gpu")
        dataset = open_dataset(data)
        plan = make_plan(fingerprint(dataset, max_samples=max_samples, progress=True),
                         device=device)  # fmt: skip
        return plan.with_overrides(overrides) if overrides else plan

    def train(self, data, output, *, plan=None, epochs=None, folds=None, seed=0, resume=False,
              overrides=(), progress=True, log=print, model=None, fold=None):  # fmt: skip
        from medlens.tasks.segmentation.train import train_segmentation

        if model is not None:
            if model not in ENCODERS:
                raise MedlensError(f"--model {model}: not a segmentation model (unet, resunet)")
            overrides = [f"network.encoder={ENCODERS[model]}", *(overrides or [])]
        return train_segmentation(data, output, plan=plan, epochs=epochs, folds=folds, fold=fold,
                                  seed=seed, resume=resume, overrides=overrides, progress=progress,
                                  log=log)  # fmt: skip

    def load_predictor(self, run: RunFolder, **options: Any) -> SegmentationPredictor:
        return SegmentationPredictor(run, **options)

    def evaluate(self, run, data, *, split=None, n_boot=1000, progress=True, output=None,
                 mirror=None, tolerance_mm=None) -> Evaluation:  # fmt: skip
        from medlens.tasks.segmentation.evaluate import evaluate_segmentation, format_table

        trained = SegmentationPredictor(run).trained  # evaluate predicts as predict does
        result = evaluate_segmentation(trained, data, split=split, output=output, n_boot=n_boot,
                                       tolerance_mm=1.0 if tolerance_mm is None else tolerance_mm,
                                       mirror=mirror, progress=progress)  # fmt: skip
        files = {k: Path(v) for k, v in result.pop("files").items()}
        lines = [format_table(result), f"metrics: {files['metrics']}",
                 f"per case: {files['per_case']}", f"report: {files['report']}"]  # fmt: skip
        return Evaluation(result, lines, files)

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None,
                    progress=True):  # fmt: skip
        from medlens.tasks.segmentation.explaining import explain_job

        if split is not None:
            raise MedlensError("--split is for .npz inputs of classification runs")
        return explain_job(predictor.trained, Path(source), target, limit)

    def export_spec(self, run: RunFolder) -> ExportSpec:
        import torch

        from medlens.tasks.segmentation.plan import inference_settings
        from medlens.tasks.segmentation.predict import load_segmentation_run

        t = load_segmentation_run(run.path)
        plan = t.plan
        grid = (
            {"scale_per_axis": plan.target_scale}
            if plan.target_scale is not None
            else {"spacing_mm": plan.target_spacing}
        )
        outside = {
            "input": {
                "channels": plan.in_channels,
                "spatial_dims": plan.spatial_dims,
                "axes": "array order (z, y, x) / (y, x)",
            },
            "normalisation": dict(plan.normalisation),
            "resampling": {
                **grid,
                "image": "linear, same origin and direction",
                "back": "probabilities resampled linearly onto the input's grid, "
                "then the most probable label",
            },
            "sliding_window": {
                "window": list(plan.patch_size),
                "overlap": 0.5,
                "weighting": "Gaussian importance (sigma 1/8 of the window)",
                **inference_settings(plan),
            },
            "ensemble": "softmax probabilities averaged over the folds",
            "label_values": list(plan.label_values),
            "postprocessing": t.postprocessing,
            "preprocessing_file": "preprocessing.json of the run",
        }
        example = torch.randn((1, plan.in_channels, *plan.patch_size),
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
        return ExportSpec(t.networks, example, dynamic_spatial=True, outside=outside,
                          spatial_divisor=list(plan.divisor))  # fmt: skip
