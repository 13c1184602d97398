"""Results as DICOM Structured Reports (TID 1500 measurement reports): classes and boxes.

Both writers make a Comprehensive 3D SR (highdicom) in the source's study, as a new series with
its own content date and time, that a PACS files beside the images and a viewer shows. The
observer is the device (medlens and the model's name); the algorithm's name and version are
recorded in every group; the report lists the series' instances as its evidence. Class codes
are private (``99MEDLENS``) unless noted: a site maps them to SNOMED CT where it has a code for
the finding.

:func:`write_classification_sr`: one measurement group (TID 1501) holding the finding (the
predicted class, as a qualitative evaluation), the probability of every class (measurements,
unit "1") and the decision threshold where one was tuned; the group references every source
instance.

:func:`write_detection_sr`: one planar ROI group (TID 1410) per box, in score order, each with

* the **region**: a closed rectangle (SCOORD ``POLYLINE`` of 5 points, column/row with (0, 0)
  the top-left corner of the top-left pixel, which is the boxes' own pixel convention; clipped
  to the image) on the image it was found in: the single-frame image of a 2D box; for a 3D box
  the slice (instance, or frame of a multi-frame image) nearest the box's centre along the
  slice normal, its key slice (a centre half-way between two slices takes the lower one along
  the normal). Planar SCOORDs on images are what viewers (OHIF among them) draw and what
  highdicom validates; a world-space SCOORD3D ROI (or SCOORD3D coordinates under the
  measurements, which highdicom refuses in a planar ROI group) is drawn by few viewers, and a
  volumetric ROI of one region per slice by fewer, so the 3D box travels as measurements:
* **measurements**: the detection score (``99MEDLENS`` "Detection score", unit "1": the
  detector's score, which is not a calibrated probability), the score threshold applied where
  one was, and for a 3D box its centre and its lengths along the patient's x, y and z axes
  (``99MEDLENS`` "Box centre x (LPS)", "Length along x (LPS)", ..., mm): centre -/+ half the
  length are the box's world corners (``boxes_mm``);
* the **finding type**: the class name as a ``99MEDLENS`` code (SNOMED CT for lesion, nodule,
  mass and tumour), and a tracking identifier ``"<class> <rank>"`` with a new UID.

A report without any box holds one group saying so (``99MEDLENS`` "Number of detections" 0),
so a PACS always receives an explicit "nothing found".
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import ImageReadError, MedlensError, SeriesError

__all__ = ["write_classification_sr", "write_detection_sr"]

SCHEME = "99MEDLENS"
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip
#: SNOMED CT findings for class names that are one (lower case -> code value, meaning)
_SCT_FINDINGS = {
    "lesion": ("52988006", "Lesion"),
    "nodule": ("27925004", "Nodule"),
    "mass": ("4147007", "Mass"),
    "tumor": ("108369006", "Tumor"),
    "tumour": ("108369006", "Tumor"),
}


def write_classification_sr(
    source: str | Path,
    output: str | Path,
    *,
    probabilities: Mapping[str, float],
    predicted: str | Sequence[str],
    model_name: str,
    model_version: str,
    threshold: float | Sequence[float] | None = None,
    series_uid: str | None = None,
    series_number: int = 9901,
) -> Path:
    """Write the SR of one classified DICOM image or series to ``output``.

    Args:
        source: the DICOM file, or the folder of the series, that was classified.
        probabilities: class name -> probability, as the predictor answered.
        predicted: the predicted class (multi-label: the classes predicted present).
        model_name, model_version: the algorithm identification (the run's name, medlens's
            version and the checkpoints' hash, for example).
        threshold: the tuned threshold of the decision, recorded as a measurement.
        series_uid: the series classified, where the folder ``source`` holds several.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = [Path(source)] if Path(source).is_file() else sorted(
        p for p in Path(source).rglob("*") if p.is_file() and not p.name.startswith(".")
    )  # fmt: skip
    evidence = []
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # not DICOM: skipped, as series readers do
            continue
        wanted = series_uid is None or ds.get("SeriesInstanceUID") == series_uid
        if wanted and "SOPInstanceUID" in ds and "StudyInstanceUID" in ds:
            evidence.append(ds)
    if not evidence:
        raise ImageReadError("no DICOM instance with study and SOP instance UIDs to report on",
                             Path(source))  # fmt: skip
    names = list(probabilities)
    chosen = [predicted] if isinstance(predicted, str) else list(predicted)
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"P{i}", SCHEME, f"Probability of {name}"[:64]),
            value=float(probabilities[name]),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
        )
        for i, name in enumerate(names)
    ]
    if threshold is not None:
        for i, value in enumerate([threshold] if isinstance(threshold, int | float) else threshold):
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept(f"T{i}", SCHEME, "Decision threshold"),
                value=float(value), unit=codes.UCUM.NoUnits, algorithm_id=algorithm))  # fmt: skip
    findings = [
        hd.sr.QualitativeEvaluation(
            name=codes.DCM.Finding,
            value=hd.sr.CodedConcept(f"C{names.index(name)}", SCHEME, str(name)[:64]),
        )
        for name in chosen
    ]
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="classification"),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=findings,
        source_images=sources,
    )
    return _write_report(evidence, [group], Path(output), model_name, series_number)


def write_detection_sr(
    source: str | Path,
    output: str | Path,
    *,
    boxes: Any,
    boxes_mm: Any,
    scores: Any,
    labels: Sequence[str],
    model_name: str,
    model_version: str,
    series_uid: str | None = None,
    score_threshold: float | None = None,
    series_number: int = 9902,
) -> Path:
    """Write the SR of the boxes found in one DICOM image or series to ``output``.

    Args:
        source: the DICOM file, or the folder of the series, the boxes were found in.
        boxes: ``(N, 4)`` 2D or ``(N, 6)`` 3D box corners ``x1, y1[, z1], x2, y2[, z2]`` in the
            input's pixels, 0 at the image's first corner (index coordinates + 0.5).
        boxes_mm: the same boxes' world (LPS) corners, mm (used in 3D).
        scores, labels: each box's score and class name.
        model_name, model_version: the algorithm identification.
        series_uid: the series the boxes belong to, where the folder ``source`` holds several.
        score_threshold: report only the boxes scoring at least this (recorded in each group);
            None: every box.
        series_number: the report's series number.

    Raises:
        ImageReadError: the source is missing, holds no DICOM image, or a corrupt file (named).
        SeriesError: several series and no ``series_uid``; a 3D box in a series without
            geometry; an image without SOP instance or study UIDs.
        MedlensError: boxes, scores and labels disagree, or 2D boxes for a multi-frame source.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source, output = Path(source), Path(output)
    boxes, world, scores = _box_arrays(boxes, boxes_mm, scores, labels, output)
    dims = boxes.shape[1] // 2
    evidence = _series_instances(source, series_uid)
    planes = [plane for ds in evidence for plane in _planes(ds)]
    if dims == 2 and len(planes) != 1:
        raise MedlensError(
            f"2D boxes belong on one single-frame image; the source has {len(planes)} frames",
            source,
        )
    order = [
        int(k)
        for k in np.argsort(-scores, kind="stable")
        if score_threshold is None or scores[k] >= score_threshold
    ]
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)

    def number(code: str, meaning: str, value: float, unit=codes.UCUM.NoUnits):
        name = hd.sr.CodedConcept(code, SCHEME, meaning)
        return hd.sr.Measurement(name=name, value=value, unit=unit, algorithm_id=algorithm)

    groups: list = []
    for rank, k in enumerate(order, start=1):
        plane = planes[0] if dims == 2 else _key_plane(planes, world[k], source)
        measurements = [number("SCORE", "Detection score", float(scores[k]))]
        if score_threshold is not None:
            measurements.append(number("SCORETHR", "Score threshold", float(score_threshold)))
        if dims == 3:  # the world box: centre and lengths along x, y, z (LPS, mm)
            lo, hi = world[k][:3], world[k][3:]
            for axis, letter in enumerate("xyz"):
                measurements.append(
                    number(
                        f"CEN{letter.upper()}",
                        f"Box centre {letter} (LPS)",
                        float((lo[axis] + hi[axis]) / 2),
                        codes.UCUM.Millimeter,
                    )
                )
            for axis, letter in enumerate("xyz"):
                measurements.append(
                    number(
                        f"LEN{letter.upper()}",
                        f"Length along {letter} (LPS)",
                        float(hi[axis] - lo[axis]),
                        codes.UCUM.Millimeter,
                    )
                )
        name = str(labels[k])
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{name} {rank}"
                ),
                referenced_region=_rectangle(boxes[k], plane),
                finding_type=_finding_type(name),
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
    if not groups:  # an explicit "nothing found", referencing what was looked at
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="detection"),
                algorithm_id=algorithm,
                measurements=[number("NDET", "Number of detections", 0.0)],
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence
                ],
            )
        )
    return _write_report(evidence, groups, output, model_name, series_number)


# ----------------------------------------------------------------------------- the boxes
def _box_arrays(boxes, boxes_mm, scores, labels, output: Path):
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] not in (4, 6):
        raise MedlensError(f"boxes must be (N, 4) or (N, 6) corners, got {boxes.shape}", output)
    world = np.asarray(boxes_mm, dtype=np.float64)
    if world.size == 0:
        world = world.reshape(0, boxes.shape[1])
    if world.ndim != 2 or world.shape[1] != boxes.shape[1]:
        raise MedlensError(f"world boxes {world.shape} do not match boxes {boxes.shape}", output)
    counts = {len(boxes), len(world), len(scores), len(labels)}
    if len(counts) != 1:
        raise MedlensError(
            f"{len(boxes)} boxes, {len(world)} world boxes, {len(scores)} scores and "
            f"{len(labels)} labels: they must agree",
            output,
        )
    if not (np.isfinite(boxes).all() and np.isfinite(world).all() and np.isfinite(scores).all()):
        raise MedlensError("boxes and scores must be finite numbers", output)
    return boxes, world, scores


def _finding_type(name: str):
    import highdicom as hd

    known = _SCT_FINDINGS.get(name.strip().lower())
    if known is not None:
        return hd.sr.CodedConcept(known[0], "SCT", known[1])
    value = "".join(c for c in name if c.isprintable() and c != "\\").strip() or "unnamed"
    return hd.sr.CodedConcept(value[:64], SCHEME, (name.strip() or value)[:64])


def _rectangle(box: np.ndarray, plane: _Plane):
    """The box's rectangle on ``plane`` as a closed SCOORD polyline (clipped to the image)."""
    import highdicom as hd

    dims = len(box) // 2
    x1, x2 = np.clip([box[0], box[dims]], 0.0, plane.columns)
    y1, y2 = np.clip([box[1], box[dims + 1]], 0.0, plane.rows)
    points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)
    image = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(plane.ds.SOPClassUID),
        referenced_sop_instance_uid=str(plane.ds.SOPInstanceUID),
        referenced_frame_numbers=None if plane.frame is None else [plane.frame],
    )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=points, source_image=image
    )


# ----------------------------------------------------------------------------- the source
@dataclass
class _Plane:
    """One frame of a source image: where it lies (``None`` where the header does not say)."""

    ds: Any
    frame: int | None  # 1-based frame number in a multi-frame image
    rows: int
    columns: int
    position: np.ndarray | None
    normal: np.ndarray | None


def _key_plane(planes: list[_Plane], world_box: np.ndarray, source: Path) -> _Plane:
    """The frame nearest the 3D box's centre along its slice normal."""
    usable = [p for p in planes if p.position is not None and p.normal is not None]
    if not usable:
        raise SeriesError(
            "the series' images have no position or orientation: a 3D box has no slice", source
        )
    usable.sort(key=lambda p: float(np.dot(p.position, p.normal)))  # ties: the lower slice
    centre = (world_box[:3] + world_box[3:]) / 2
    distances = [abs(float(np.dot(centre - p.position, p.normal))) for p in usable]
    return usable[int(np.argmin(np.round(distances, 6)))]


def _planes(ds) -> list[_Plane]:
    """Every frame of ``ds`` with its position and slice normal (classic, enhanced multi-frame
    from its functional groups, or legacy multi-frame with a grid frame offset vector)."""
    frames = _number(ds.get("NumberOfFrames"), 1)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    offsets = ds.get("GridFrameOffsetVector")
    out = []
    for i in range(max(frames, 1)):
        groups = ([per_frame[i]] if i < len(per_frame) else []) + list(shared[:1])
        position = _vector(ds, groups, "PlanePositionSequence", "ImagePositionPatient", 3)
        orientation = _vector(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        normal = None if orientation is None else np.cross(orientation[:3], orientation[3:])
        if normal is not None and not np.linalg.norm(normal) > 0.5:
            normal = None
        if position is not None and normal is not None and not per_frame and offsets:
            with contextlib.suppress(IndexError, TypeError, ValueError):
                position = position + float(offsets[i]) * normal
        out.append(
            _Plane(
                ds, i + 1 if frames > 1 else None, int(ds.Rows), int(ds.Columns), position, normal
            )
        )
    return out


def _vector(ds, groups: list, sequence: str, keyword: str, size: int) -> np.ndarray | None:
    values = [g[sequence][0].get(keyword) for g in groups if g.get(sequence)]
    for value in [*values, ds.get(keyword)]:
        try:
            vector = np.asarray([float(v) for v in value], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if vector.shape == (size,) and np.isfinite(vector).all():
            return vector
    return None


def _number(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _series_instances(source: Path, series_uid: str | None) -> list:
    """The headers of the image instances of the series reported on (one per SOP instance)."""
    from medlens.io._dicom_frames import read_dataset
    from medlens.io.dicom import find_dicom_files

    if not source.exists():
        raise ImageReadError("no such DICOM file or series folder", source)
    single = source.is_file() and source.name.upper() != "DICOMDIR"
    by_series: dict[str, dict[str, Any]] = {}
    for file in [source] if single else find_dicom_files(source):
        ds = read_dataset(file, stop_before_pixels=True)  # the reader's parsing: names the file
        if "Rows" not in ds or "Columns" not in ds or ds.get("Modality") == "SEG":
            continue  # reports, presentation states, segmentations: not images
        _complete_uids(ds, file)
        series = by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), {})
        series.setdefault(str(ds.SOPInstanceUID), ds)
    if not by_series:
        raise ImageReadError("no DICOM image to report on", source)
    if series_uid in by_series:
        chosen = by_series[str(series_uid)]
    elif len(by_series) == 1:
        chosen = next(iter(by_series.values()))
    else:
        raise SeriesError(
            f"holds {len(by_series)} series and the boxes do not say which they belong to", source
        )
    return list(chosen.values())


def _complete_uids(ds, file: Path) -> None:
    """SOP UIDs completed as for a SEG (:func:`medlens.io.dicomseg._complete_sop_uids`); the
    study's UID is required, since the report joins that study."""
    from medlens.io.dicomseg import _complete_sop_uids

    _complete_sop_uids(ds, file, "a report")
    if not str(ds.get("StudyInstanceUID", "") or "").strip():
        raise SeriesError("the image has no StudyInstanceUID: a report cannot join its study", file)


# ----------------------------------------------------------------------------- the report
def _write_report(
    evidence: list, groups: list, output: Path, model_name: str, series_number: int
) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medlens._atomic import atomic_write_bytes

    for ds in evidence:  # the report copies these type 2 (may be empty) attributes
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, None)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="medlens", manufacturer_name="medlens", model_name=model_name[:64]
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    with warnings.catch_warnings():  # as for SEG: the source's names are not ours to judge
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medlens",
            series_description=f"medlens {model_name}"[:64],
        )
    buffer = io.BytesIO()
    sr.save_as(buffer)
    atomic_write_bytes(output, buffer.getvalue())
    return output
