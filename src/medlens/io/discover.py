"""Finding the images in a path: one file, a folder tree, DICOM series. One list of suffixes.

Every command that takes images (``predict``, ``explain``, ``info``, the readers of paired
folders) finds them here, so a folder means the same thing to all of them:

- hidden files and ``DICOMDIR`` are skipped; files whose name ends in one of
  :data:`IMAGE_SUFFIXES` are images; files without such a suffix are images when they are
  DICOM (sniffed, as scanners often write no suffix);
- for 2D models every file is one image; for 3D models the DICOM files are grouped into series
  (one volume each, sorted by geometry when read) and every other file is one volume.

Each :class:`Input` has an ``id`` (the file's path relative to the folder, or a series' UID)
and a ``name`` for what is written about it (the relative path without its image suffix, or a
series' folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIXES", "Input", "discover_inputs", "file_stem"]

#: Suffixes of the image files medlens reads (lower case; ``.nii.gz`` before ``.nii``).
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii.gz", ".nii", ".npy", ".npz", ".dcm",
)  # fmt: skip
#: Suffixes a label map may have: lossless formats only (no JPEG) and no DICOM image.
LABEL_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in (".jpg", ".jpeg", ".dcm"))


def file_stem(name: str) -> str:
    """The name without its image suffix (``a.nii.gz`` -> ``a``; other names: their stem)."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass(frozen=True)
class Input:
    """One image found in a path.

    Attributes:
        id: the file's path relative to the folder given (the file's name for a file); a DICOM
            series' SeriesInstanceUID.
        name: what outputs about it are called: the relative path without its image suffix; a
            series: its folder's relative path (the folder's own name for the folder given),
            plus ``/<uid>`` when the folder holds several series.
        source: the file, or the series' folder.
        series_uid: the series read from ``source`` (None for files).
    """

    id: str
    name: str
    source: Path
    series_uid: str | None = None

    def load(self, **options: Any):
        """The :class:`~medlens.image.Image` (``options`` go to :func:`medlens.io.load_image`)."""
        from medlens.io import load_image

        if self.series_uid is not None:
            options = {"series_uid": self.series_uid, **options}
        image = load_image(self.source, **options)
        image.meta.setdefault("path", str(self.source))
        return image


def discover_inputs(path: str | Path, *, spatial_dims: int | None = None) -> list[Input]:
    """The images under ``path`` (a file or a folder tree), sorted by id; see the module notes.

    Args:
        spatial_dims: 3 groups DICOM files into series (one volume each); 2 or None keeps each
            DICOM file an image of its own.

    Raises:
        DatasetError: ``path`` does not exist, is an empty folder, or holds no image.
    """
    from medlens.io.dicom import is_dicom_file

    path = Path(path)
    if not path.exists():
        raise DatasetError("does not exist", path)
    if path.is_file():
        return [Input(path.name, file_stem(path.name), path)]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )
    if not files:
        raise DatasetError("empty folder: no images in it", path)
    dicom = [p for p in files if is_dicom_file(p)]
    found = set(dicom)
    others = [p for p in files if p not in found and p.name.lower().endswith(IMAGE_SUFFIXES)]
    items = [_file_input(p, path) for p in others]
    if spatial_dims == 3 and dicom:
        items.extend(_series_inputs(dicom, path))
    else:
        items.extend(_file_input(p, path) for p in dicom)
    if not items:
        raise DatasetError(
            "no readable images (PNG, JPEG, TIFF, BMP, NIfTI, DICOM, .npy or medlens .npz)", path
        )
    return sorted(items, key=lambda item: item.id)


def _file_input(file: Path, root: Path) -> Input:
    relative = file.relative_to(root).as_posix()
    return Input(relative, file_stem(relative), file)


def _series_inputs(files: list[Path], root: Path) -> list[Input]:
    from medlens.io.dicom import list_series_of

    series = list_series_of(files)
    folders: dict[Path, int] = {}
    places = []
    for one in series:
        folder = Path(os.path.commonpath([str(f.parent) for f in one.files]))
        folders[folder] = folders.get(folder, 0) + 1
        places.append(folder)
    items = []
    for one, folder in zip(series, places, strict=True):
        name = root.name if folder == root else folder.relative_to(root).as_posix()
        if folders[folder] > 1:
            name = f"{name}/{one.uid}"
        items.append(Input(one.uid, name, folder, one.uid))
    return items
