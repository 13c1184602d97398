"""Segmentation prediction: whole images in, label maps on the input's own grid out.

Each image is brought to the plan's grid as in training, predicted by sliding window (Gaussian
blending, optionally mirrored), and its class probabilities (not labels) are resampled back onto
the input's original grid before the argmax, so boundaries stay smooth at any resolution change.
Outputs are named after the input: ``case.png`` -> ``case.png`` (2D), ``ct.nii.gz`` or a DICOM
series folder ``ct/`` -> ``ct.nii.gz`` (3D), with the label values used in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, MedlensError
from medlens.image import Image, Role
from medlens.tasks.base import Prediction
from medlens.tasks.run_folder import RunFolder
from medlens.tasks.segmentation.plan import SegmentationPlan

__all__ = [
    "MaskPrediction",
    "SegmentationRun",
    "load_segmentation_run",
    "predict_image",
    "predict_images",
    "predict_inputs",
]


class SegmentationRun:
    """A finished segmentation run: its plan, its network(s) (one per fold, ensembled) and the
    postprocessing rules decided on validation (``None``: none)."""

    def __init__(
        self,
        path: Path,
        info: dict[str, Any],
        plan: SegmentationPlan,
        networks,
        postprocessing: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.info, self.plan, self.networks = path, info, plan, networks
        self.postprocessing = postprocessing


def load_segmentation_run(path: str | Path) -> SegmentationRun:
    """A finished segmentation run folder: plan, one network per fold, postprocessing."""
    from medlens.tasks.segmentation.network import build_network

    folder = RunFolder(path).require("segmentation")
    plan = SegmentationPlan.load(folder.path / "plan.json")
    networks = folder.load_networks(lambda: build_network(plan))
    return SegmentationRun(folder.path, folder.info, plan, networks,
                           folder.read("postprocessing.json"))  # fmt: skip


def mirror_default(plan: SegmentationPlan) -> bool:
    """Mirroring test-time augmentation by default, as the plan's ``inference.mirror`` says: on
    for 2D models (4 passes per window, and on HC18 it adds 0.001 Dice) and for 3D ones whose
    median image is at most 1.5x the patch per axis (the hippocampus: +0.003 Dice), off for
    larger 3D ones, where its 8 passes per window cost a CPU too much. Plans without the
    setting: 2D only."""
    from medlens.tasks.segmentation.plan import inference_settings

    return bool(inference_settings(plan)["mirror"])


def predict_image(
    run: SegmentationRun, image: Image, *, mirror: bool | None = None, postprocess: bool = True
) -> Image:
    """The label map of ``image`` on ``image``'s own grid, with the run's postprocessing
    (largest component, hole filling, ellipse: whatever validation chose) unless
    ``postprocess=False``; ``mirror=None`` follows :func:`mirror_default`."""
    return predict_images(run, [image], mirror=mirror, postprocess=postprocess)[0]


def predict_images(
    run: SegmentationRun,
    images: Sequence[Image],
    *,
    mirror: bool | None = None,
    postprocess: bool = True,
    chunk: int = 16,
    precision: str | None = None,
) -> list[Image]:
    """:func:`predict_image` of several images; those of one shape on the plan's grid (the
    frames of a cine) go through the network ``chunk`` at a time (``precision``: see
    :func:`~medlens.tasks.segmentation.network.predict_cases`)."""
    from medlens.data.dataset import Sample
    from medlens.tasks.segmentation.data import preprocess_case
    from medlens.tasks.segmentation.network import predict_cases

    plan = run.plan
    mirror = mirror_default(plan) if mirror is None else bool(mirror)
    images = [_squeeze_2d(image, plan.spatial_dims) for image in images]
    cases = [preprocess_case(Sample(image=im, id=str(im.meta.get("path", "image"))), plan).image
             for im in images]  # fmt: skip
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(tuple(case.shape), []).append(i)
    out: list[Image | None] = [None] * len(images)
    for members in groups.values():
        for start in range(0, len(members), max(1, chunk)):
            part = members[start : start + max(1, chunk)]
            probs = predict_cases(run.networks, np.stack([cases[i] for i in part]), plan,
                                  mirror=mirror, precision=precision)  # fmt: skip
            for i, p in zip(part, probs, strict=True):
                out[i] = _label_map(run, images[i], p, postprocess)
    return out  # type: ignore[return-value]


def _label_map(run: SegmentationRun, image: Image, probs: np.ndarray, postprocess: bool) -> Image:
    """Probabilities on the plan's grid to the label map on the image's own grid."""
    from medlens.geometry import resample

    plan = run.plan
    spatial = image.with_array(np.zeros(image.spatial_shape, np.float32), leading=())
    target = plan.grid_spacing(image.spacing)
    grid = Image(
        probs.astype(np.float32),
        spacing=target,
        origin=image.origin,
        direction=image.direction,
        leading=("channel",),
    )
    if tuple(probs.shape[1:]) != tuple(image.spatial_shape) or not np.allclose(
        image.spacing, target, rtol=1e-3
    ):
        probs = resample(grid, like=spatial).array
    values = np.asarray(plan.label_values)
    labels = values[np.argmax(probs, axis=0)].astype(np.uint8 if values.max() < 256 else np.int16)
    if postprocess and run.postprocessing:
        from medlens.tasks.segmentation.postprocess import apply_postprocessing

        labels = apply_postprocessing(labels, run.postprocessing)
    _warn_outside_range(plan, image, labels)
    return spatial.with_array(labels, role=Role.LABEL)


def _warn_outside_range(plan: SegmentationPlan, image: Image, labels: np.ndarray) -> None:
    """A warning when the image, or what was found in it, is unlike every training image."""
    import warnings

    from medlens.tasks.segmentation.plan import outside_training_range

    found = np.argwhere(labels > 0)
    extent = voxels = None
    if found.size:
        voxels = (found.max(axis=0) - found.min(axis=0) + 1)[::-1]  # index order
        extent = [float(v) * float(s) for v, s in zip(voxels, image.spacing, strict=True)]
    spacing = None if image.meta.get("spacing_known") is False else image.spacing
    problem = outside_training_range(plan, spacing, extent, extent_voxels=voxels)
    if problem:
        where = image.meta.get("path", "image")
        warnings.warn(f"{where}: {problem}; the segmentation may be less reliable", stacklevel=3)


def _squeeze_2d(image: Image, dims: int) -> Image:
    if image.spatial_dims == dims:
        return image
    if dims == 2 and image.spatial_dims == 3 and image.spatial_shape[0] == 1:
        array = image.array[..., 0, :, :]
        direction, origin = np.asarray(image.direction)[:2, :2], tuple(image.origin[:2])
        if abs(np.linalg.det(direction)) < 1e-6:  # a sagittal or coronal slice: its own plane
            direction, origin = np.eye(2), (0.0, 0.0)
        return Image(array, spacing=tuple(image.spacing[:2]), origin=origin, direction=direction,
                     modality=image.modality, leading=image.leading,
                     meta=dict(image.meta))  # fmt: skip
    raise MedlensError(
        f"{image.meta.get('path', 'image')}: a {image.spatial_dims}D image for a {dims}D model"
    )


@dataclass
class MaskPrediction(Prediction):
    """A label map on its input's grid; it writes itself as ``<name>.png`` (2D) or
    ``<name>.nii.gz`` (3D), and a DICOM Segmentation beside it for a DICOM series input."""

    labels: Image
    name: str = ""
    series: Path | None = None  # the DICOM series folder it was predicted from
    label_values: list[int] | None = None
    class_names: list[str] | None = None

    def _counts(self) -> list[tuple[int, int]]:
        """``(label value, voxels)`` of every label present but background."""
        values, counts = np.unique(np.asarray(self.labels.array), return_counts=True)
        return [(v, c) for v, c in zip(values.tolist(), counts.tolist(), strict=True) if v != 0]

    def row(self) -> dict[str, Any]:
        voxel = float(np.prod(self.labels.spacing))
        row: dict[str, Any] = {"id": self.id}
        for value, count in self._counts():
            row[f"volume_label{value}"] = count * voxel
        return row

    formats = ("nifti", "png", "seg")
    dicom_form = "seg"

    def to_json(self) -> dict[str, Any]:
        """Shape, spacing and, per class present, its voxels and volume (mm^3, or pixels^2
        scaled by the spacing in 2D: mm^2)."""
        names = dict(zip(self.label_values or [], self.class_names or [], strict=False))
        voxel = float(np.prod(self.labels.spacing))
        unit = "volume_mm3" if self.labels.spatial_dims == 3 else "area_mm2"
        return {
            "id": self.id,
            "shape": list(self.labels.spatial_shape),
            "spacing_mm": [float(x) for x in self.labels.spacing],
            "labels": {
                names.get(int(v), str(int(v))): {
                    "value": int(v),
                    "voxels": int(c),
                    unit: round(c * voxel, 3),
                }
                for v, c in self._counts()
            },
        }

    def encode(self, fmt: str, folder: Path, **context: Any) -> Path:
        from medlens.io import save_image

        if fmt == "png" and self.labels.spatial_dims != 2:
            raise MedlensError("a 3D mask has no png form: ask for nifti or json")
        if fmt not in self.formats:
            raise MedlensError(f"a mask has no {fmt} form (json, nifti, png, seg)")
        name = Path(context.get("name") or self.name or self.id).name
        if fmt == "seg":
            model = context.get("model_name", "medlens")
            return self._seg(Path(folder) / f"{name}.seg.dcm", model, context.get("model_version"))
        suffix = ".png" if fmt == "png" else ".nii.gz"
        return save_image(self.labels, Path(folder) / f"{name}{suffix}")

    def save(self, folder: Path) -> list[Path]:
        from medlens.io import save_image

        suffix = ".png" if self.labels.spatial_dims == 2 else ".nii.gz"
        target = folder / f"{self.name or self.id}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        written = [save_image(self.labels, target)]
        if self.labels.spatial_dims == 3 and self.series is not None:
            written.append(self._seg(folder / f"{self.name or self.id}.seg.dcm"))
        return written

    def _seg(self, target: Path, model_name: str = "medlens", version: str | None = None) -> Path:
        """The mask as a DICOM SEG referencing its source series (a 3D DICOM input only)."""
        from medlens.io.dicomseg import write_dicom_seg

        if self.labels.spatial_dims != 3 or self.series is None:
            raise MedlensError(
                f"{self.id}: a DICOM SEG needs a 3D model and a DICOM series as input"
            )
        return write_dicom_seg(self.labels, self.series, target, label_values=self.label_values,
                               class_names=self.class_names, algorithm_name=model_name,
                               algorithm_version=version)  # fmt: skip


def predict_inputs(
    run: SegmentationRun, source: str | Path, output: str | Path, *, mirror: bool | None = None
) -> list[Path]:
    """Predict every image under ``source`` into ``output``, one mask per image.

    A DICOM series folder (3D models) also gets ``<name>.seg.dcm``: a DICOM Segmentation
    referencing the series' instances (see :mod:`medlens.io.dicomseg`).
    """
    from medlens._atomic import ensure_outside
    from medlens.io.discover import discover_inputs

    source, output = Path(source), Path(output)
    if not source.exists():
        raise DatasetError("does not exist", source)
    ensure_outside(output, source)
    items = discover_inputs(source, spatial_dims=run.plan.spatial_dims)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for item in items:
        labels = predict_image(run, item.load(), mirror=mirror)
        prediction = MaskPrediction(item.id, labels, item.name,
                                    item.source if item.series_uid is not None else None,
                                    run.plan.label_values, run.info.get("class_names"))  # fmt: skip
        written.extend(prediction.save(output))
    return written
