"""DICOM Segmentation output: a label map on a DICOM series' grid as a SEG object referencing it.

:func:`write_dicom_seg` turns a predicted label map into a ``BINARY`` DICOM Segmentation
(highdicom) that references the instances of the series it was predicted from, so a PACS or a
viewer shows it over the source images.

* **Segments**: one per foreground value of the model (every non-zero entry of
  ``label_values``), numbered 1, 2, ... in ascending value order whether or not the value occurs
  in this prediction, so segment numbers mean the same class in every file a model writes.
  Segments a prediction does not contain have no frames; frames empty for a segment are left
  out. An all-background prediction is written with every frame of every segment present and
  empty (a SEG cannot hold no frames at all): the file always exists and always says "nothing
  found" explicitly. Its size is then segments x slices x rows x columns / 8 bytes.
* **Labels and codes**: the segment label is the class name (``class_names`` indexed by label
  value, medlens' convention, or a ``{value: name}`` mapping), else ``label <value>``; the label
  value itself is kept in each segment's Segment Description. The property category and type
  are the generic SNOMED CT "Tissue" unless ``property_codes`` says better. The algorithm is
  AUTOMATIC, identified by ``algorithm_name`` and medlens' version.
* **Frames**: each source slice is placed by its own ImagePositionPatient in the label map's
  grid (the index along the slice normal, exactly as the medlens DICOM reader orders slices),
  and the slice's orientation, size and pixel spacing must match the label map's: a label map
  on another grid is an error, never a silently shifted SEG.
* **Incomplete source UIDs**: anonymisers sometimes blank the UIDs. A blank SOP Instance or SOP
  Class UID is taken from the file meta header (PS3.10 requires them to be equal); blank Study
  or Series Instance UIDs are replaced by UIDs derived from the instances' UIDs (the same each
  time) with a :class:`DicomSegWarning`, since the SEG must name a study and a series. The source
  files are never modified.

The source may be a series of single-frame images or one (enhanced) multi-frame image; its
headers are parsed by the medlens DICOM reader's own code, so a corrupt file is named the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import GeometryError, ImageReadError, MedlensError, SeriesError
from medlens.image import Image

__all__ = ["DicomSegWarning", "write_dicom_seg"]

_SLICE_TOL = 0.25  # voxels: how far a source slice may sit from the label map's grid
_COSINE_TOL = 1e-3
_MAX_LO = 64  # characters of a DICOM LO value (segment labels)


class DicomSegWarning(UserWarning):
    """The SEG was written, but the source series lacked something it should have had."""


def write_dicom_seg(
    labels: Image,
    series_dir: str | Path,
    output: str | Path,
    *,
    label_values: Sequence[int],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    algorithm_name: str = "medlens",
    algorithm_version: str | None = None,
    property_codes: Mapping[int, tuple[Any, Any]] | None = None,
    series_description: str = "medlens segmentation",
    series_number: int | None = None,
) -> Path:
    """Write ``labels`` (a label map on ``series_dir``'s grid) as a DICOM Segmentation.

    Args:
        labels: the label map, array ``(z, y, x)`` on the grid the medlens DICOM reader gives
            for ``series_dir`` (as :func:`medlens.tasks.segmentation.predict.predict_image`
            returns it).
        series_dir: the folder (or DICOMDIR) of the source series.
        output: the ``.dcm`` file to write (atomically; its folder is created).
        label_values: the model's label values; each non-zero one becomes a segment.
        class_names: names indexed by label value, or a ``{value: name}`` mapping.
        algorithm_name: the segmentation algorithm's name in the SEG.
        algorithm_version: its version (default: medlens' version).
        property_codes: ``{value: (category, type)}`` coded concepts (pydicom ``Code`` or
            highdicom ``CodedConcept``) for values whose anatomy is known.
        series_description: the SEG series' description.
        series_number: the SEG series' number (default: the source's plus 1000, else 1000).

    Raises:
        ImageReadError: the series folder is missing, empty or holds a corrupt file (named).
        SeriesError: no usable single-frame series, or one without geometry.
        GeometryError: ``labels`` is not on the series' grid.
        MedlensError: ``labels`` holds values that are not among ``label_values``.
    """
    import highdicom as hd

    from medlens import __version__
    from medlens._atomic import atomic_path

    series_dir, output = Path(series_dir), Path(output)
    if labels.spatial_dims != 3 or labels.leading:
        raise MedlensError(
            f"a DICOM SEG needs a 3D label map, got shape {labels.array.shape} "
            f"(leading axes {labels.leading})",
            output,
        )
    foreground = sorted({int(v) for v in label_values if int(v) != 0})
    if not foreground:
        raise MedlensError("no foreground label values: nothing to write as segments", output)
    segments = _segment_numbers(np.asarray(labels.array), foreground, output)
    sources, order = _source_datasets(series_dir, labels)
    segments = segments[order]  # frame i of the sources' frames is slice order[i]
    descriptions = _descriptions(
        foreground, class_names, algorithm_name, algorithm_version or __version__, property_codes
    )
    if series_number is None:
        number = sources[0].get("SeriesNumber")
        series_number = int(number) + 1000 if isinstance(number, int) else 1000
    with warnings.catch_warnings():
        # highdicom's advice on the source's patient name: not ours to fix in a derived object
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=segments,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medlens",
            manufacturer_model_name=algorithm_name[:_MAX_LO],
            software_versions=__version__,
            device_serial_number="none",
            content_label="MEDLENS",
            content_description=f"{algorithm_name} segmentation"[:_MAX_LO],
            series_description=series_description[:_MAX_LO],
            omit_empty_frames=bool(segments.any()),  # all background: every frame, all empty
        )
    with atomic_path(output) as tmp:
        seg.save_as(tmp)
    return output


# ----------------------------------------------------------------------------- the label map
def _segment_numbers(array: np.ndarray, foreground: list[int], output: Path) -> np.ndarray:
    """The label map as segment numbers (highdicom's label-map style): value -> 1, 2, ..."""
    unknown = [v for v in np.unique(array).tolist() if v != 0 and v not in foreground]
    if unknown:
        raise MedlensError(
            f"label map holds values {unknown[:5]} that are not among the label values "
            f"{foreground}",
            output,
        )
    dtype = np.uint8 if len(foreground) < 256 else np.uint16
    lut = np.zeros(max(foreground) + 1, dtype=dtype)
    lut[foreground] = np.arange(1, len(foreground) + 1, dtype=dtype)
    return lut[array.astype(np.int64, copy=False)]


def _descriptions(foreground, class_names, algorithm_name, version, property_codes) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:_MAX_LO],
        family=codes.cid7162.ArtificialIntelligence,
        version=str(version),
    )
    if class_names is None:
        names: dict[int, str] = {}
    elif isinstance(class_names, Mapping):
        names = {int(v): str(n) for v, n in class_names.items()}
    else:  # medlens' convention: class_names[v] names label value v
        names = dict(enumerate(str(n) for n in class_names))
    out = []
    for number, value in enumerate(foreground, start=1):
        category, kind = (property_codes or {}).get(value, (codes.SCT.Tissue, codes.SCT.Tissue))
        label = (names.get(value) or "").strip() or f"label {value}"
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:_MAX_LO],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        description.SegmentDescription = f"label value {value}"
        out.append(description)
    return out


# ----------------------------------------------------------------------------- the source series
def _source_datasets(series_dir: Path, labels: Image) -> tuple[list, np.ndarray]:
    """The series' instances as highdicom wants them, and the slice of ``labels`` each of their
    frames shows: classic slices sorted by position (then frame ``i`` is slice ``i``), or one
    multi-frame instance with its frames in file order."""
    from medlens.io._dicom_frames import frames_from_dataset, read_dataset
    from medlens.io.dicom import find_dicom_files

    if not series_dir.exists():
        raise ImageReadError("no such DICOM series folder", series_dir)
    by_series: dict[str, list] = {}
    for file in find_dicom_files(series_dir):
        ds = read_dataset(file)  # the reader's own parsing: a corrupt file is named
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            continue  # DICOMDIR, structured report, presentation state: not images
        if ds.get("Modality") == "SEG":
            continue  # a segmentation beside the series is not part of it
        _complete_sop_uids(ds, file)
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((file, ds))
    if not by_series:
        raise SeriesError("no DICOM images found to reference", series_dir)
    wanted = labels.meta.get("series_uid")
    if wanted in by_series:
        chosen = by_series[wanted]
    elif len(by_series) == 1:
        chosen = next(iter(by_series.values()))
    else:
        raise SeriesError(
            f"holds {len(by_series)} series and the label map does not say which it belongs to",
            series_dir,
        )
    unique: dict[str, tuple] = {}
    for file, ds in chosen:  # the same instance twice (e.g. listed by a DICOMDIR) counts once
        unique.setdefault(str(ds.SOPInstanceUID), (file, ds))
    frames = [f for file, ds in unique.values() for f in frames_from_dataset(ds, file)]
    slices = _place(frames, labels, series_dir)
    multi = [f for f in frames if int(f.dataset.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(unique) > 1:
        raise SeriesError(
            "a DICOM SEG can reference one multi-frame image or a series of single-frame "
            f"images, not {len(unique)} instances with {len(frames)} frames",
            multi[0].path,
        )
    if multi:  # one enhanced image: its frames in file order
        datasets = [frames[0].dataset]
        order = np.asarray([slices[id(f)] for f in frames])
    else:
        by_slice = sorted(frames, key=lambda f: slices[id(f)])
        datasets = [f.dataset for f in by_slice]
        order = np.arange(len(by_slice))
    _complete_study_series_uids(datasets, series_dir)
    return datasets, order


def _complete_sop_uids(ds, file: Path, what: str = "a DICOM SEG") -> None:
    """SOP UIDs from the file meta where the dataset's are blank (in memory only), so that
    ``what`` (a SEG, an SR) can reference the image; none at all is a :class:`SeriesError`."""
    meta = getattr(ds, "file_meta", None)
    for name, fallback in (
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ("SOPClassUID", "MediaStorageSOPClassUID"),
    ):
        if not str(ds.get(name, "") or "").strip():
            value = str(meta.get(fallback, "") or "").strip() if meta is not None else ""
            if not value:
                raise SeriesError(f"the image has no {name}: {what} cannot reference it", file)
            setattr(ds, name, value)  # in memory only: the source file is never written


def _complete_study_series_uids(datasets: list, series_dir: Path) -> None:
    from pydicom.uid import generate_uid

    blank = [
        name
        for name in ("StudyInstanceUID", "SeriesInstanceUID")
        if not all(str(ds.get(name, "") or "").strip() for ds in datasets)
    ]
    if not blank:
        return
    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    for name in blank:
        uid = generate_uid(entropy_srcs=[name, *instances])
        for ds in datasets:
            setattr(ds, name, uid)
    warnings.warn(
        f"{series_dir}: the series has no {' or '.join(blank)} (anonymised?); the DICOM SEG "
        "names derived ones instead, so it matches its source by instance UIDs only",
        DicomSegWarning,
        stacklevel=4,
    )


def _place(frames: list, labels: Image, series_dir: Path) -> dict[int, int]:
    """The slice of ``labels`` each frame lies on (``id(frame) -> z``), checking that every frame
    fits the label map's grid and that every slice has exactly one frame."""
    depth, rows, columns = labels.spatial_shape
    direction = np.asarray(labels.direction)
    dx, dy = labels.spacing[0], labels.spacing[1]
    placed: dict[int, Any] = {}
    out: dict[int, int] = {}
    for frame in frames:
        file = frame.path
        if frame.position is None or frame.row_cosine is None:
            raise SeriesError("the image has no position or orientation: cannot place it", file)
        if (frame.rows, frame.columns) != (rows, columns):
            raise GeometryError(
                f"label map slices are {rows}x{columns}, the image is {frame.rows}x{frame.columns}",
                file,
            )
        if not (
            np.allclose(frame.row_cosine, direction[:, 0], atol=_COSINE_TOL)
            and np.allclose(frame.column_cosine, direction[:, 1], atol=_COSINE_TOL)
        ):
            raise GeometryError("the label map's orientation differs from the image's", file)
        spacing = frame.pixel_spacing or (1.0, 1.0)  # (between rows, between columns)
        if not np.allclose(spacing, (dy, dx), rtol=1e-3, atol=1e-4):
            raise GeometryError(
                f"pixel spacing {tuple(spacing)} differs from the label map's {(dy, dx)}", file
            )
        index = labels.world_to_index(frame.position)
        k = round(float(index[2]))
        if np.max(np.abs(index[:2])) > _SLICE_TOL or abs(index[2] - k) > _SLICE_TOL:
            raise GeometryError(
                f"the image at {np.round(frame.position, 2).tolist()} is not on a slice of the "
                f"label map's grid (index {np.round(index, 2).tolist()})",
                file,
            )
        if not 0 <= k < depth:
            raise GeometryError(f"the image lies outside the label map's {depth} slices", file)
        if k in placed:
            raise SeriesError(
                f"two images at slice {k} ({placed[k].path.name}, {file.name}): a temporal or "
                "mixed series cannot be referenced by a 3D SEG",
                series_dir,
            )
        placed[k] = frame
        out[id(frame)] = k
    if len(placed) != depth:
        missing = [k for k in range(depth) if k not in placed]
        raise GeometryError(
            f"the label map has {depth} slices, the series {len(placed)} "
            f"(no image for slice {missing[0]})",
            series_dir,
        )
    return out
