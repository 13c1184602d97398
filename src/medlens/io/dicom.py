"""DICOM reading: single files, folders and DICOMDIRs with several series.

* A folder (searched recursively) or a DICOMDIR is split into series by SeriesInstanceUID.
* A series is assembled by position along the slice normal, rescaled, with spacing from positions;
  several time points at each position give a 4D ``(t, z, y, x)`` image.
* Enhanced multi-frame files are read frame by frame from their functional groups.
* Compressed transfer syntaxes (JPEG, JPEG 2000, JPEG-LS, RLE) decode through pydicom's plugins.

Files in a folder that are not DICOM at all (no ``DICM`` marker, no ``.dcm`` name) are skipped;
a file that claims to be DICOM and is corrupt is an error naming it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens.errors import ImageReadError, MultipleSeriesError, SeriesError
from medlens.image import Image
from medlens.io._detect import looks_like_raw_dicom
from medlens.io._dicom_assemble import SliceSpacingWarning, assemble
from medlens.io._dicom_display import PROJECTION_XRAY
from medlens.io._dicom_display import presentation as to_presentation
from medlens.io._dicom_frames import frames_from_dataset, read_dataset

__all__ = [
    "SeriesInfo",
    "SliceSpacingWarning",
    "find_dicom_files",
    "is_dicom_file",
    "list_series",
    "read_dicom",
]

_NOT_DICOM_SUFFIXES = {
    ".txt", ".md", ".csv", ".json", ".xml", ".html", ".pdf", ".png", ".jpg", ".jpeg", ".nii",
    ".gz", ".zip", ".py", ".log", ".ini", ".db", ".bmp", ".tif", ".tiff",
}  # fmt: skip
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


@dataclass
class SeriesInfo:
    """One series found in a folder, from headers only."""

    uid: str
    files: list[Path]
    modality: str | None = None
    description: str | None = None
    study_uid: str | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "series_uid": self.uid,
            "modality": self.modality,
            "description": self.description,
            "files": len(self.files),
            "frames": self.frames,
            "rows": self.rows,
            "columns": self.columns,
        }


def read_dicom(
    path: str | Path,
    *,
    series_uid: str | None = None,
    strict: bool = True,
    presentation: bool | str = False,
    suv: str | None = None,
    philips_scale: bool = False,
) -> Image:
    """Read a DICOM file, folder or DICOMDIR into one :class:`Image`.

    Values are the modality's (rescaled: HU for CT, Bq/ml for PET); colour is RGB.

    Args:
        path: a single file (classic or enhanced multi-frame), a folder, or a DICOMDIR.
        series_uid: which series to read when there are several.
        strict: raise on missing slices (otherwise warn).
        presentation: ``True``: what the viewer shows, in [0, 1] (VOI window or LUT, MONOCHROME1
            inverted; see :mod:`medlens.io._dicom_display`); ``"auto"``: so for projection X-ray
            (CR, DX, MG, XA, RF), modality values otherwise.
        suv: ``"bw"``, ``"lbm"`` or ``"bsa"``: PET values as SUV (``meta["suv_factor"]``).
        philips_scale: Philips MR: quantitative values ``(SV * RS + RI) / (RS * SS)`` with the
            private Scale Slope SS (2005,100E) instead of the displayed values ``SV * RS + RI``.
    """
    with _quiet_uids():
        return _read_dicom(Path(path), series_uid, strict, presentation, suv, philips_scale)


@contextlib.contextmanager
def _quiet_uids():
    """UIDs with leading zeros (Sunnybrook's) are read as they are, without pydicom's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR UI")
        yield


def _read_dicom(path: Path, series_uid, strict, presentation, suv, philips_scale) -> Image:
    if path.is_file() and path.name.upper() != "DICOMDIR":
        ds = read_dataset(path)
        if "DirectoryRecordSequence" in ds:
            frames = _series_frames(path, _dicomdir_files(path, ds), series_uid)
        else:
            frames = frames_from_dataset(ds, path)
    else:
        frames = _series_frames(path, find_dicom_files(path), series_uid)
    if philips_scale:
        _philips_quantitative(frames, path)
    image = assemble(frames, path, strict=strict)
    if philips_scale:
        image.meta["philips_scale"] = True
    return _as_requested(image, frames, path, presentation, suv)


def _philips_quantitative(frames, source: Path) -> None:
    """Each frame's rescale turned into Philips' floating-point (quantitative) scale."""
    for frame in frames:
        try:
            block = frame.dataset.private_block(0x2005, "Philips MR Imaging DD 001")
            scale = float(block[0x0E].value)
        except (KeyError, TypeError, ValueError):
            raise ImageReadError(
                "no Philips private Scale Slope (2005,100E): not a Philips MR image, or the "
                "private attributes were removed",
                frame.path,
            ) from None
        if not (np.isfinite(scale) and scale != 0):
            raise ImageReadError(f"Philips Scale Slope {scale} is not usable", frame.path)
        slope, intercept = frame.slope, frame.intercept
        frame.slope, frame.intercept = 1.0 / scale, intercept / (slope * scale)


def _as_requested(image: Image, frames, source: Path, presentation, suv) -> Image:
    """SUV or presentation values when asked for (modality values otherwise)."""
    modality = str(image.modality or "")
    if suv is not None:
        from medlens.io._dicom_suv import suv_factor

        unique = list({id(f.dataset): f.dataset for f in frames}.values())
        factor, details = suv_factor(unique, suv, source)
        meta = {**image.meta, "suv_factor": factor, "suv": details, "units": f"SUV{suv}"}
        array = image.array.astype(np.float32) * np.float32(factor)
        return image.replace(array=array, meta=meta)
    if presentation == "auto":
        presentation = modality in PROJECTION_XRAY
    if presentation and "channel" not in image.leading:
        values, details = to_presentation(image.array, frames[0].dataset, source)
        return image.replace(array=values, meta={**image.meta, **details, "presentation": True})
    return image


def list_series(path: str | Path) -> list[SeriesInfo]:
    """Series in a folder or DICOMDIR (or the one series of a file), reading headers only."""
    path = Path(path)
    files = [path] if path.is_file() and path.name.upper() != "DICOMDIR" else find_dicom_files(path)
    series: dict[str, SeriesInfo] = {}
    with _quiet_uids():
        for file in files:
            ds = read_dataset(file, stop_before_pixels=True)
            if "DirectoryRecordSequence" in ds:
                return list_series_of(_dicomdir_files(file, ds))
            _add_to_series(series, file, ds)
    return _sorted_series(series)


def list_series_of(files: list[Path]) -> list[SeriesInfo]:
    series: dict[str, SeriesInfo] = {}
    for file in files:
        _add_to_series(series, file, read_dataset(file, stop_before_pixels=True))
    return _sorted_series(series)


def find_dicom_files(folder: str | Path) -> list[Path]:
    """Candidate DICOM files under ``folder`` (recursively), or the files a DICOMDIR lists."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError("no such file or folder", folder)
    if folder.is_file():  # a DICOMDIR
        return _dicomdir_files(folder, read_dataset(folder))
    dicomdir = folder / "DICOMDIR"
    if dicomdir.is_file():
        return _dicomdir_files(dicomdir, read_dataset(dicomdir))
    found: list[Path] = []
    seen_any = False
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            seen_any = True
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            candidate = Path(root) / name
            if is_dicom_file(candidate):
                found.append(candidate)
    if not found:
        problem = "folder holds no DICOM files" if seen_any else "folder is empty"
        raise ImageReadError(problem, folder)
    return found


def _series_frames(source: Path, files: list[Path], series_uid: str | None) -> list:
    datasets = []
    for file in files:
        ds = read_dataset(file)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            continue  # presentation states, structured reports, DICOMDIRs: not images
        datasets.append((file, ds))
    if not datasets:
        raise ImageReadError("no DICOM images found (only non-image objects)", source)
    by_series: dict[str, list] = defaultdict(list)
    for file, ds in datasets:
        by_series[str(ds.get("SeriesInstanceUID", ""))].append((file, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise SeriesError(
                f"no series {series_uid} here; found {', '.join(sorted(by_series))}", source
            )
        chosen = by_series[series_uid]
    elif len(by_series) > 1:
        listed = "; ".join(
            f"{uid or '(no SeriesInstanceUID)'} "
            f"({items[0][1].get('Modality', '?')}, {len(items)} files)"
            for uid, items in sorted(by_series.items(), key=lambda kv: -len(kv[1]))
        )
        raise MultipleSeriesError(
            f"holds {len(by_series)} series, choose one with series_uid: {listed}", source
        )
    else:
        chosen = next(iter(by_series.values()))
    return [frame for file, ds in chosen for frame in frames_from_dataset(ds, file)]


def _dicomdir_files(dicomdir: Path, ds) -> list[Path]:
    """Instance files referenced by a DICOMDIR's image records, resolved beside it."""
    root = dicomdir.parent
    files = []
    records = ds.get("DirectoryRecordSequence")
    if records is None:
        raise ImageReadError("DICOMDIR without its Directory Record Sequence (corrupt?)", dicomdir)
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [str(file_id)] if isinstance(file_id, str) else [str(p) for p in file_id]
        if any(p in ("", ".", "..") or any(c in p for c in "/\\:\0") for p in parts):
            shown = "\\".join(parts)[:120]
            raise ImageReadError(f"DICOMDIR lists {shown!r}, outside its file-set folder", dicomdir)
        candidate = root.joinpath(*parts)
        if not candidate.exists():
            raise ImageReadError(f"DICOMDIR lists {'/'.join(parts)}, which is missing", dicomdir)
        files.append(candidate)
    if not files:
        raise ImageReadError("DICOMDIR references no files", dicomdir)
    return files


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` looks like a DICOM file: by suffix, else by its header (no parsing)."""
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES:
        return True
    if suffix in _NOT_DICOM_SUFFIXES:
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return looks_like_raw_dicom(head)


def _add_to_series(series: dict[str, SeriesInfo], file: Path, ds) -> None:
    if "Rows" not in ds:
        return
    uid = str(ds.get("SeriesInstanceUID", ""))
    info = series.get(uid)
    if info is None:
        info = series[uid] = SeriesInfo(
            uid=uid,
            files=[],
            modality=str(ds.get("Modality", "")) or None,
            description=str(ds.get("SeriesDescription", "")) or None,
            study_uid=str(ds.get("StudyInstanceUID", "")) or None,
            rows=int(ds.Rows),
            columns=int(ds.Columns),
        )
    info.files.append(file)
    info.frames += int(ds.get("NumberOfFrames", 1) or 1)


def _sorted_series(series: dict[str, SeriesInfo]) -> list[SeriesInfo]:
    return sorted(series.values(), key=lambda s: (-len(s.files), s.uid))
