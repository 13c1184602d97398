"""The classification Structured Report: a TID 1500 report in the source's study, read back
with highdicom and pydicom, referencing every source instance."""

from __future__ import annotations

import warnings

import pydicom
import pytest

from medlens.errors import ImageReadError
from medlens.io.dicomsr import write_classification_sr


def _items(sequence, found=None):
    found = [] if found is None else found
    for item in sequence:
        name = (
            item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        )
        found.append((item.ValueType, name, item))
        if "ContentSequence" in item:
            _items(item.ContentSequence, found)
    return found


def test_a_series_classification_reads_back_as_a_measurement_report(t1_dir, tmp_path):
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the phantom's one-component patient name
        out = write_classification_sr(t1_dir, tmp_path / "result.sr.dcm",
                                      probabilities={"normal": 0.2, "lesion": 0.8},
                                      predicted="lesion", model_name="brain",
                                      model_version="medlens 0.1.0 / sha256 ab12",
                                      threshold=0.41)  # fmt: skip
    ds = pydicom.dcmread(out)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(t1_dir.iterdir())]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert ds.PatientID == sources[0].PatientID
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    referenced = {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}
    report = hd.sr.Comprehensive3DSR.from_dataset(ds)
    group = report.content.get_image_measurement_groups()[0]
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values == {"Probability of normal": 0.2, "Probability of lesion": 0.8,
                      "Decision threshold": 0.41}  # fmt: skip
    items = _items(ds.ContentSequence)
    finding = [i for kind, name, i in items if kind == "CODE" and name == "Finding"]
    assert [f.ConceptCodeSequence[0].CodeMeaning for f in finding] == ["lesion"]
    texts = {name: i.TextValue for kind, name, i in items if kind == "TEXT"}
    assert texts["Algorithm Name"] == "brain" and "sha256 ab12" in texts["Algorithm Version"]
    images = [i for kind, _, i in items if kind == "IMAGE"]
    assert len(images) == len(sources)


def test_a_folder_without_dicom_is_refused_by_name(tmp_path):
    (tmp_path / "a.txt").write_text("not dicom")
    with pytest.raises(ImageReadError, match="no DICOM instance"):
        write_classification_sr(tmp_path, tmp_path / "out.dcm", probabilities={"a": 1.0},
                                predicted="a", model_name="m", model_version="1")  # fmt: skip
