"""Boxes from label maps: a segmentation dataset read as a detection dataset.

Organ localisation is detection whose boxes come from label maps that already exist: the
Decathlon's hippocampus, TotalSegmentator's organs, any ``images/`` + ``masks/`` folder.
:class:`LabelBoxDataset` wraps such a dataset and gives the detection layout of
:mod:`medlens.data.detection`:

* ``per="class"`` (organ localisation): one box per label value present in a case, the box of
  every voxel of that structure, however many pieces it has;
* ``per="component"`` (lesions, cells): one box per connected component (face connectivity) of
  each label value, components under ``min_voxels`` voxels dropped.

Class names are the source's label names without the background, in label-value order. The
boxes are computed once, when the dataset is opened (every case is read then, so the classes
and box counts are known before training), with :func:`medlens.boxes.boxes_from_labels` on the
label map's grid, and kept as LPS world corners (mm); each loaded sample maps them back to its
image's index coordinates, as every detection reader does. A case whose label map is empty is
a valid negative.

:func:`open_detection` opens any path for the detection task: a detection dataset as it is, a
segmentation dataset through :class:`LabelBoxDataset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from medlens.data.dataset import Dataset, Entry, Sample
from medlens.data.detection import DetectionDataset, boxes_index_to_world, boxes_world_to_index
from medlens.errors import DatasetError

__all__ = ["PER", "LabelBoxDataset", "open_detection"]

PER = ("class", "component")


def open_detection(
    path: str | Path,
    *,
    per: Literal["class", "component"] = "class",
    min_voxels: int = 1,
    progress: bool = False,
    **kwargs: Any,
) -> DetectionDataset:
    """The dataset at ``path`` for detection: boxes as annotated, or from its label maps
    (``per`` box of each case, see :class:`LabelBoxDataset`); ``kwargs`` go to the reader."""
    from medlens.data.open import open_dataset

    dataset = open_dataset(path, **kwargs)
    if dataset.task == "detection":
        return dataset  # type: ignore[return-value]
    if dataset.task == "segmentation":
        return LabelBoxDataset(dataset, per=per, min_voxels=min_voxels, progress=progress)
    raise DatasetError(
        f"a {dataset.task} dataset: detection needs boxes, or label maps to take them from", path
    )


class LabelBoxDataset(DetectionDataset):
    """The segmentation dataset ``source`` with boxes from its label maps (module docstring).

    Args:
        source: a segmentation dataset (Decathlon, paired folders, HC18, ...).
        per: ``"class"``: one box per structure; ``"component"``: one per connected piece.
        min_voxels: components (``per="component"``) smaller than this are not boxes.
        progress: show a progress bar while the label maps are read.
    """

    def __init__(
        self,
        source: Dataset,
        *,
        per: Literal["class", "component"] = "class",
        min_voxels: int = 1,
        progress: bool = False,
    ) -> None:
        from medlens._progress import progress as shown

        if per not in PER:
            raise DatasetError(f"boxes per {per!r}: use 'class' or 'component'", source.source)
        if source.task != "segmentation":
            raise DatasetError(f"a {source.task} dataset has no label maps", source.source)
        self.base, self.per, self.min_voxels = source, per, int(min_voxels)
        self.source, self.name, self.modality = source.source, source.name, source.modality
        self.split = getattr(source, "split", None)
        self.load_options = source.load_options
        values = _label_values(source)  # value -> class index
        self.class_names = [source.class_names[v] for v in values]
        self._index = {v: i for i, v in enumerate(values)}
        self.meta = {"format": f"labels per {per}", "boxes_from_labels": per}
        self.entries = []
        dims = set()
        for i in shown(range(len(source)), "boxes from the label maps", enabled=progress):
            sample = source[i]
            if sample.mask is None:
                raise DatasetError(f"case {sample.id} has no label map", source.source)
            dims.add(sample.mask.spatial_dims)
            self.entries.append(self._entry(sample, source.entries[i]))
        if len(dims) > 1:
            raise DatasetError("label maps of different dimensions (2D and 3D)", source.source)
        self.ndim = dims.pop() if dims else 3

    def _entry(self, sample: Sample, entry: Entry) -> Entry:
        from medlens.boxes import boxes_from_labels

        mask = sample.mask
        array = np.asarray(mask.array)
        n = array.ndim
        boxes, values = boxes_from_labels(array.astype(np.int64, copy=False), per=self.per)
        keep = np.asarray([int(v) in self._index for v in values], dtype=bool)
        sources = [f"label {int(v)}" for v in values]
        if self.per == "component":
            sources = [f"label {int(v)} piece {k}" for k, v in enumerate(values, start=1)]
            if len(values) and self.min_voxels > 1:
                keep &= _component_voxels(array, values) >= self.min_voxels
        boxes, values = boxes[keep], values[keep]
        world = boxes_index_to_world(mask, boxes) if len(boxes) else boxes.reshape(0, 2 * n)
        meta = {
            "annotation": str(entry.mask_path or sample.meta.get("path", "")),
            "boxes_world": np.asarray(world, dtype=np.float64),
            "box_sources": [s for s, k in zip(sources, keep, strict=True) if k],
        }
        labels = np.asarray([self._index[int(v)] for v in values], dtype=np.int64)
        return Entry(
            sample.id, entry.paths, labels, subject=entry.subject, study=entry.study, meta=meta
        )

    def _load(self, index: int) -> Sample:
        entry = self.entries[index]
        sample = self.base[index]
        image = sample.image
        world = entry.meta["boxes_world"]
        boxes = boxes_world_to_index(image, world) if len(world) else world.copy()
        meta = dict(sample.meta)
        meta.update(
            path=meta.get("path") or str(entry.paths[0]),
            annotation=entry.meta["annotation"],
            box_sources=list(entry.meta["box_sources"]),
            boxes_world=world.copy(),
            clipped=np.zeros(len(world), dtype=bool),
        )
        return self._sample(image, entry, boxes, meta)


def _label_values(source: Dataset) -> list[int]:
    """The label values that get boxes: every named value but the background (0), in order."""
    named = getattr(source, "label_values", None)
    if isinstance(named, dict) and named:
        values = sorted(v for v in named.values() if isinstance(v, int) and v > 0)
        by_value = {v: n for n, v in named.items() if isinstance(v, int)}
        names = [by_value[v] for v in values]
        if names != [source.class_names[v] for v in values if v < len(source.class_names)]:
            raise DatasetError("label names and values disagree", source.source)
        return values
    return list(range(1, len(source.class_names)))


def _component_voxels(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Voxels of each component, in :func:`~medlens.boxes.boxes_from_labels`' order (by label
    value, then components in scan order; face connectivity, as there)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(array.ndim, 1)
    counts = []
    for value in sorted({int(v) for v in values}):
        pieces, n = ndimage.label(array == value, structure)
        counts += np.bincount(pieces.ravel(), minlength=n + 1)[1:].tolist()
    return np.asarray(counts, dtype=np.int64)
