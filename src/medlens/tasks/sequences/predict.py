"""Predicting with a sequence run: reading sequences where they come from, the networks'
outputs, and the results as rows, JSON and files.

:func:`read_sequences` finds the sequences under a path: a cine folder (``cines/`` and
``cases.csv``), one file (4D NIfTI, MP4/AVI/MOV/MKV/WebM video, a multi-frame DICOM), or a folder
of DICOM cine series (one sequence per series: slices grouped by position, phases by trigger
time) and sequence files. Each comes back as a cine :class:`~medlens.image.Image`
``(time, slice, y, x)`` whose ``meta["path"]`` names it.

A classification's prediction is its class and probabilities (averaged over the folds), a
regression's its value; a segmentation's is the label map of every frame and slice (a 4D NIfTI
on the cine's grid) with the volumes and EF measured from it where the cine is a stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medlens.errors import DatasetError
from medlens.image import Image
from medlens.tasks.base import Prediction
from medlens.tasks.sequences.data import _SUFFIXES, CineSet, as_cine, check_length

__all__ = ["SequenceMasks", "SequenceValue", "predict_ensemble", "read_sequences"]


def read_sequences(source: str | Path) -> list[Image]:
    """The sequences under ``source`` (module notes), each a cine image named in its meta."""
    from medlens.io import load_image
    from medlens.io.discover import file_stem

    source = Path(source)
    if not source.exists():
        raise DatasetError("does not exist", source)
    if source.is_dir() and (source / "cases.csv").is_file() and (source / "cines").is_dir():
        cines = CineSet(source)
        found = [(case, path, None) for case, path in zip(cines.ids, cines.paths, strict=True)]
    elif source.is_file():
        found = [(file_stem(source.name), source, None)]
    else:
        from medlens.io.dicom import is_dicom_file, list_series

        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        found = [(file_stem(p.name), p, None) for p in files if p.name.lower().endswith(_SUFFIXES)]
        if any(is_dicom_file(p) for p in source.rglob("*") if p.is_file()):
            series = list_series(source)
            for s in series:
                name = s.uid if len(series) > 1 else source.name
                found.append((name, source, s.uid if len(series) > 1 else None))
        if not found:
            raise DatasetError("no sequences (cine folder, DICOM cine series, 4D NIfTI or "
                               "video) in it", source)  # fmt: skip
    images = []
    for name, path, uid in found:
        image = as_cine(load_image(path, series_uid=uid) if uid else load_image(path), path)
        image.meta.update(path=name, source=str(path), series_uid=uid)
        images.append(image)
    return images


def predict_ensemble(networks, spec: dict[str, Any], cine: np.ndarray) -> np.ndarray:
    """The folds' outputs of one cine ``(t, z, y, x)``: mean probabilities or values; the first
    fold's label maps (a segmentation run trains one fold). ``networks`` take ``(B, C, T, H, W)``
    (a predictor's: :class:`~medlens.tasks.sequences.task.TimeFirst`, or ONNX sessions)."""
    from medlens.tasks.sequences.train import predict_cine

    if spec["kind"] == "segmentation":
        return predict_cine(networks[0], spec, cine, time_first=True)
    return np.mean([predict_cine(n, spec, cine, time_first=True) for n in networks], axis=0)


@dataclass
class SequenceValue(Prediction):
    """A cine's class (with probabilities) or value."""

    kind: str = "regression"
    column: str | None = None
    value: float | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    frames: int = 0

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id}
        if self.kind == "classification":
            row["label"] = self.label
            row.update({f"p_{k}": round(v, 6) for k, v in (self.probabilities or {}).items()})
        else:
            row[self.column or "value"] = round(float(self.value or 0.0), 4)
        return {**row, "frames": self.frames}

    def to_json(self) -> dict[str, Any]:
        out = self.row()
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        return out


@dataclass
class SequenceMasks(Prediction):
    """A cine's label maps ``(t, z, y, x)`` on its grid, and what was measured from them."""

    labels: Image | None = None
    measured: dict[str, Any] | None = None

    formats: ClassVar[tuple[str, ...]] = ("nifti",)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, **(self.measured or {})}

    def save(self, folder: Path) -> list[Path]:
        return [self.encode("nifti", folder)]

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        from medlens.io import save_image

        if fmt != "nifti":
            return super().encode(fmt, folder, **context)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return save_image(self.labels, folder / f"{self.id}.nii.gz")


def predictions(networks, spec: dict[str, Any], images: list[Image]) -> list[Prediction]:
    """One prediction per cine image (module notes)."""
    from medlens.image import Role
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    out: list[Prediction] = []
    for k, image in enumerate(images):
        name = str(image.meta.get("path", f"sequence-{k}"))
        cine = as_cine(image, name)
        array = np.asarray(cine.array, np.float32)
        check_length(array, spec, name)
        result = predict_ensemble(networks, spec, array)
        if spec["kind"] == "classification":
            probs = {c: float(p) for c, p in zip(spec["classes"], result, strict=True)}
            out.append(SequenceValue(name, kind="classification", label=max(probs, key=probs.get),
                                     probabilities=probs, frames=len(array)))  # fmt: skip
        elif spec["kind"] == "regression":
            out.append(SequenceValue(name, column=spec["column"], value=float(result[0]),
                                     frames=len(array)))  # fmt: skip
        else:
            measured: dict[str, Any] = {"frames": len(array), "slices": array.shape[1]}
            volumes = volume_curve(cavity_areas(result, cine.spacing[:2]), float(cine.spacing[2]))
            if array.shape[1] > 1 and volumes.max() > 0:
                found = cardiac_indices(volumes)
                measured.update({k: round(float(found[k]), 3) for k in
                                 ("edv_ml", "esv_ml", "sv_ml", "ef_percent")})  # fmt: skip
                measured.update(ed_phase=int(found["ed_phase"]), es_phase=int(found["es_phase"]))
            labels = cine.with_array(result, role=Role.LABEL)
            out.append(SequenceMasks(name, labels=labels, measured=measured))
    return out
