"""Classification data as whole arrays in memory: what training and prediction both consume.

A split becomes one :class:`ImageSet`: images ``(N, C, [D,] H, W)`` on one grid, labels, ids and
the task. MedMNIST ``.npz`` files hand their arrays over without per-sample work; folder and CSV
datasets (PNG, JPEG, TIFF, DICOM, NIfTI) are read once, each image resized to the common input
size. :func:`read_inputs` is the prediction side: it takes what a user points at (a ``.npz`` with
or without labels, a folder of images, DICOM files or series) and shapes it like the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medlens.errors import DatasetError, MedlensError
from medlens.image import Image
from medlens.io._checks import require_finite

__all__ = ["ImageSet", "InputSpec", "conform", "load_labelled", "read_inputs"]


@dataclass(frozen=True)
class InputSpec:
    """The grid every image is brought to: channels, spatial shape ``([D,] H, W)`` and dtype,
    and how DICOM pixels are read (``presentation``: ``"auto"``, the default of new runs, reads
    projection X-ray as the viewer shows it and other modalities as modality values;
    ``"none"``, runs from before it was recorded, reads modality values throughout)."""

    channels: int
    shape: tuple[int, ...]
    uint8: bool
    presentation: str = "none"

    @property
    def spatial_dims(self) -> int:
        return len(self.shape)

    @property
    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of ``load_image`` for this run's inputs."""
        return {"presentation": "auto"} if self.presentation == "auto" else {}

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "shape": list(self.shape), "uint8": self.uint8,
                "presentation": self.presentation}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(int(data["channels"]), tuple(int(v) for v in data["shape"]),
                   bool(data["uint8"]), str(data.get("presentation", "none")))  # fmt: skip


@dataclass
class ImageSet:
    """One split held in memory.

    Attributes:
        images: ``(N, C, [D,] H, W)`` uint8 (8-bit sources) or float32.
        labels: ``(N,)`` int64 class indices, ``(N, K)`` float32 for multi-label (NaN = ignore),
            or ``None`` when the source has none (prediction inputs).
        ids: one id per image, in input order.
    """

    images: np.ndarray
    labels: np.ndarray | None
    ids: list[str]
    task: str = "classification"
    class_names: list[str] = field(default_factory=list)
    name: str = "dataset"
    source: str = ""
    split: str | None = None
    subjects: list[str] | None = None  # patient ids where the source names them (grouped splits)
    presentation: str = "none"  # how DICOM pixels were read (see InputSpec)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2

    @property
    def spec(self) -> InputSpec:
        return InputSpec(int(self.images.shape[1]), tuple(self.images.shape[2:]),
                         self.images.dtype == np.uint8, self.presentation)  # fmt: skip

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        index = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            self.images[index],
            None if self.labels is None else self.labels[index],
            [self.ids[i] for i in index],
            self.task,
            list(self.class_names),
            self.name,
            self.source,
            self.split,
            None if self.subjects is None else [self.subjects[i] for i in index],
            self.presentation,
        )


# --------------------------------------------------------------------------- labelled datasets
def load_labelled(
    path: str | Path,
    split: str | None = None,
    *,
    size: Sequence[int] | None = None,
    progress: bool = False,
    presentation: str = "auto",
) -> ImageSet:
    """Read a labelled split (MedMNIST) or a whole labelled dataset (CSV, folder) into memory.

    Args:
        path: a MedMNIST ``.npz``, a CSV of labels or a dataset folder.
        split: the ``.npz`` split (``train``, ``val``, ``test``); ignored by other sources.
        size: spatial size to bring every image to; by default MedMNIST keeps its own and
            other sources take the median image shape.
        presentation: how DICOM pixels are read (see :class:`InputSpec`).
    """
    from medlens.data import open_dataset
    from medlens.data.medmnist import MedMNISTDataset

    path = Path(path)
    if path.suffix.lower() == ".npz":
        dataset = open_dataset(path, split=split or "train")
    else:
        dataset = open_dataset(path)
    if dataset.task not in ("classification", "ordinal", "multilabel"):
        raise DatasetError(f"a {dataset.task} dataset, not a classification one", path)
    dataset.load_options = InputSpec(1, (1,), False, presentation).load_options
    if isinstance(dataset, MedMNISTDataset):
        images, labels = dataset.arrays()
        images = images if images.ndim == dataset.spatial_dims + 2 else images[:, None]
        out = ImageSet(
            np.ascontiguousarray(images),
            np.array(labels),
            dataset.ids(),
            dataset.task,
            list(dataset.class_names),
            dataset.name,
            str(path),
            dataset.split,
            presentation=presentation,
        )
        if size is not None and tuple(size) != out.images.shape[2:]:
            out.images = conform(out.images, out.spec.channels, tuple(size))
        return out
    arrays = [
        _as_chw(sample.image.array, sample.image.leading, sample.id or str(path))
        for sample in _iterate(dataset, progress)
    ]
    if not arrays:
        raise DatasetError("no images in the dataset", path)
    labels = dataset.labels()
    spatial_dims = max(a.ndim - 1 for a in arrays)
    if size is None:
        shapes = np.array([_pad_dims(a.shape[1:], spatial_dims) for a in arrays])
        size = tuple(int(v) for v in np.median(shapes, axis=0).round())
    channels = max(a.shape[0] for a in arrays)
    uint8 = all(a.dtype == np.uint8 for a in arrays)
    images = _stack(arrays, channels, tuple(size), uint8)
    return ImageSet(
        images,
        None if labels is None else np.asarray(labels),
        dataset.ids(),
        dataset.task,
        list(dataset.class_names),
        getattr(dataset, "name", path.stem),
        str(path),
        None,
        dataset.subjects() if dataset.has_subjects() else None,
        presentation,
    )


def _iterate(dataset: Any, progress: bool):
    from medlens._progress import progress as shown

    yield from shown(dataset, "reading images", enabled=progress, total=len(dataset))


# ------------------------------------------------------------------------- prediction inputs
def read_inputs(
    path: str | Path, spec: InputSpec, *, split: str | None = None, progress: bool = False
) -> ImageSet:
    """Read images to predict on and bring them to ``spec`` (the trained model's input).

    Args:
        path: a ``.npz`` (any ``{split}_images`` key; labels used when present, not needed), a
            folder of images (PNG/JPEG/TIFF/BMP/NIfTI, DICOM files) or one image file. For a 3D
            model, each DICOM series in a folder is one volume.
        spec: channels, shape and dtype the model was trained on.
        split: the ``.npz`` split; needed only when the file holds several.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError("does not exist", path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _read_npz(path, spec, split)
    from medlens._progress import progress as shown
    from medlens.io.discover import discover_inputs

    inputs = discover_inputs(path, spatial_dims=spec.spatial_dims)
    arrays = [
        image_array(item.load(**spec.load_options), item.id, spec.spatial_dims)
        for item in shown(inputs, "reading images", enabled=progress)
    ]
    images = _stack(arrays, spec.channels, spec.shape, spec.uint8)
    return ImageSet(images, None, [item.id for item in inputs], source=str(path), split=None)


def images_to_spec(images: Sequence[Image], spec: InputSpec, ids: Sequence[str]) -> np.ndarray:
    """Loaded images brought to ``spec`` exactly as :func:`read_inputs` brings files."""
    arrays = [
        image_array(image, i, spec.spatial_dims) for image, i in zip(images, ids, strict=True)
    ]
    return _stack(arrays, spec.channels, spec.shape, spec.uint8)


def _read_npz(path: Path, spec: InputSpec, split: str | None) -> ImageSet:
    from medlens.data.medmnist import _open_npz

    with _open_npz(path) as data:
        keys = sorted(data.files)
        splits = [k[: -len("_images")] for k in keys if k.endswith("_images")]
        if not splits:
            raise DatasetError(f"no *_images array (keys: {', '.join(keys) or 'none'})", path)
        if split is None:
            if len(splits) > 1:
                raise DatasetError(
                    f"holds splits {', '.join(splits)}: choose one with --split", path
                )
            split = splits[0]
        if split not in splits:
            raise DatasetError(f"no split {split!r}; splits: {', '.join(splits)}", path)
        images = require_finite(data[f"{split}_images"], path, what=f"{split}_images")
        labels = np.asarray(data[f"{split}_labels"]) if f"{split}_labels" in keys else None
    if images.ndim == spec.spatial_dims + 2 and images.shape[-1] in (3, 4) and spec.channels == 3:
        images = np.moveaxis(images, -1, 1)  # (N, H, W, 3) RGB MedMNIST
    elif images.ndim == spec.spatial_dims + 1:
        images = images[:, None]
    if images.ndim != spec.spatial_dims + 2:
        raise DatasetError(
            f"{split}_images has shape {images.shape}: not {spec.spatial_dims}D images", path
        )
    if labels is not None and labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    ids = [f"{split}-{i:06d}" for i in range(images.shape[0])]
    images = conform(images, spec.channels, spec.shape, uint8=spec.uint8)
    return ImageSet(images, labels, ids, source=str(path), split=split)


def image_array(image: Image, item_id: str, spatial_dims: int) -> np.ndarray:
    """``(C, [D,] H, W)`` of a loaded image for a ``spatial_dims`` model (a single-slice
    volume is a 2D image)."""
    array = _as_chw(image.array, image.leading, item_id)
    if array.ndim - 1 == 3 and spatial_dims == 2:
        if array.shape[1] != 1:
            raise MedlensError(f"{item_id}: a 3D image ({array.shape[1]} slices) for a 2D model")
        array = array[:, 0]
    return array


# ------------------------------------------------------------------------------ array shaping
def _as_chw(array: np.ndarray, leading: tuple[str, ...], name: str) -> np.ndarray:
    """``(C, [D,] H, W)`` from an image array with its leading axes."""
    array = np.asarray(array)
    if "time" in leading:
        raise MedlensError(f"{name}: a time series, not a single image to classify")
    if "channel" not in leading:
        array = array[None]
    return require_finite(array, name)


def _pad_dims(shape: tuple[int, ...], dims: int) -> tuple[int, ...]:
    return (1,) * (dims - len(shape)) + tuple(shape)


def _stack(arrays: list[np.ndarray], channels: int, size: tuple[int, ...], uint8: bool):
    out = np.empty((len(arrays), channels, *size), dtype=np.uint8 if uint8 else np.float32)
    for i, array in enumerate(arrays):
        if array.ndim - 1 < len(size):
            array = array.reshape(array.shape[0], *_pad_dims(array.shape[1:], len(size)))
        out[i] = conform(array[None], channels, size, uint8=uint8)[0]
    return out


def conform(
    images: np.ndarray, channels: int, size: tuple[int, ...], *, uint8: bool | None = None
) -> np.ndarray:
    """Bring ``(N, C, [D,] H, W)`` images to ``channels`` and ``size`` (linear resizing).

    Colour becomes grey by the mean of the channels and grey becomes colour by repetition.
    When ``uint8`` is asked and the input is not 8-bit, each image is scaled by its own range
    to 0..255 (a 12-bit radiograph for a model trained on 8-bit pictures).
    """
    uint8 = images.dtype == np.uint8 if uint8 is None else uint8
    if images.shape[1] != channels:
        if channels == 1:
            images = images.mean(axis=1, keepdims=True)
        elif images.shape[1] == 1:
            images = np.repeat(images, channels, axis=1)
        elif images.shape[1] >= channels:  # RGBA -> RGB
            images = images[:, :channels]
        else:
            raise MedlensError(f"images have {images.shape[1]} channels, the model {channels}")
    if tuple(images.shape[2:]) != tuple(size):
        tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        mode = "bilinear" if len(size) == 2 else "trilinear"
        tensor = F.interpolate(tensor, size=tuple(size), mode=mode, align_corners=False)
        images = tensor.numpy()
    if not uint8:
        return np.ascontiguousarray(images, dtype=np.float32)
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    source_is_8bit = images.min() >= 0 and images.max() <= 255
    if not source_is_8bit:
        axes = tuple(range(1, images.ndim))
        low = images.min(axis=axes, keepdims=True)
        high = images.max(axis=axes, keepdims=True)
        images = (images - low) / np.maximum(high - low, 1e-12) * 255.0
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)
