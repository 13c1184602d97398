"""Open any supported dataset by looking at what is on disk.

Detection, first match wins:

1. a ``.npz`` file with ``*_images`` keys -> MedMNIST;
2. a folder with ``images/`` (or ``subset*/``) and a CSV of ``seriesuid`` + centre/corner
   columns, or that CSV -> LUNA16-style detection (before Decathlon: it may hold a
   ``dataset.json``);
3. a ``dataset.json`` file, or a folder holding one -> Decathlon / nnU-Net;
4. a folder with ``Annotations/`` and ``JPEGImages/`` -> Pascal VOC detection;
5. a ``.csv`` file, or a folder with exactly one CSV and no other layout -> a CSV of boxes
   (``image,x1,y1,x2,y2`` columns) for detection, else a CSV folder of labels;
6. a folder with ``images/``, ``annotations/`` and ``labels.csv`` -> raw HC18;
7. a folder with ``images/`` and ``masks/`` -> paired image/mask folders;
   a folder with ``dicoms/`` and ``contourfiles/`` -> Sunnybrook cine MRI with contours;
8. a ``.json`` file other than ``dataset.json``, or a folder with exactly one -> COCO boxes.

HC18 and Sunnybrook are checked before the single-CSV rule: their folders hold one CSV too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlens.data.dataset import Dataset
from medlens.errors import DatasetError

__all__ = ["detect_format", "open_dataset"]

_LOOKED_FOR = (
    "a MedMNIST .npz, dataset.json (Decathlon/nnU-Net), images/ + annotations/ + labels.csv "
    "(HC18), images/ + masks/ (paired folders), dicoms/ + contourfiles/ (Sunnybrook), cines/ "
    "+ cases.csv (cine folder), "
    "Annotations/ + JPEGImages/ (Pascal VOC), images/ + a seriesuid CSV (LUNA16), one COCO "
    ".json, or one .csv of labels or boxes"
)


def detect_format(path: str | Path) -> str:
    """The format name of ``path``: ``medmnist``, ``decathlon``, ``hc18``, ``paired``,
    ``sunnybrook``, ``cine`` (a cine folder of the sequence tasks), ``csv``,
    or for detection ``voc``, ``coco``, ``boxes`` (a CSV of boxes) or ``luna``."""
    from medlens.data.detection import detection_format

    path = Path(path)
    if not path.exists():
        raise DatasetError("does not exist", path)
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".npz"):
            from medlens.data.medmnist import _open_npz

            with _open_npz(path) as data:
                if any(key.endswith("_images") for key in data.files):
                    return "medmnist"
                keys = ", ".join(sorted(data.files)) or "none"
            raise DatasetError(f"not a MedMNIST .npz: no *_images keys (keys: {keys})", path)
        if name.endswith((".json", ".csv")):
            found = detection_format(path)
            return found or ("csv" if name.endswith(".csv") else "decathlon")
        raise DatasetError(f"not a dataset file; expected {_LOOKED_FOR}", path)
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DatasetError("empty folder: no dataset in it", path)
    found = detection_format(path)  # LUNA16 folders may hold a dataset.json
    if found is not None:
        return found
    if (path / "dataset.json").is_file():
        return "decathlon"
    from medlens.data.hc18 import is_hc18_folder

    if is_hc18_folder(path):
        return "hc18"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "paired"
    from medlens.data.sunnybrook import is_sunnybrook_folder

    if is_sunnybrook_folder(path):
        return "sunnybrook"
    if (path / "cines").is_dir() and (path / "cases.csv").is_file():
        return "cine"
    csvs = sorted(p.name for p in entries if p.is_file() and p.name.lower().endswith(".csv"))
    if len(csvs) == 1:
        return detection_format(path / csvs[0]) or "csv"
    if len(csvs) > 1:
        raise DatasetError(
            f"{len(csvs)} CSV files ({', '.join(csvs[:5])}); pass the CSV to open", path
        )
    jsons = [p for p in entries if p.is_file() and p.name.lower().endswith(".json")]
    if len(jsons) == 1:
        return "coco"
    raise DatasetError(f"no known dataset layout; looked for {_LOOKED_FOR}", path)


def open_dataset(path: str | Path, **kwargs: Any) -> Dataset:
    """Open the dataset at ``path``; ``kwargs`` go to the detected reader.

    Examples: ``open_dataset("breastmnist.npz", split="val")``,
    ``open_dataset("chexpert/train.csv", uncertain="zeros")``, ``open_dataset("Task04")``,
    ``open_dataset("bccd", split="train")``, ``open_dataset("boxes.csv", units="mm")``.
    """
    path = Path(path)
    kind = detect_format(path)
    if kind in ("voc", "coco", "boxes", "luna"):
        return _open_detection(kind, path, kwargs)
    if kind == "medmnist":
        from medlens.data.medmnist import MedMNISTDataset

        return MedMNISTDataset(path, **kwargs)
    if kind == "decathlon":
        from medlens.data.decathlon import DecathlonDataset

        return DecathlonDataset(path.parent if path.is_file() else path, **kwargs)
    if kind == "hc18":
        from medlens.data.hc18 import HC18Dataset

        return HC18Dataset(path, **kwargs)
    if kind == "paired":
        from medlens.data.paired import PairedFolderDataset

        return PairedFolderDataset(path, **kwargs)
    if kind == "sunnybrook":
        from medlens.data.sunnybrook import SunnybrookDataset

        return SunnybrookDataset(path, **kwargs)
    if kind == "cine":
        raise DatasetError("a cine folder (cines/, cases.csv): learn from it with --task "
                           "sequence-segmentation (per-frame, with a time axis), "
                           "sequence-classification or sequence-regression", path)  # fmt: skip
    from medlens.data.csv_folder import CSVFolderDataset

    if path.is_dir():
        path = next(p for p in sorted(path.iterdir()) if p.name.lower().endswith(".csv"))
    return CSVFolderDataset(path, **kwargs)


def _open_detection(kind: str, path: Path, kwargs: dict[str, Any]) -> Dataset:
    from medlens.data import detection

    if kind == "voc":
        return detection.VOCDataset(path, **kwargs)
    if kind == "luna":
        return detection.LUNA16Dataset(path, **kwargs)
    if path.is_dir():
        suffix = ".csv" if kind == "boxes" else ".json"
        path = next(p for p in sorted(path.iterdir()) if p.name.lower().endswith(suffix))
    if kind == "coco":
        return detection.COCODataset(path, **kwargs)
    return detection.BoxCSVDataset(path, **kwargs)
