"""HC18 fetal head ultrasound: read the raw challenge layout, or convert it to a standard one.

Raw layout: ``images/NNN_HC.png`` (``NNN_2HC.png`` ... for more images of one examination),
``annotations/NNN_HC_Annotation.png`` (the sonographer's ellipse, drawn as a one-pixel outline in
the challenge release) and ``labels.csv`` (``filename,pixel size(mm),head circumference (mm)``).

The outline is filled into a head mask; a filled annotation is kept as it is. Either way the
result is verified to be a solid region, because a filled outline that did not close leaves just
the outline and would silently train a model on rings. Subjects are the three-digit prefix, so
``100_2HC.png`` and ``100_HC.png`` are never split apart.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_text, ensure_outside
from medlens.data.dataset import Dataset, Entry, Sample, _lazy_io, _progress, as_label_map
from medlens.errors import DatasetError, GeometryError
from medlens.image import Image, Role

__all__ = [
    "HC18Case",
    "HC18Dataset",
    "convert_hc18",
    "ellipse_circumference",
    "fill_outline",
    "hc18_subject",
    "is_hc18_folder",
    "read_hc18_labels",
]

LABELS_CSV = "labels.csv"
_SUBJECT = re.compile(r"^(\d{3})_")
_CLOSING_RADII = (1, 2, 3, 5, 8)
_SOLIDITY = 3.0  # a filled head has far more pixels than boundary pixels; an outline has 1:1
_MAX_LISTED = 3


@dataclass(frozen=True)
class HC18Case:
    """One row of ``labels.csv``."""

    filename: str
    pixel_size: float
    hc_mm: float
    line: int

    @property
    def stem(self) -> str:
        return self.filename.rsplit(".", 1)[0]

    @property
    def subject(self) -> str:
        return hc18_subject(self.filename)

    @property
    def annotation(self) -> str:
        return f"{self.stem}_Annotation.png"


def hc18_subject(filename: str) -> str:
    """Subject of an HC18 image: its three-digit prefix (``100_2HC.png`` -> ``100``)."""
    match = _SUBJECT.match(Path(filename).name)
    return match.group(1) if match else Path(filename).name.split("_", 1)[0]


def is_hc18_folder(root: str | Path) -> bool:
    """Whether ``root`` has the raw HC18 layout (images/, annotations/, labels.csv)."""
    root = Path(root)
    return (
        (root / "images").is_dir()
        and (root / "annotations").is_dir()
        and (root / LABELS_CSV).is_file()
    )


def read_hc18_labels(root: str | Path) -> list[HC18Case]:
    """The cases of ``labels.csv`` in file order."""
    path = Path(root) / LABELS_CSV
    if not path.is_file():
        raise DatasetError("no labels.csv (expected the HC18 layout)", Path(root))
    cases = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or len(header) < 3:
                raise DatasetError(
                    "expected columns filename, pixel size(mm), head circumference (mm)", path
                )
            for row in reader:
                if not row or not row[0].strip():
                    continue
                try:
                    case = HC18Case(row[0].strip(), float(row[1]), float(row[2]), reader.line_num)
                except (ValueError, IndexError):
                    raise DatasetError(
                        f"line {reader.line_num}: malformed row {row}"[:300], path
                    ) from None
                cases.append(_checked_case(case, path))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"not a readable CSV file ({exc})", path) from None
    if not cases:
        raise DatasetError("labels.csv lists no images", path)
    return cases


def _checked_case(case: HC18Case, path: Path) -> HC18Case:
    """A row's values as the data allow: a plain file name, a positive finite pixel size."""
    name = case.filename
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise DatasetError(f"line {case.line}: {name[:80]!r} is not a plain file name", path)
    if not (math.isfinite(case.pixel_size) and case.pixel_size > 0):
        raise DatasetError(f"line {case.line}: pixel size {case.pixel_size} is not positive", path)
    if not math.isfinite(case.hc_mm):
        raise DatasetError(f"line {case.line}: head circumference is not a number", path)
    return case


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _is_solid(mask: np.ndarray) -> bool:
    from scipy import ndimage

    area = int(mask.sum())
    boundary = area - int(ndimage.binary_erosion(mask).sum())
    return area > 0 and area >= _SOLIDITY * boundary


def fill_outline(
    annotation: np.ndarray, *, name: str | Path | None = None
) -> tuple[np.ndarray, dict]:
    """Fill a closed outline (or keep a filled region) and verify a solid mask came out.

    Gaps in the outline are closed with growing disks (radius 1 to 8 pixels) around the fill.

    Returns:
        The mask as uint8 0/1, and how it was made: ``{"annotation": "outline" | "filled",
        "closing_radius": int}`` (0 when no closing was needed).

    Raises:
        DatasetError: empty annotation, or an outline that stays open.
    """
    from scipy import ndimage

    drawn = np.asarray(annotation) > 0
    if not drawn.any():
        raise DatasetError("annotation is empty", name)
    if _is_solid(drawn):
        return ndimage.binary_fill_holes(drawn).astype(np.uint8), {
            "annotation": "filled",
            "closing_radius": 0,
        }
    filled = ndimage.binary_fill_holes(drawn)
    if _is_solid(filled):
        return filled.astype(np.uint8), {"annotation": "outline", "closing_radius": 0}
    for radius in _CLOSING_RADII:
        # Closing done around the fill: dilate (bridges gaps up to 2 * radius), fill, erode back.
        # Closing before filling would not do: a disk never bridges a gap in a straight line.
        disk = _disk(radius)
        pad = radius + 1  # so the erosion does not eat into the image border
        grown = ndimage.binary_dilation(np.pad(drawn, pad), structure=disk)
        solid = ndimage.binary_erosion(ndimage.binary_fill_holes(grown), structure=disk)
        filled = solid[pad:-pad, pad:-pad] | drawn
        if _is_solid(filled):
            return filled.astype(np.uint8), {"annotation": "outline", "closing_radius": radius}
    raise DatasetError(
        f"outline does not close (gaps wider than {2 * _CLOSING_RADII[-1]} pixels, or it is cut "
        "by the image border): cannot fill it into a head mask",
        name,
    )


def ellipse_circumference(mask: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Circumference of the ellipse with the region's second moments (Ramanujan's formula).

    For a filled ellipse the covariance of its pixel positions has eigenvalues ``a**2 / 4`` and
    ``b**2 / 4``, so the fit needs no contour tracing. ``spacing`` is ``(x, y)`` in mm.
    """
    ys, xs = np.nonzero(np.asarray(mask))
    if xs.size < 3:
        return 0.0
    points = np.stack([xs * float(spacing[0]), ys * float(spacing[1])])
    eigen = np.clip(np.linalg.eigvalsh(np.cov(points)), 0.0, None)
    b, a = 2.0 * np.sqrt(eigen)
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return float(np.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + np.sqrt(4.0 - 3.0 * h))))


def _select(cases: list[HC18Case], subjects: Iterable[str | int] | None, limit: int | None):
    if subjects is not None:
        wanted = {f"{int(s):03d}" if str(s).isdigit() else str(s) for s in subjects}
        cases = [c for c in cases if c.subject in wanted]
    if limit is not None:
        order = list(dict.fromkeys(c.subject for c in cases))[: max(0, int(limit))]
        keep = set(order)
        cases = [c for c in cases if c.subject in keep]
    return cases


class HC18Dataset(Dataset):
    """The raw HC18 training layout read directly: ultrasound image + filled head mask.

    Spacing is the pixel size from ``labels.csv``; each sample's ``meta`` holds ``pixel_size``
    and the reference ``hc_mm``.

    Args:
        root: folder with ``images/``, ``annotations/`` and ``labels.csv``.
        subjects: only these subjects (``"000"`` or ``0``).
        limit: only the first ``limit`` subjects (all their images), for quick runs.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        subjects: Iterable[str | int] | None = None,
        limit: int | None = None,
    ) -> None:
        root = Path(root)
        if not is_hc18_folder(root):
            raise DatasetError("not the HC18 layout (images/, annotations/, labels.csv)", root)
        self.source = root
        self.name = "hc18"
        self.task = "segmentation"
        self.class_names = ["background", "head"]
        self.modality = "US"
        self.cases = _select(read_hc18_labels(root), subjects, limit)
        if not self.cases:
            raise DatasetError("no images of the selected subjects in labels.csv", root)
        missing = []
        for case in self.cases:
            for path in (root / "images" / case.filename, root / "annotations" / case.annotation):
                if not path.is_file():
                    missing.append(f"line {case.line}: {path.relative_to(root)}")
        if missing:
            listed = "; ".join(missing[:_MAX_LISTED]) + (
                ", ..." if len(missing) > _MAX_LISTED else ""
            )
            raise DatasetError(
                f"{len(missing)} files named are missing ({listed})", root / LABELS_CSV
            )
        self.entries = [
            Entry(
                id=c.stem,
                paths=(root / "images" / c.filename,),
                mask_path=root / "annotations" / c.annotation,
                subject=c.subject,
                meta={"pixel_size": c.pixel_size, "hc_mm": c.hc_mm, "filename": c.filename},
            )
            for c in self.cases
        ]

    def reference_hc(self) -> np.ndarray:
        """The sonographers' head circumferences (mm), in sample order."""
        return np.asarray([c.hc_mm for c in self.cases], dtype=np.float64)

    def _load(self, index: int) -> Sample:
        entry = self.entries[index]
        assert entry.mask_path is not None
        image, mask, how = load_hc18_case(entry.paths[0], entry.mask_path, entry.meta["pixel_size"])
        meta = {
            "path": str(entry.paths[0]),
            "label_path": str(entry.mask_path),
            **entry.meta,
            **how,
        }
        return Sample(image, None, mask, entry.id, entry.subject, None, meta)


def load_hc18_case(
    image_path: Path, annotation_path: Path, pixel_size: float
) -> tuple[Image, Image, dict]:
    """Image and filled head mask sharing one grid with spacing ``(pixel_size, pixel_size)``."""
    load_image, _ = _lazy_io()
    raw = load_image(image_path)
    annotation = as_label_map(load_image(annotation_path))
    if raw.spatial_shape != annotation.spatial_shape:
        raise GeometryError(
            f"annotation shape {annotation.spatial_shape} != image shape {raw.spatial_shape}",
            annotation_path,
        )
    filled, how = fill_outline(annotation.array, name=annotation_path)
    image = raw.replace(spacing=(pixel_size, pixel_size), modality="US")
    mask = image.with_array(filled, role=Role.LABEL, modality=None, leading=())
    mask.meta = {"path": str(annotation_path)}
    return image, mask, how


def convert_hc18(
    src: str | Path,
    dst: str | Path,
    *,
    progress: bool = True,
    subjects: Iterable[str | int] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert raw HC18 into an nnU-Net v2 style folder that :class:`DecathlonDataset` reads.

    Writes ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` (2D NIfTI, so the
    pixel size is kept as spacing), ``hc18_labels.csv`` (reference HC per case),
    ``subjects.json`` (case -> subject) and, last, ``dataset.json``: an interrupted conversion
    leaves no ``dataset.json`` and so is never mistaken for a complete dataset.

    Args:
        src: raw HC18 folder (read only; ``dst`` must lie outside it).
        dst: output folder; must be empty or absent unless ``overwrite``.
        progress: show a progress bar.
        subjects: convert only these subjects.
        limit: convert only the first ``limit`` subjects.
        overwrite: replace an earlier conversion in ``dst`` (stale case files are removed).

    Returns:
        ``{"images", "subjects", "output", "seconds", "annotations", "closed_gaps"}``:
        ``annotations`` counts how many were drawn as outlines or already filled, and
        ``closed_gaps`` names the cases whose outline needed its gaps closed.
    """
    src, dst = Path(src), Path(dst)
    dataset = HC18Dataset(src, subjects=subjects, limit=limit)
    ensure_outside(dst, src)
    if dst.exists() and not dst.is_dir():
        raise DatasetError("output exists and is not a folder", dst)
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise DatasetError("output folder is not empty (pass overwrite=True to replace it)", dst)
    _, save_image = _lazy_io()
    (dst / "dataset.json").unlink(missing_ok=True)  # invalid until the conversion completes
    start = time.perf_counter()
    written: set[Path] = set()
    closed: list[str] = []
    kinds: dict[str, int] = {}
    for i in _progress(range(len(dataset)), "Converting HC18", progress):
        sample = dataset[i]
        image_out = dst / "imagesTr" / f"{sample.id}_0000.nii.gz"
        label_out = dst / "labelsTr" / f"{sample.id}.nii.gz"
        save_image(sample.image, image_out)
        save_image(sample.mask, label_out)
        written.update((image_out, label_out))
        if sample.meta.get("closing_radius"):
            closed.append(sample.id)
        kind = str(sample.meta.get("annotation"))
        kinds[kind] = kinds.get(kind, 0) + 1
    for folder in ("imagesTr", "labelsTr"):
        for stale in (dst / folder).glob("*.nii.gz"):
            if stale not in written:
                stale.unlink()

    rows = io.StringIO()
    out = csv.writer(rows, lineterminator="\n")
    out.writerow(["filename", "pixel size(mm)", "head circumference (mm)", "case", "subject"])
    for case in dataset.cases:
        out.writerow(
            [case.filename, repr(case.pixel_size), repr(case.hc_mm), case.stem, case.subject]
        )
    atomic_write_text(dst / "hc18_labels.csv", rows.getvalue())
    subject_map = {c.stem: c.subject for c in dataset.cases}
    atomic_write_text(dst / "subjects.json", json.dumps(subject_map, indent=1) + "\n")
    spec = {
        "name": "HC18",
        "description": "Fetal head ultrasound, head masks filled from the sonographers' ellipses",
        "reference": "van den Heuvel et al., PLoS ONE 13(8): e0200412 (2018)",
        "licence": "CC BY 4.0",
        "channel_names": {"0": "US"},
        "labels": {"background": 0, "head": 1},
        "numTraining": len(dataset),
        "file_ending": ".nii.gz",
    }
    atomic_write_text(dst / "dataset.json", json.dumps(spec, indent=2) + "\n")
    return {
        "images": len(dataset),
        "subjects": len(set(subject_map.values())),
        "output": str(dst),
        "seconds": round(time.perf_counter() - start, 2),
        "annotations": kinds,
        "closed_gaps": closed,
    }
