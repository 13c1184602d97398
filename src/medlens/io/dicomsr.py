"""A classification result as a DICOM Structured Report (TID 1500 measurement report).

:func:`write_classification_sr` writes a Comprehensive 3D SR (highdicom) in the source's study,
as a new series, that a PACS files beside the images and a viewer shows: one measurement group
(TID 1501) holding the finding (the predicted class, as a qualitative evaluation), the
probability of every class (measurements, unit "1"), the decision threshold where one was
tuned, and the algorithm's name and version; the group references every source instance, and
the report lists them as its evidence. The observer is the device (medlens and the model's
name). Class codes are private (``99MEDLENS``): a site maps them to SNOMED CT where it has a
code for the finding.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from medlens.errors import ImageReadError

__all__ = ["write_classification_sr"]

SCHEME = "99MEDLENS"
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


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

    from medlens._atomic import atomic_write_bytes

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
    for ds in evidence:  # the report copies these type 2 (may be empty) attributes
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, None)
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
        imaging_measurements=[group],
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
    import io

    buffer = io.BytesIO()
    sr.save_as(buffer)
    atomic_write_bytes(Path(output), buffer.getvalue())
    return Path(output)
