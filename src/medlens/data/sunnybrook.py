"""Sunnybrook Cardiac Data: cine short-axis MRI with expert left-ventricle contours, read as it is.

Layout (Radau et al. 2009, as the Cardiac Atlas Project distributes it)::

    dicoms/SCD0000101/N.dcm          one file per slice and phase (N = InstanceNumber)
    contourfiles/SC-HF-I-1/i-contours/IM-0001-NNNN-icontour-manual.txt   endocardium on file NNNN
    contourfiles/SC-HF-I-1/o-contours/IM-0001-NNNN-ocontour-manual.txt   epicardium (end-diastole)
    link.csv                          patient_id (the DICOM folder), original_id (the contours')

A contour is one ``x y`` pixel vertex per line on the stored pixel grid of its file; it is filled
into a mask of the pixels whose centres lie inside it. Each sample is one contoured frame as a 2D
image (pixel spacing from the file) with its mask: ``labels="endocardium"`` gives the left
ventricle's cavity (label 1) on every contoured frame; ``labels="both"`` adds the myocardium
(label 2, between the epicardium and the endocardium) and keeps only frames with both contours.
Subjects are the patients, so a split never puts one patient's frames on both sides.

:func:`contour_volumes` turns a patient's contours into the reference the measurements are
checked against: each contoured frame placed at its phase and slice of the cine (the DICOM
series assembled by trigger time and slice position), the cavity's area times the slice spacing
summed over slices per phase (Simpson's rule, discs), end-diastole the contoured phase with the
larger volume and end-systole the other.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.dataset import Dataset, Entry, Sample, _lazy_io
from medlens.errors import DatasetError
from medlens.image import Image, Role

__all__ = ["SunnybrookDataset", "contour_mask", "contour_volumes", "is_sunnybrook_folder"]

LINK_CSV = "link.csv"
_CONTOUR = re.compile(r"^IM-\d+-(\d+)-([io])contour-manual\.txt$")
LABELS = {"endocardium": ["background", "left ventricle"],
          "both": ["background", "left ventricle", "myocardium"]}  # fmt: skip


def is_sunnybrook_folder(path: Path) -> bool:
    """Whether ``path`` holds the Sunnybrook layout (``dicoms/`` and ``contourfiles/``)."""
    return (path / "dicoms").is_dir() and (path / "contourfiles").is_dir()


@dataclass(frozen=True)
class Patient:
    """One patient: its DICOM series folder and its contour folder."""

    series: str
    name: str


def _patients(root: Path) -> list[Patient]:
    link = root / LINK_CSV
    series = sorted(p.name for p in (root / "dicoms").iterdir() if p.is_dir())
    contours = sorted(p.name for p in (root / "contourfiles").iterdir() if p.is_dir())
    if link.is_file():
        with link.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"patient_id", "original_id"} <= set(rows[0]):
            raise DatasetError("needs the columns patient_id,original_id", link)
        pairs = [Patient(r["patient_id"].strip(), r["original_id"].strip()) for r in rows]
        pairs = [p for p in pairs if p.series in series and p.name in contours]
    else:  # without link.csv the two folders must share their names
        pairs = [Patient(name, name) for name in series if name in contours]
    if not pairs:
        names = (", ".join(series[:3]) or "none", ", ".join(contours[:3]) or "none")
        raise DatasetError(f"no patient has both a DICOM folder ({names[0]}) and a contour "
                           f"folder ({names[1]}); {LINK_CSV} pairs them", root)  # fmt: skip
    return pairs


def _contour_files(folder: Path) -> dict[int, dict[str, Path]]:
    """``{file number: {"i": path, "o": path}}`` of a patient's contour folder."""
    found: dict[int, dict[str, Path]] = {}
    for kind in ("i", "o"):
        sub = folder / f"{kind}-contours"
        for path in sorted(sub.glob("*.txt")) if sub.is_dir() else ():
            match = _CONTOUR.match(path.name)
            if match is None:
                raise DatasetError("not a Sunnybrook contour name (IM-0001-NNNN-icontour-"
                                   "manual.txt)", path)  # fmt: skip
            found.setdefault(int(match.group(1)), {})[match.group(2)] = path
    return found


def contour_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The pixels (``shape`` = rows, columns) whose centres lie inside the contour at ``path``."""
    from skimage.draw import polygon2mask

    from medlens.io.annotations import read_contour

    points = read_contour(path)
    h, w = shape
    if (points < -0.5).any() or (points[:, 0] > w - 0.5).any() or (points[:, 1] > h - 0.5).any():
        raise DatasetError(f"contour reaches outside the {h}x{w} image", path)
    mask = polygon2mask(shape, points[:, ::-1])
    if not mask.any():
        raise DatasetError("contour encloses no pixel centre", path)
    return mask.astype(np.uint8)


class SunnybrookDataset(Dataset):
    """The contoured frames of the Sunnybrook layout (module notes) for segmentation.

    Args:
        root: the folder holding ``dicoms/`` and ``contourfiles/``.
        labels: ``"endocardium"`` (the cavity) or ``"both"`` (cavity and myocardium).
        subjects: only these patients (their contour names, ``SC-HF-I-1``, or DICOM folders).
        negatives: add, at each contoured phase, the frames of the slices beyond the contoured
            ones (above the base, below the apex) with empty masks: the experts contour every
            slice that holds the ventricle, so these hold none, and a network that never sees
            them finds a ventricle in the atrium (``labels="endocardium"`` only).
    """

    def __init__(self, root: str | Path, *, labels: str = "endocardium",
                 subjects: list[str] | None = None, negatives: bool = True) -> None:  # fmt: skip
        root = Path(root)
        if not is_sunnybrook_folder(root):
            raise DatasetError("not the Sunnybrook layout (dicoms/ and contourfiles/)", root)
        if labels not in LABELS:
            raise DatasetError(f"labels={labels!r}: use {' or '.join(LABELS)}", root)
        self.source, self.name, self.task, self.modality = root, "sunnybrook", "segmentation", "MR"
        self.class_names, self.contours = list(LABELS[labels]), labels
        wanted = None if subjects is None else set(subjects)
        self.patients = [p for p in _patients(root)
                         if wanted is None or {p.name, p.series} & wanted]  # fmt: skip
        self.entries = []
        for patient in self.patients:
            for number, paths in sorted(
                _contour_files(root / "contourfiles" / patient.name).items()
            ):
                if "i" not in paths or (labels == "both" and "o" not in paths):
                    continue
                dicom = root / "dicoms" / patient.series / f"{number}.dcm"
                if not dicom.is_file():
                    raise DatasetError(f"drawn on {dicom.relative_to(root)}, which is missing",
                                       paths["i"])  # fmt: skip
                self.entries.append(Entry(
                    id=f"{patient.name}_{number:04d}", paths=(dicom,), subject=patient.name,
                    meta={"patient": patient.name, "series": patient.series, "file": dicom.name,
                          "contours": {k: str(v) for k, v in paths.items()}}))  # fmt: skip
            if negatives and labels == "endocardium":
                self.entries += _negatives(root, patient)
        if not self.entries:
            raise DatasetError("no contoured frames (i-contours) of the selected patients", root)

    def _load(self, index: int) -> Sample:
        entry = self.entries[index]
        load_image, _ = _lazy_io()
        frame = load_image(entry.paths[0])
        image = frame2d(frame)
        shape = image.array.shape
        if entry.meta.get("negative"):
            mask = np.zeros(shape, np.uint8)
        else:
            mask = contour_mask(Path(entry.meta["contours"]["i"]), shape)
        if self.contours == "both":
            outer = contour_mask(Path(entry.meta["contours"]["o"]), shape)
            mask = np.where(mask > 0, 1, np.where(outer > 0, 2, 0)).astype(np.uint8)
        labels = Image(mask, spacing=image.spacing, origin=image.origin,
                       direction=image.direction, role=Role.LABEL)  # fmt: skip
        meta = {"path": str(entry.paths[0]), **entry.meta}
        return Sample(image, None, labels, entry.id, entry.subject, None, meta)


def _positions(root: Path, patient: Patient) -> tuple[Image, dict[str, tuple[int, int]]]:
    """The patient's cine and the ``(phase, slice)`` of each of its files."""
    load_image, _ = _lazy_io()
    cine = load_image(root / "dicoms" / patient.series)
    where = {name: (t, z) for t, row in enumerate(cine.meta.get("frame_files", []))
             for z, name in enumerate(row)}  # fmt: skip
    if not where:
        raise DatasetError("not a cine series (one time point)", root / "dicoms" / patient.series)
    return cine, where


def _negatives(root: Path, patient: Patient) -> list[Entry]:
    """Frames beyond the contoured slices at each contoured phase (see ``negatives``)."""
    _, where = _positions(root, patient)
    by_position = {v: k for k, v in where.items()}
    contoured: dict[int, set[int]] = {}
    for number, paths in _contour_files(root / "contourfiles" / patient.name).items():
        if "i" in paths and f"{number}.dcm" in where:
            t, z = where[f"{number}.dcm"]
            contoured.setdefault(t, set()).add(z)
    slices = 1 + max(z for _, z in where.values())
    out = []
    for t, done in sorted(contoured.items()):
        for z in range(slices):
            if min(done) <= z <= max(done) or (t, z) not in by_position:
                continue
            name = by_position[(t, z)]
            out.append(Entry(id=f"{patient.name}_{int(name.split('.')[0]):04d}",
                             paths=(root / "dicoms" / patient.series / name,),
                             subject=patient.name,
                             meta={"patient": patient.name, "series": patient.series,
                                   "file": name, "negative": True, "phase": t,
                                   "slice": z}))  # fmt: skip
    return out


def frame2d(frame: Image) -> Image:
    """A one-slice DICOM image ``(1, H, W)`` as the 2D image of its stored pixel grid."""
    array = np.asarray(frame.array, np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DatasetError(f"expected one 2D frame, found shape {frame.array.shape}",
                           frame.meta.get("path"))  # fmt: skip
    meta = {k: v for k, v in frame.meta.items() if k in ("path", "series_uid")}
    return Image(array, spacing=tuple(frame.spacing[:2]), modality=frame.modality, meta=meta)


def contour_volumes(root: str | Path, patient: str) -> dict[str, Any]:
    """The expert reference of one patient (module notes): per contoured phase the cavity
    volume (ml), end-diastole and end-systole with their phases, stroke volume and EF (%)."""
    root = Path(root)
    found = [p for p in _patients(root) if patient in (p.name, p.series)]
    if not found:
        raise DatasetError(f"no patient {patient!r}", root)
    chosen = found[0]
    cine, where = _positions(root, chosen)
    from medlens.measure.cardiac import cardiac_indices, volume_curve

    dx, dy, dz = (float(v) for v in cine.spacing)
    areas: dict[int, dict[int, float]] = {}
    for number, paths in _contour_files(root / "contourfiles" / chosen.name).items():
        if "i" not in paths:
            continue
        if f"{number}.dcm" not in where:
            raise DatasetError(f"drawn on {number}.dcm, not a frame of the cine", paths["i"])
        t, z = where[f"{number}.dcm"]
        mask = contour_mask(paths["i"], cine.array.shape[-2:])
        areas.setdefault(t, {})[z] = float(mask.sum()) * dx * dy
    phases = sorted(areas)
    if len(phases) < 2:
        raise DatasetError(f"contours on {len(phases)} phase(s): EF needs two", root)
    table = np.array([[areas[t].get(z, 0.0) for z in range(cine.array.shape[1])] for t in phases])
    volumes = volume_curve(table, dz)
    return {"patient": chosen.name, "series": chosen.series,
            **cardiac_indices(volumes, phases),
            "volumes_ml": {t: float(v) for t, v in zip(phases, volumes, strict=True)},
            "slices": {t: sorted(areas[t]) for t in phases},
            "areas_mm2": {t: areas[t] for t in phases}}  # fmt: skip
