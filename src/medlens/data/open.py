"""Open any supported dataset by looking at what is on disk.

Detection, first match wins:

1. a ``.npz`` file with ``*_images`` keys -> MedMNIST;
2. a ``dataset.json`` file, or a folder holding one -> Decathlon / nnU-Net;
3. a ``.csv`` file, or a folder with exactly one CSV and no other layout -> CSV folder;
4. a folder with ``images/``, ``annotations/`` and ``labels.csv`` -> raw HC18;
5. a folder with ``images/`` and ``masks/`` -> paired image/mask folders.

HC18 is checked before the single-CSV rule: its folder holds exactly one CSV too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlens.data.dataset import Dataset
from medlens.errors import DatasetError

__all__ = ["detect_format", "open_dataset"]

_LOOKED_FOR = (
    "a MedMNIST .npz, dataset.json (Decathlon/nnU-Net), images/ + annotations/ + labels.csv "
    "(HC18), images/ + masks/ (paired folders), or one .csv of labels"
)


def detect_format(path: str | Path) -> str:
    """The format name of ``path``: ``medmnist``, ``decathlon``, ``hc18``, ``paired`` or ``csv``."""
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
        if name == "dataset.json":
            return "decathlon"
        if name.endswith(".csv"):
            return "csv"
        raise DatasetError(f"not a dataset file; expected {_LOOKED_FOR}", path)
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DatasetError("empty folder: no dataset in it", path)
    if (path / "dataset.json").is_file():
        return "decathlon"
    from medlens.data.hc18 import is_hc18_folder

    if is_hc18_folder(path):
        return "hc18"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "paired"
    csvs = sorted(p.name for p in entries if p.is_file() and p.name.lower().endswith(".csv"))
    if len(csvs) == 1:
        return "csv"
    if len(csvs) > 1:
        raise DatasetError(
            f"{len(csvs)} CSV files ({', '.join(csvs[:5])}); pass the CSV to open", path
        )
    raise DatasetError(f"no known dataset layout; looked for {_LOOKED_FOR}", path)


def open_dataset(path: str | Path, **kwargs: Any) -> Dataset:
    """Open the dataset at ``path``; ``kwargs`` go to the detected reader.

    Examples: ``open_dataset("breastmnist.npz", split="val")``,
    ``open_dataset("chexpert/train.csv", uncertain="zeros")``, ``open_dataset("Task04")``.
    """
    path = Path(path)
    kind = detect_format(path)
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
    from medlens.data.csv_folder import CSVFolderDataset

    if path.is_dir():
        path = next(p for p in sorted(path.iterdir()) if p.name.lower().endswith(".csv"))
    return CSVFolderDataset(path, **kwargs)
