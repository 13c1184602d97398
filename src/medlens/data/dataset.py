"""The dataset model: a :class:`Sample` per case and a :class:`Dataset` sequence of them.

Every format reader (MedMNIST, CSV folders, Decathlon/nnU-Net, paired folders, HC18, the
detection formats of :mod:`medlens.data.detection`) returns a
:class:`Dataset`, so splitting, fingerprinting and training never care where the data came from.
Folder datasets keep paths and read files only in ``__getitem__``; what splitting needs (ids,
subjects, labels) is answered without reading any image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, overload

import numpy as np

from medlens.image import Image, Role

__all__ = ["TASKS", "Dataset", "Entry", "Sample", "as_label_map"]

#: Task types a dataset can declare. ``ordinal`` is classification with ordered classes
#: (RetinaMNIST grades); ``multilabel`` has one independent binary target per class;
#: ``detection`` has boxes with a class each (see :class:`Sample`).
TASKS = ("classification", "multilabel", "ordinal", "regression", "segmentation", "detection")


@dataclass(eq=False)
class Sample:
    """One case: the image, its target and who it belongs to, plus any named extra targets.

    Args:
        image: the (loaded) image; folder datasets read it when the sample is requested.
        label: class index, a float vector for multi-label targets (NaN = ignore), or ``None``.
        mask: label map on the image's grid for segmentation, else ``None``.
        id: unique id of the sample within its dataset (file stem, case id, ``train-17``).
        subject: patient/subject id; grouped splits never put one subject on both sides.
        study: examination id when a subject has several (CheXpert ``patient1/study2``).
        meta: provenance (paths, CSV row, pixel size, reference measurements, ...).
        fields: extra targets by name, on the image's grid and in its index coordinates, so that
            augmentation moves them with it: :class:`Image` objects or arrays ``([T,] C, *S)``
            (a registration's fixed image, a displacement field ``(ndim, *S)`` with components
            in index order ``(x, y[, z])`` in voxels, a reconstruction target), boxes
            ``(N, 2 * ndim)`` and points ``(N, ndim)`` in index coordinates ``(x, y[, z])``.
        kinds: the batch kind of each extra field (``"image"``, ``"label"``, ``"spatial"``,
            ``"displacement"``, ``"boxes"``, ``"points"``) where its name does not say
            (see :mod:`medlens.transforms.batch`).
        times: acquisition time of each frame (seconds) when the image is a time series.

    Detection samples (``dataset.task == "detection"``, :mod:`medlens.data.detection`):

    * ``image``: the image (2D RGB keeps its channels; 3D volumes).
    * ``fields["boxes"]``: float32 ``(N, 2 * ndim)`` ``(x_min, y_min[, z_min], x_max, y_max[,
      z_max])`` in continuous index coordinates of ``image`` (index order ``x, y, z``, voxel
      centres at integers: a box covering voxels ``a..b`` spans ``[a - 0.5, b + 0.5]``);
      ``kinds["boxes"] == "boxes"``.
    * ``label``: int64 ``(N,)`` class indices into ``dataset.class_names``, aligned with the
      boxes. No boxes is a valid negative: ``(0, 2 * ndim)`` boxes and ``(0,)`` labels.
    * ``meta["boxes_world"]``: float64 ``(N, 2 * ndim)`` the same boxes as LPS world corners
      (mm; pixels for 2D images without geometry), converted with the loaded image's geometry;
      ``meta["ignore"]``: bool ``(N,)`` (VOC ``difficult``, COCO ``iscrowd``) when the format
      has it; ``meta["clipped"]``: bool ``(N,)`` boxes cut back to the image.
    """

    image: Image
    label: int | float | np.ndarray | None = None
    mask: Image | None = None
    id: str = ""
    subject: str | None = None
    study: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    times: tuple[float, ...] | None = None

    @property
    def has_time(self) -> bool:
        """Whether the image is a time series (a ``"time"`` leading axis)."""
        return "time" in self.image.leading

    def batch_arrays(self) -> dict[str, np.ndarray]:
        """The sample's tensors as :class:`medlens.transforms.Batch` lays them out, without the
        batch axis: ``image``, ``label`` (the mask) and each extra field. Images become
        ``([T,] C, *spatial)`` (time first, a channel axis always); arrays are taken as given.

        ``medlens.transforms.Batch.from_samples`` stacks these with :meth:`batch_kinds`.
        """
        out = {"image": _batch_layout(self.image)}
        if self.mask is not None:
            out["label"] = _batch_layout(self.mask)
        for name, value in self.fields.items():
            if name in out:
                raise ValueError(f"extra field {name!r} clashes with the sample's {name}")
            out[name] = _batch_layout(value) if isinstance(value, Image) else np.asarray(value)
        return out

    def batch_kinds(self) -> dict[str, str]:
        """The batch kind of every field of :meth:`batch_arrays`.

        ``image`` is an image and ``label`` a label map; an extra field takes its kind from
        :attr:`kinds`, else from its name as :class:`medlens.transforms.Batch` reads names
        (``flow`` -> displacement, ``boxes`` -> boxes, ...), else from an :class:`Image`'s role,
        else from its dtype (floating: image, integer: label).
        """
        from medlens.transforms.batch import kind_from_name  # lazily: data sits below transforms

        out = {"image": "image"}
        if self.mask is not None:
            out["label"] = "label"
        for name, value in self.fields.items():
            kind = self.kinds.get(name) or kind_from_name(name)
            if kind is None and isinstance(value, Image):
                kind = "label" if value.is_label else "image"
            if kind is None:
                if np.asarray(value).dtype.kind not in "biuf":
                    raise ValueError(f"say the kind of extra field {name!r} (Sample.kinds)")
                kind = "image" if np.asarray(value).dtype.kind == "f" else "label"
            out[name] = kind
        return out


@dataclass(eq=False)
class Entry:
    """What a folder dataset knows about a case before reading it: paths and target."""

    id: str
    paths: tuple[Path, ...]
    label: int | float | np.ndarray | None = None
    mask_path: Path | None = None
    subject: str | None = None
    study: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Dataset(Sequence[Sample]):
    """A read-only sequence of :class:`Sample` with the metadata splits and planning need.

    Subclasses set ``task``, ``class_names``, ``modality`` and ``name``, and implement
    ``__len__`` and ``_load(index)``. Folder datasets fill ``self.entries`` (one :class:`Entry`
    per case) and get ``ids``, ``subjects`` and ``labels`` for free.
    """

    task: str = "classification"
    class_names: list[str]
    modality: str | None = None
    name: str = "dataset"
    source: Path | None = None
    entries: list[Entry]
    #: keyword arguments of ``load_image`` for the images (e.g. ``presentation="auto"``)
    load_options: Mapping[str, Any] = MappingProxyType({})

    # ------------------------------------------------------------------ to implement
    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, index: int) -> Sample:
        raise NotImplementedError

    # ------------------------------------------------------------------ sequence protocol
    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> Dataset: ...

    def __getitem__(self, index: Any) -> Sample | Dataset:
        if isinstance(index, (int, np.integer)):
            n = len(self)
            i = int(index)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"sample index {index} out of range for {n} samples")
            return self._load(i)
        if isinstance(index, slice):
            return Subset(self, range(len(self))[index])
        return Subset(self, [int(i) for i in np.asarray(index).reshape(-1)])

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._load(i)

    # ------------------------------------------------------------------ metadata
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def ids(self) -> list[str]:
        """Sample ids in order; unique within the dataset."""
        return [e.id for e in self.entries]

    def subjects(self) -> list[str]:
        """Subject per sample; a sample without a known subject is its own subject (its id)."""
        return [e.subject if e.subject is not None else e.id for e in self.entries]

    def has_subjects(self) -> bool:
        """Whether the source named subjects (so grouped splits mean something)."""
        return any(e.subject is not None for e in self.entries)

    def labels(self) -> np.ndarray | None:
        """All targets as one array without reading images: ``(N,)`` int or ``(N, K)`` float.

        ``None`` for datasets whose targets are images (segmentation).
        """
        if self.task == "segmentation" or not self.entries:
            return None
        if self.task == "multilabel":
            return np.stack([np.asarray(e.label, dtype=np.float32) for e in self.entries])
        dtype = np.float64 if self.task == "regression" else np.int64
        return np.asarray([e.label for e in self.entries], dtype=dtype)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """A view on some samples, in the given order (e.g. one fold of a split)."""
        return Subset(self, [int(i) for i in np.asarray(indices).reshape(-1)])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, task={self.task}, "
            f"classes={self.num_classes})"
        )


class Subset(Dataset):
    """Some samples of a parent dataset, sharing its metadata and loading."""

    def __init__(self, parent: Dataset, indices: Sequence[int]) -> None:
        n = len(parent)
        self.parent = parent
        self.indices = [i + n if i < 0 else i for i in indices]
        if any(not 0 <= i < n for i in self.indices):
            raise IndexError(f"subset index out of range for {n} samples")
        self.task = parent.task
        self.class_names = parent.class_names
        self.modality = parent.modality
        self.name = parent.name
        self.source = parent.source

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index: int) -> Sample:
        return self.parent._load(self.indices[index])

    def ids(self) -> list[str]:
        ids = self.parent.ids()
        return [ids[i] for i in self.indices]

    def subjects(self) -> list[str]:
        subjects = self.parent.subjects()
        return [subjects[i] for i in self.indices]

    def has_subjects(self) -> bool:
        return self.parent.has_subjects()

    def labels(self) -> np.ndarray | None:
        labels = self.parent.labels()
        return None if labels is None else labels[np.asarray(self.indices, dtype=np.int64)]


def as_label_map(image: Image, *, binary_255: bool = True) -> Image:
    """Turn a mask as drawn by tools into a label map: one channel, ``{0, 255}`` -> ``{0, 1}``.

    PNG masks are often saved as RGB with identical channels and 255 for foreground; a label
    map needs class indices, so identical channels collapse and (with ``binary_255``) a mask
    holding only 0 and 255 becomes 0/1.
    """
    array = image.array
    leading = image.leading
    if "time" in leading and array.shape[leading.index("time")] == 1:  # a 4D file of one volume
        array = np.take(array, 0, axis=leading.index("time"))
        leading = tuple(name for name in leading if name != "time")
    if "channel" in leading:
        axis = leading.index("channel")
        first = np.take(array, 0, axis=axis)
        same = all(
            np.array_equal(first, np.take(array, c, axis=axis)) for c in range(array.shape[axis])
        )
        array = first if same else array.max(axis=axis)
        leading = tuple(name for name in leading if name != "channel")
    if array.dtype.kind == "f":
        array = np.rint(array)
    values = np.unique(array)
    if binary_255 and values.size and set(values.tolist()) <= {0, 255} and 255 in values:
        array = (array > 0).astype(np.uint8)
    elif values.size and values.min() >= 0 and values.max() <= 255:
        array = array.astype(np.uint8, copy=False)
    elif values.size and values.min() >= np.iinfo(np.int16).min and values.max() < 2**15:
        array = array.astype(np.int16, copy=False)
    return image.replace(array=np.ascontiguousarray(array), leading=leading, role=Role.LABEL)


def _batch_layout(image: Image) -> np.ndarray:
    """An image's array as ``([T,] C, *spatial)``: time first, then a channel axis (added)."""
    array, leading = image.array, list(image.leading)
    if "channel" not in leading:
        array, leading = array[None], ["channel", *leading]
    order = [leading.index(name) for name in ("time", "channel") if name in leading]
    return np.moveaxis(array, order, list(range(len(order))))


def _progress(items: Sequence[Any], description: str, enabled: bool) -> Iterator[Any]:
    """Progress on stderr (see :mod:`medlens._progress`)."""
    from medlens._progress import progress

    yield from progress(items, description, enabled=enabled)


def _lazy_io() -> tuple[Callable[..., Image], Callable[..., Any]]:
    """``medlens.io``'s reader and writer, imported on first use to keep imports cheap."""
    from medlens.io import load_image, save_image

    return load_image, save_image
