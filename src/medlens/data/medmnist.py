"""MedMNIST ``.npz`` files (v2, 2D and 3D, any size): whole splits held in memory.

A file holds ``{split}_images`` and ``{split}_labels`` for some of ``train``, ``val``, ``test``.
The arrays are small, so a split is loaded once and handed out whole by
:meth:`MedMNISTDataset.arrays`: training then feeds batches straight from memory instead of
building one :class:`Image` per sample.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from medlens.data.dataset import Dataset, Sample
from medlens.errors import DatasetError
from medlens.image import Image
from medlens.io._checks import require_finite
from medlens.io.arrays import npz_member

__all__ = ["MEDMNIST_INFO", "MedMNISTDataset", "available_splits", "medmnist_name"]

SPLITS = ("train", "val", "test")
_MAX_CLASSES = 100_000

_ORGANS_2D = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
    "lung-left", "lung-right", "pancreas", "spleen",
)  # fmt: skip

#: Official MedMNIST v2 task, label names and modality (DICOM code where one fits) per dataset.
MEDMNIST_INFO: dict[str, dict] = {
    "pathmnist": {
        "task": "classification",
        "modality": "SM",
        "labels": (
            "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
            "normal colon mucosa", "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
    },
    "chestmnist": {
        "task": "multilabel",
        "modality": "DX",
        "labels": (
            "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
            "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
            "pleural", "hernia",
        ),
    },
    "dermamnist": {
        "task": "classification",
        "modality": "XC",
        "labels": (
            "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
            "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
            "vascular lesions",
        ),
    },
    "octmnist": {
        "task": "classification",
        "modality": "OPT",
        "labels": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    },
    "pneumoniamnist": {
        "task": "classification",
        "modality": "DX",
        "labels": ("normal", "pneumonia"),
    },
    "retinamnist": {"task": "ordinal", "modality": "OP", "labels": ("0", "1", "2", "3", "4")},
    "breastmnist": {
        "task": "classification",
        "modality": "US",
        "labels": ("malignant", "normal, benign"),
    },
    "bloodmnist": {
        "task": "classification",
        "modality": "SM",
        "labels": (
            "basophil", "eosinophil", "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
            "monocyte", "neutrophil", "platelet",
        ),
    },
    "tissuemnist": {
        "task": "classification",
        "modality": "SM",
        "labels": (
            "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
            "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
            "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb",
        ),
    },
    "organamnist": {"task": "classification", "modality": "CT", "labels": _ORGANS_2D},
    "organcmnist": {"task": "classification", "modality": "CT", "labels": _ORGANS_2D},
    "organsmnist": {"task": "classification", "modality": "CT", "labels": _ORGANS_2D},
    "organmnist3d": {
        "task": "classification",
        "modality": "CT",
        "labels": (
            "liver", "kidney-right", "kidney-left", "femur-right", "femur-left", "bladder",
            "heart", "lung-right", "lung-left", "spleen", "pancreas",
        ),
    },
    "nodulemnist3d": {
        "task": "classification",
        "modality": "CT",
        "labels": ("benign", "malignant"),
    },
    # Shape masks derived from CT, not CT intensities: no modality, so no CT normalisation.
    "adrenalmnist3d": {
        "task": "classification",
        "modality": None,
        "labels": ("normal", "hyperplasia"),
    },
    "fracturemnist3d": {
        "task": "classification",
        "modality": "CT",
        "labels": ("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture"),
    },
    "vesselmnist3d": {"task": "classification", "modality": "MR", "labels": ("vessel", "aneurysm")},
    "synapsemnist3d": {
        "task": "classification",
        "modality": None,
        "labels": ("inhibitory synapse", "excitatory synapse"),
    },
}  # fmt: skip


def medmnist_name(path: str | Path) -> str:
    """Dataset name from a file name: ``breastmnist_64.npz`` -> ``breastmnist``."""
    stem = Path(path).name.lower()
    stem = stem[: -len(".npz")] if stem.endswith(".npz") else stem
    return re.sub(r"_(28|64|128|224)$", "", stem)


def _open_npz(path: Path):
    if not path.exists():
        raise DatasetError("file does not exist", path)
    if path.is_dir():
        raise DatasetError("is a folder, expected a MedMNIST .npz file", path)
    handle = open(path, "rb")  # noqa: SIM115 - ours, so a failed np.load cannot leave it open
    try:
        if handle.read(4)[:2] != b"PK":
            raise DatasetError("is not a .npz archive (no zip header)", path)
        handle.seek(0)
        data = np.load(handle, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        handle.close()
        raise DatasetError(
            f"not a readable .npz file ({type(exc).__name__}: {exc})", path
        ) from None
    except BaseException:
        handle.close()
        raise
    data.fid = handle  # closed with the archive
    return data


def available_splits(path: str | Path) -> list[str]:
    """Splits having both ``{split}_images`` and ``{split}_labels``, in train/val/test order."""
    path = Path(path)
    with _open_npz(path) as data:
        keys = set(data.files)
    return [s for s in SPLITS if f"{s}_images" in keys and f"{s}_labels" in keys]


class MedMNISTDataset(Dataset):
    """One split of a MedMNIST ``.npz``, held in memory.

    Images keep the file's uint8 values. Grayscale splits are ``(N, [D,] H, W)``; RGB splits
    ``(N, H, W, 3)`` are stored channel-first as ``(N, 3, H, W)`` so each sample is an
    :class:`Image` with ``leading=("channel",)`` without copying.

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"`` or ``"test"``.
        name: dataset name for class names and task; inferred from the file name by default.
    """

    def __init__(self, path: str | Path, split: str = "train", *, name: str | None = None) -> None:
        path = Path(path)
        self.source = path
        self.split = split
        self.name = name or medmnist_name(path)
        with _open_npz(path) as data:
            keys = sorted(data.files)
            image_key, label_key = f"{split}_images", f"{split}_labels"
            if image_key not in keys or label_key not in keys:
                present = ", ".join(keys) or "none"
                raise DatasetError(
                    f"no split {split!r} ({image_key}/{label_key} missing); keys: {present}",
                    path,
                )
            try:  # each array's declared size is checked against the archive before reading
                images = npz_member(data, image_key, path)
                labels = npz_member(data, label_key, path)
                # Other splits' labels decide the class count when the table does not know it.
                other_max = []
                for other in SPLITS:
                    if other != split and f"{other}_labels" in keys:
                        values = npz_member(data, f"{other}_labels", path).astype(float)
                        if values.size:
                            other_max.append(int(np.nan_to_num(np.nanmax(values))))
            except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, TypeError,
                    KeyError, OverflowError, struct.error, MemoryError) as exc:  # fmt: skip
                raise DatasetError(
                    f"corrupt array in .npz ({type(exc).__name__}: {exc})", path
                ) from None
        require_finite(images, path, what=image_key)
        self._images, self.spatial_dims, self.channels = _layout(images, path, image_key)
        info = MEDMNIST_INFO.get(self.name, {})
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != self._images.shape[0]:
            raise DatasetError(
                f"{label_key} has shape {labels.shape}, expected ({self._images.shape[0]}, K)", path
            )
        multilabel = labels.shape[1] > 1 or info.get("task") == "multilabel"
        if multilabel:
            self.task = "multilabel"
            self._labels = labels.astype(np.float32)
            count = labels.shape[1]
        else:
            self.task = info.get("task", "classification")
            require_finite(labels, path, what=label_key)  # NaN marks a missing label only
            if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
                raise DatasetError(f"{label_key} holds non-integer class labels", path)
            if labels.size and labels.min() < 0:
                raise DatasetError(f"{label_key} holds negative class labels", path)
            self._labels = labels[:, 0].astype(np.int64)
            seen = max([int(self._labels.max()) if self._labels.size else 0, *other_max]) + 1
            count = max(seen, len(info.get("labels", ())))
            if count > _MAX_CLASSES:  # one name is made per class: a damaged label must not
                raise DatasetError(f"class labels up to {count - 1}: not class indices", path)
        names = list(info.get("labels", ()))
        self.class_names = names if len(names) == count else [str(i) for i in range(count)]
        self.modality = info.get("modality")
        # Samples are views of the split: an in-place transform must not corrupt the dataset.
        self._images.flags.writeable = False
        self._labels.flags.writeable = False

    # ------------------------------------------------------------------ whole-split access
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole split: images ``(N, [C,] [D,] H, W)`` uint8 and labels ``(N,)`` or ``(N, K)``.

        Returned arrays are the dataset's own (no copy) and read-only; indexing a batch
        (``images[batch_indices]``) gives a writable copy.
        """
        return self._images, self._labels

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def _load(self, index: int) -> Sample:
        leading = ("channel",) if self.channels > 1 else ()
        image = Image(self._images[index], leading=leading, modality=self.modality)
        image.meta.update({"path": str(self.source), "split": self.split, "index": index})
        label = self._labels[index]
        label = label.copy() if self.task == "multilabel" else int(label)
        return Sample(image=image, label=label, id=self._id(index), meta={"split": self.split})

    def _id(self, index: int) -> str:
        return f"{self.split}-{index:06d}"

    def ids(self) -> list[str]:
        return [self._id(i) for i in range(len(self))]

    def subjects(self) -> list[str]:
        """MedMNIST ships no subject ids: each sample is its own subject."""
        return self.ids()

    def has_subjects(self) -> bool:
        return False

    def labels(self) -> np.ndarray:
        return self._labels

    def __repr__(self) -> str:
        return (
            f"MedMNISTDataset(name={self.name!r}, split={self.split!r}, samples={len(self)}, "
            f"shape={self._images.shape[1:]}, task={self.task}, classes={self.num_classes})"
        )


def _layout(images: np.ndarray, path: Path, key: str) -> tuple[np.ndarray, int, int]:
    """Images in medlens order plus spatial dims and channels, from the array's shape."""
    shape = images.shape
    if images.ndim == 3:
        return images, 2, 1
    if images.ndim == 4 and shape[-1] in (1, 3) and shape[1] != shape[-1]:
        # (N, H, W, C): channel-last 2D; a (N, D, H, W) cube never has D != W == 3.
        if shape[-1] == 1:
            return images[..., 0], 2, 1
        return np.ascontiguousarray(np.moveaxis(images, -1, 1)), 2, 3
    if images.ndim == 4:
        return images, 3, 1
    if images.ndim == 5 and shape[-1] in (1, 3):
        if shape[-1] == 1:
            return images[..., 0], 3, 1
        return np.ascontiguousarray(np.moveaxis(images, -1, 1)), 3, shape[-1]
    raise DatasetError(
        f"{key} has shape {shape}; expected (N, H, W), (N, H, W, 3) or (N, D, H, W)", path
    )
