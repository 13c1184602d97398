"""Image sequences on the task platform: ``sequence-classification``, ``sequence-regression`` and
``sequence-segmentation`` (per-frame segmentation with a time axis).

Each learns from a cine folder (``cines/`` of 4D NIfTI or videos, ``cases.csv`` with a ``case``
column and the targets, ``labels/`` of label maps for segmentation: what ``medlens datasets
simulate-cine`` writes; :mod:`medlens.tasks.sequences.data`), and predicts from cine folders,
DICOM cine series, 4D NIfTI and video files (:func:`~medlens.tasks.sequences.predict.
read_sequences`). Plans: :mod:`~medlens.tasks.sequences.plan`; training:
:mod:`~medlens.tasks.sequences.train`; evaluation: :mod:`~medlens.tasks.sequences.evaluate`.

For explanations and the ONNX export the networks take ``(B, C, T, H, W)`` (:class:`TimeFirst`):
a sequence is explained as a volume whose third axis is time, so Grad-CAM shows which frames,
and where in them, moved the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import MedlensError
from medlens.tasks.base import Evaluation, ExportSpec, Predictor, Task
from medlens.tasks.registry import register_task
from medlens.tasks.run_folder import RunFolder
from medlens.tasks.sequences.plan import SequencePlan

__all__ = ["SequencePredictor", "TimeFirst"]


class TimeFirst(nn.Module):
    """A sequence network taking ``(B, C, T, *S)`` (time as the first spatial axis), answering
    what it answers (a segmentation's logits as ``(B, K, T, *S)``)."""

    def __init__(self, network: nn.Module, segmentation: bool) -> None:
        super().__init__()
        self.network, self.segmentation = network, segmentation

    @property
    def explain_layer(self) -> nn.Module:
        return self.network.explain_layer

    feature_layer = explain_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x.transpose(1, 2))
        return out.transpose(1, 2) if self.segmentation else out


class SequencePredictor(Predictor):
    """A sequence run's networks over cines (module notes)."""

    def __init__(self, run: RunFolder) -> None:
        from medlens.tasks.sequences.train import load_sequence_run

        super().__init__(run)
        networks, self.spec = load_sequence_run(run.path)
        segmentation = self.spec["kind"] == "segmentation"
        self.trained = _Trained([TimeFirst(n, segmentation).eval() for n in networks])
        self.task = str(run.info["task"])

    @property
    def answer_formats(self) -> tuple[str, ...]:
        return ("nifti",) if self.spec["kind"] == "segmentation" else ()

    def input_spec(self) -> dict[str, Any]:
        spec = self.spec
        out = {"spatial_dims": 2, "channels": 1, "time_axis": True,
               "min_frames": int(spec.get("min_frames", 2))}  # fmt: skip
        if spec["kind"] != "segmentation":
            out.update(slices=spec["slices"], frames=spec.get("frames"), size=spec.get("size"))
        return out

    def read(self, source: Path) -> list[Any]:
        from medlens.tasks.sequences.predict import read_sequences

        return read_sequences(source)

    def predict(self, images) -> list[Any]:
        from medlens.tasks.sequences.predict import predictions

        images = list(images)
        if getattr(self, "backend", "torch") == "onnx" and self.spec["kind"] == "segmentation":
            frames = json.loads((self.run.path / "onnx" / "export.json").read_text())[
                "example_shape"][2]  # fmt: skip
            for image in images:
                if image.array.shape[0] != frames:
                    raise MedlensError(f"{image.meta.get('path')}: {image.array.shape[0]} frames; "
                                       f"this run's ONNX export takes {frames} (use --backend "
                                       "torch)")  # fmt: skip
        return predictions(self.networks, self.spec, images)

    def predict_path(self, source: Path, output: Path, **options: Any) -> str:
        from medlens._atomic import atomic_write_rows, ensure_outside

        output = Path(output)
        ensure_outside(output, source)
        found = self.predict(self.read(Path(source)))
        for p in found:
            p.save(output)
        atomic_write_rows(output / "predictions.csv", [p.row() for p in found])
        return f"{len(found)} sequence(s) predicted: {output}"


class _Trained:
    def __init__(self, networks: list[nn.Module]) -> None:
        self.networks = networks


class _SequenceTask(Task):
    """What the three sequence tasks share; ``kind`` names the plan's kind."""

    kind: str
    plan_type = SequencePlan
    options = MappingProxyType({"train": frozenset({"column", "model"}),
                                "evaluate": frozenset({"output"})})  # fmt: skip

    def plan(self, data, *, device="cpu", max_samples=None, overrides=(), log=print):
        from medlens.tasks.sequences.data import CineSet
        from medlens.tasks.sequences.plan import make_plan

        columns = [o.split("=", 1)[1] for o in overrides if o.startswith("column=")]
        rest = [o for o in overrides if not o.startswith("column=")]
        plan = make_plan(self.kind, CineSet(Path(data)), columns[-1] if columns else None)
        return plan.with_overrides(rest) if rest else plan

    def train(self, data, output, *, plan=None, epochs=None, folds=None, seed=0, resume=False,
              overrides=(), progress=True, log=print, column=None, model=None):  # fmt: skip
        from medlens.tasks.sequences.train import train_sequence

        if model is not None:  # a network of the zoo for this kind: the plan says which
            overrides = [*overrides, f"network.name={model}"]
        if folds not in (None, 1):
            raise MedlensError(f"--folds {folds}: a sequence run trains one split (folds 1)")
        return train_sequence(data, output, kind=self.kind, plan=plan, epochs=epochs, seed=seed,
                              resume=resume, overrides=overrides, column=column,
                              progress=progress, log=log)  # fmt: skip

    def load_predictor(self, run: RunFolder, **options: Any) -> SequencePredictor:
        return SequencePredictor(run.require(self.name))

    def evaluate(self, run, data, *, split=None, n_boot=1000, progress=True,
                 output=None) -> Evaluation:  # fmt: skip
        from medlens.tasks.sequences.evaluate import evaluate_sequences, format_lines

        predictor = self.load_predictor(run)
        output = Path(output) if output is not None else run.path / "evaluation"
        result = evaluate_sequences(predictor.networks, predictor.spec, run.path, Path(data),
                                    split=split, n_boot=n_boot, output=output,
                                    progress=progress)  # fmt: skip
        files = {k: Path(v) for k, v in result["files"].items()}
        return Evaluation(result, format_lines(result), files)

    def explain_job(self, predictor, source, *, split=None, target=None, limit=None,
                    progress=True):  # fmt: skip
        from medlens.explain import ExplainJob
        from medlens.explain.methods import RegionScore
        from medlens.tasks.sequences.data import check_length, fit, slice_inputs
        from medlens.tasks.sequences.train import divisor

        if split is not None:
            raise MedlensError("--split does not apply to a sequence run: give the cines")
        spec, wrapped = predictor.spec, predictor.networks[0]
        segmentation = spec["kind"] == "segmentation"
        if not isinstance(wrapped, TimeFirst):
            raise MedlensError("explanations need the run's torch networks (--backend torch)")
        ids, inputs, models, targets, names = [], [], [], [], []
        for image in predictor.read(Path(source))[: limit or None]:
            cine = np.asarray(image.array, np.float32)
            check_length(cine, spec, image.meta.get("source"))
            ids.append(str(image.meta["path"]))
            if segmentation:
                x = slice_inputs(cine, spec, divisor(spec))[cine.shape[1] // 2].transpose(0, 1)
                with torch.no_grad():
                    region = wrapped(x[None])[0].argmax(0) == 1
                models.append(RegionScore(wrapped, 1, region[None]))
                targets.append(0)
                names.append("cavity")
            else:
                x = torch.from_numpy(fit(cine, spec)).transpose(0, 1)
                models.append(wrapped)
                if spec["kind"] == "classification":
                    k = _target_class(target, spec["classes"], wrapped, x)
                    targets.append(k)
                    names.append(spec["classes"][k])
                else:
                    targets.append(0)
                    names.append(spec["column"])
            inputs.append(x)
        if not ids:
            raise MedlensError("no sequences to explain", source)
        notes = ["Sequences are explained as volumes whose third axis is time (frames): the "
                 "maps show which frames, and where in them, moved the answer."]  # fmt: skip
        if segmentation:
            notes.append(
                "Segmentation: the score explained is the mean logit of the label "
                "inside the predicted region over the middle slice's whole cycle."
            )
        return ExplainJob(ids, inputs, models, torch.tensor(targets), names,
                          [x.numpy() for x in inputs], None, notes, self.name)  # fmt: skip

    def export_spec(self, run: RunFolder) -> ExportSpec:
        from medlens.tasks.sequences.train import divisor

        predictor = self.load_predictor(run)
        spec = predictor.spec
        gen = torch.Generator().manual_seed(0)
        segmentation = spec["kind"] == "segmentation"
        networks = predictor.networks
        reading = ("each cine's minimum to 0 and 99.5th percentile to 1 (preprocessing.json); "
                   "the slices as channels (padded with zeros or cut)")  # fmt: skip
        if segmentation:
            frames, d = int(spec.get("phases") or 8), divisor(spec)
            example = torch.rand(2, 1, frames, 2 * d, 2 * d, generator=gen)
            outside = {"input": "one slice's sequence (batch, 1, frames, y, x) scaled as the whole "
                       "cine (its minimum to 0, 99.5th percentile to 1), y and x padded to "
                       f"multiples of {d}", "output": "logits (batch, classes, frames, y, x); "
                       "argmax per frame", "frames": f"{frames}: the recurrence over time is "
                       "unrolled for this many frames (the training cines' median)"}  # fmt: skip
            return ExportSpec(networks, example, dynamic_spatial=True, outside=outside,
                              spatial_divisor=[0, d, d], output="logits")  # fmt: skip
        shape = (2, spec["slices"], spec["frames"] or 16, *(spec["size"] or [64, 64]))
        outside = {"input": "(batch, slices, frames, y, x): " + reading + f"; {spec['frames']} "
                   "frames sampled evenly over the sequence, each resized to "
                   f"{spec['size']} (bilinear, antialiased)",
                   "output": ("logits; softmax for the probabilities of "
                              f"{spec['classes']}" if spec["kind"] == "classification" else
                              f"standardised {spec['column']}: times {spec.get('scale')}, plus "
                              f"{spec.get('offset')}")}  # fmt: skip
        return ExportSpec(networks, torch.rand(*shape, generator=gen), dynamic_spatial=False,
                          outside=outside)  # fmt: skip


def _target_class(target, classes: list[str], model: nn.Module, x: torch.Tensor) -> int:
    """The class to explain: ``--target`` (a name or index), else the predicted one."""
    from medlens.tasks.explaining import class_index

    if target is not None:
        return class_index(target, classes)
    with torch.no_grad():
        return int(model(x[None])[0].argmax())


@register_task
class SequenceClassificationTask(_SequenceTask):
    """A class per cine, echo loop or video (CNN per frame, GRU or LSTM over frames)."""

    name = "sequence-classification"
    summary = "a class per image sequence (cine MRI, echo, video): CNN + GRU/LSTM"
    kind = "classification"


@register_task
class SequenceRegressionTask(_SequenceTask):
    """A number per cine (EF), echo loop or video (CNN per frame, GRU or LSTM over frames)."""

    name = "sequence-regression"
    summary = "a value per image sequence (EF from cine MRI or echo): CNN + GRU/LSTM"
    kind = "regression"


@register_task
class SequenceSegmentationTask(_SequenceTask):
    """Label maps in every frame of every slice, with temporal context (ConvGRU U-Net)."""

    name = "sequence-segmentation"
    summary = "per-frame segmentation of cines with temporal context (ConvGRU/LSTM U-Net)"
    kind = "segmentation"
