"""Detections as a DICOM Structured Report (TID 1500): boxes written by hand on small DICOM
images made here (no training), read back with pydicom and highdicom."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medlens.errors import MedlensError, SeriesError
from medlens.tasks.detection.task import BoxPrediction, DetectionPredictor

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
CONTEXT = {"model_name": "lesions", "model_version": "medlens 0.1.0 / sha256 ab12"}


# ----------------------------------------------------------------------------- DICOM made here
def _dataset(sop_class: str, study: str, series: str, rows: int, columns: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientSex = "Test^Patient", "P1", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", "A1"
    ds.SeriesNumber, ds.InstanceNumber = 3, 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_series(folder: Path, *, slices: int = 5, study: str | None = None) -> list[Dataset]:
    """An axial MR series of 12 x 16 pixels (0.8 mm rows, 0.7 mm columns, 2.5 mm slices), its
    files named in the reverse of the slice order; the datasets in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = study or generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(slices):
        ds = _dataset(MRImageStorage, study, series, 12, 16)
        ds.Modality, ds.FrameOfReferenceUID, ds.InstanceNumber = "MR", frame, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-20.0, -30.0, 40.0 + 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], 2.5
        ds.PixelData = (np.arange(12 * 16, dtype=np.uint16) + k).tobytes()
        ds.save_as(folder / f"{slices - k:03d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def write_radiograph(path: Path) -> Dataset:
    """A single-frame 20 x 30 DX image (no patient position: a projection)."""
    ds = _dataset(DX_IMAGE, generate_uid(), generate_uid(), 20, 30)
    ds.Modality, ds.ImagerPixelSpacing = "DX", [0.2, 0.2]
    ds.PixelData = np.zeros((20, 30), np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def boxes_of(image, index_boxes) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes (index + 0.5) and world boxes (sorted corners) of index-corner boxes, as
    :func:`medlens.tasks.detection.predict.detect_image` makes them."""
    index_boxes = np.asarray(index_boxes, dtype=np.float64)
    n = image.spatial_dims
    a, b = image.index_to_world(index_boxes[:, :n]), image.index_to_world(index_boxes[:, n:])
    world = np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)
    return index_boxes + 0.5, world


def read_report(path: Path):
    import highdicom as hd

    ds = pydicom.dcmread(path)
    return ds, hd.sr.srread(path)


def roi_groups(report) -> list:
    return report.content.get_planar_roi_measurement_groups()


def measured(group) -> dict[str, tuple[float, str]]:
    return {m.name.meaning: (float(m.value), m.unit.value) for m in group.get_measurements()}


def referenced(roi) -> tuple[str, list[int] | None]:
    item = roi.ContentSequence[0].ReferencedSOPSequence[0]
    frames = item.get("ReferencedFrameNumber")
    if frames is not None:
        frames = [int(f) for f in (frames if isinstance(frames, list | tuple) else [frames])]
    return str(item.ReferencedSOPInstanceUID), frames


def texts(ds) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}

    def walk(sequence):
        for item in sequence:
            if item.ValueType == "TEXT":
                name = item.ConceptNameCodeSequence[0].CodeMeaning
                found.setdefault(name, []).append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return found


def world_box(values: dict[str, tuple[float, str]]) -> np.ndarray:
    centre = np.array([values[f"Box centre {a} (LPS)"][0] for a in "xyz"])
    length = np.array([values[f"Length along {a} (LPS)"][0] for a in "xyz"])
    return np.concatenate([centre - length / 2, centre + length / 2])


# ----------------------------------------------------------------------------- the report
def test_3d_boxes_are_planar_rois_on_their_key_slices_with_their_world_box(tmp_path):
    from medlens.io import load_image

    sources = write_series(tmp_path / "series")
    image = load_image(tmp_path / "series")
    index = [[2.0, 3.0, 1.0, 9.0, 8.0, 3.0], [0.0, 1.0, 0.0, 15.0, 11.0, 2.0]]
    pixels, world = boxes_of(image, index)
    prediction = BoxPrediction(
        "series",
        pixels,
        world,
        np.array([0.3, 0.91234]),
        ["white cell", "lesion"],
        series=tmp_path / "series",
    )
    out = prediction.encode("sr", tmp_path / "out", name="series", **CONTEXT)
    assert out == tmp_path / "out" / "series.sr.dcm"
    ds, report = read_report(out)

    assert ds.SOPClassUID == COMPREHENSIVE_3D_SR and ds.Modality == "SR"
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert ds.PatientID == "P1" and ds.ContentDate and ds.ContentTime
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == sources[0].SeriesInstanceUID
    listed = {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence}
    assert listed == {s.SOPInstanceUID for s in sources}
    assert texts(ds)["Algorithm Name"][0] == "lesions"
    assert "sha256 ab12" in texts(ds)["Algorithm Version"][0]

    groups = roi_groups(report)
    assert len(groups) == 2  # in score order: the lesion first
    lesion, cell = groups
    assert (lesion.finding_type.value, lesion.finding_type.scheme_designator) == ("52988006", "SCT")
    assert (cell.finding_type.meaning, cell.finding_type.scheme_designator) == (
        "white cell",
        "99MEDLENS",
    )
    assert texts(ds)["Tracking Identifier"] == ["lesion 1", "white cell 2"]
    assert lesion.tracking_uid != cell.tracking_uid
    for group, k, key_slice in ((lesion, 1, 1), (cell, 0, 2)):
        values = measured(group)
        assert values["Detection score"][0] == pytest.approx(prediction.scores[k], abs=1e-4)
        assert values["Detection score"][1] == "1"
        assert {values[f"Length along {a} (LPS)"][1] for a in "xyz"} == {"mm"}
        np.testing.assert_allclose(world_box(values), world[k], atol=1e-3)
        roi = group.roi
        assert roi.graphic_type.value == "POLYLINE"
        x1, y1, _, x2, y2, _ = pixels[k]
        corners = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
        np.testing.assert_allclose(roi.value, corners, atol=1e-4)
        # the slice through the box's centre, as the medlens reader orders the series
        assert referenced(roi) == (sources[key_slice].SOPInstanceUID, None)
    assert np.allclose(world[1][3:] - world[1][:3], [10.5, 8.0, 5.0])


def test_a_2d_box_is_a_rectangle_in_the_images_pixels(tmp_path):
    source = write_radiograph(tmp_path / "chest.dcm")
    pixels = np.array([[3.25, 4.5, 20.75, 15.0]])
    prediction = BoxPrediction(
        "chest", pixels, pixels * 0.2, np.array([0.75]), ["nodule"], series=tmp_path / "chest.dcm"
    )
    out = prediction.encode("sr", tmp_path / "out", **CONTEXT)
    assert out.name == "chest.sr.dcm"
    ds, report = read_report(out)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    (group,) = roi_groups(report)
    assert group.finding_type.meaning == "Nodule"
    corners = [[3.25, 4.5], [20.75, 4.5], [20.75, 15.0], [3.25, 15.0], [3.25, 4.5]]
    np.testing.assert_allclose(group.roi.value, corners, atol=1e-5)
    assert referenced(group.roi) == (source.SOPInstanceUID, None)
    assert measured(group) == {"Detection score": (pytest.approx(0.75, abs=1e-4), "1")}


def test_a_threshold_keeps_the_boxes_above_it_and_no_box_is_said_explicitly(tmp_path):
    write_series(tmp_path / "series", slices=3)
    pixels = np.array([[1.5, 1.5, 0.5, 4.5, 4.5, 1.5], [5.5, 5.5, 0.5, 8.5, 8.5, 2.5]])
    world = np.array([[-19, -29, 40, -17, -26, 42.5], [-16, -26, 40, -14, -23, 45.0]])
    prediction = BoxPrediction(
        "s", pixels, world, np.array([0.2, 0.6]), ["lesion", "lesion"], series=tmp_path / "series"
    )
    out = prediction.encode("sr", tmp_path / "a", score_threshold=0.5, **CONTEXT)
    (group,) = roi_groups(read_report(out)[1])
    assert measured(group)["Detection score"][0] == pytest.approx(0.6)
    assert measured(group)["Score threshold"][0] == pytest.approx(0.5)
    np.testing.assert_allclose(world_box(measured(group)), world[1], atol=1e-4)

    empty = BoxPrediction(
        "s", np.zeros((0, 6)), np.zeros((0, 6)), np.zeros(0), [], series=tmp_path / "series"
    )
    report = read_report(empty.encode("sr", tmp_path / "b", **CONTEXT))[1]
    assert roi_groups(report) == []
    (group,) = report.content.get_image_measurement_groups()
    assert measured(group) == {"Number of detections": (0.0, "1")}


def test_the_series_is_chosen_by_uid_in_a_folder_of_several(tmp_path):
    first = write_series(tmp_path / "study" / "a", slices=2)
    second = write_series(tmp_path / "study" / "b", slices=2, study=first[0].StudyInstanceUID)
    box = np.array([[1.0, 1.0, 0.5, 3.0, 3.0, 1.5]])
    world = np.array([[-19.0, -29.0, 40.0, -18.0, -28.0, 42.5]])  # half-way: the lower slice
    prediction = BoxPrediction(
        "b",
        box,
        world,
        np.array([0.5]),
        ["lesion"],
        series=tmp_path / "study",
        series_uid=second[0].SeriesInstanceUID,
    )
    ds, report = read_report(prediction.encode("sr", tmp_path / "out", **CONTEXT))
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [s.SeriesInstanceUID for s in evidence] == [second[0].SeriesInstanceUID]
    assert referenced(roi_groups(report)[0].roi)[0] == second[0].SOPInstanceUID
    prediction.series_uid = None
    with pytest.raises(SeriesError, match="holds 2 series"):
        prediction.encode("sr", tmp_path / "out", **CONTEXT)


def test_an_enhanced_multiframe_image_is_referenced_by_frame(tmp_path):
    ds = _dataset(ENHANCED_MR, generate_uid(), generate_uid(), 12, 16)
    ds.Modality, ds.FrameOfReferenceUID, ds.NumberOfFrames = "MR", generate_uid(), 4
    orientation, measures, shared = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [0.8, 0.7], 2.5
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in (3, 0, 2, 1):  # the frames out of slice order
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [-20.0, -30.0, 40.0 + 2.5 * z]
        item.PlanePositionSequence = [position]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.zeros((4, 12, 16), np.uint16).tobytes()
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    world = np.array([[-19.0, -29.0, 44.0, -18.0, -28.0, 46.5]])  # centre at slice z = 2
    prediction = BoxPrediction(
        "e",
        np.array([[1.0, 1.0, 2.0, 3.0, 3.0, 3.0]]),
        world,
        np.array([0.5]),
        ["lesion"],
        series=tmp_path / "enhanced.dcm",
    )
    report = read_report(prediction.encode("sr", tmp_path / "out", **CONTEXT))[1]
    assert referenced(roi_groups(report)[0].roi) == (ds.SOPInstanceUID, [3])


def test_a_prediction_of_a_non_dicom_input_has_no_sr(tmp_path):
    prediction = BoxPrediction(
        "a.png",
        np.array([[1.0, 1.0, 3.0, 3.0]]),
        np.array([[1.0, 1.0, 3.0, 3.0]]),
        np.array([0.9]),
        ["cell"],
    )
    with pytest.raises(MedlensError, match="needs a DICOM input") as caught:
        prediction.encode("sr", tmp_path, **CONTEXT)
    assert "\n" not in str(caught.value)
    with pytest.raises(MedlensError, match="no png form"):
        prediction.encode("png", tmp_path)
    assert not list(tmp_path.iterdir())


def test_the_sagittal_real_series_gets_its_key_slice_by_position(t1_dir, t1_image, tmp_path):
    index = [[10.0, 20.0, 11.0, 40.0, 50.0, 15.0]]  # centre on slice 13 of the reader's order
    pixels, world = boxes_of(t1_image, index)
    prediction = BoxPrediction("t1", pixels, world, np.array([0.8]), ["lesion"], series=t1_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the phantom's one-component patient name
        out = prediction.encode("sr", tmp_path, **CONTEXT)
    (group,) = roi_groups(read_report(out)[1])
    position = t1_image.index_to_world(np.array([[0.0, 0.0, 13.0]]))[0]
    files = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(t1_dir.iterdir())]
    (key,) = [f for f in files if np.allclose(f.ImagePositionPatient, position, atol=1e-3)]
    assert referenced(group.roi) == (key.SOPInstanceUID, None)
    np.testing.assert_allclose(group.roi.value[0], pixels[0][:2], atol=1e-4)
    np.testing.assert_allclose(world_box(measured(group)), world[0], atol=1e-3)


# ----------------------------------------------------------------------------- the predictor
@pytest.fixture
def fake_predictor(monkeypatch):
    """A DetectionPredictor over no run: ``detect_image`` answers one box per image, placed
    from the image's own geometry as the real one does."""

    def detect_image(trained, image, mirror=None):
        n = image.spatial_dims
        pixels, world = boxes_of(image, [[1.0, 2.0, 0.0][:n] + [5.0, 6.0, 1.0][:n]])
        return pixels - 0.5, world, np.array([0.8]), np.array([1])

    fake = types.ModuleType("medlens.tasks.detection.predict")
    fake.detect_image = detect_image
    monkeypatch.setitem(sys.modules, "medlens.tasks.detection.predict", fake)

    def make(dims: int) -> DetectionPredictor:
        predictor = DetectionPredictor.__new__(DetectionPredictor)
        predictor.run = SimpleNamespace(
            path=Path("run-a"), info={}, algorithm_version=lambda: "medlens test / sha256 0"
        )
        plan = SimpleNamespace(
            spatial_dims=dims,
            in_channels=1,
            modality="MR",
            target_spacing=[1.0] * dims,
            patch_size=[16] * dims,
            class_names=["background", "lesion"],
        )
        predictor.trained, predictor.mirror = SimpleNamespace(plan=plan), None
        return predictor

    return make


def test_predicting_a_series_sets_its_source_and_writes_its_report(fake_predictor, tmp_path):
    sources = write_series(tmp_path / "in" / "mr", slices=3)
    predictor = fake_predictor(3)
    assert predictor.answer_formats == ("sr",)
    (prediction,) = predictor.predict(predictor.read(tmp_path / "in"))
    assert prediction.series == tmp_path / "in" / "mr"
    assert prediction.series_uid == sources[0].SeriesInstanceUID
    line = predictor.predict_path(tmp_path / "in", tmp_path / "out")
    assert "1 DICOM SR" in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "detections.csv",
        "detections.json",
        "mr.sr.dcm",
    ]
    ds, report = read_report(tmp_path / "out" / "mr.sr.dcm")
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert roi_groups(report)[0].finding_type.meaning == "Lesion"
    assert "run-a" in texts(ds)["Algorithm Name"]
    (node,) = predictor.dicom_results(tmp_path / "in" / "mr", tmp_path / "node", **CONTEXT)
    assert node == tmp_path / "node" / "mr.sr.dcm"


def test_predicting_2d_files_reports_only_the_dicom_ones(fake_predictor, tmp_path):
    from medlens.image import Image
    from medlens.io import save_image

    source = write_radiograph(tmp_path / "in" / "chest.dcm")
    save_image(Image(np.zeros((20, 30), np.uint8)), tmp_path / "in" / "plain.png")
    predictor = fake_predictor(2)
    assert predictor.answer_formats == ("sr",)
    chest, plain = predictor.predict(predictor.read(tmp_path / "in"))
    assert chest.series == tmp_path / "in" / "chest.dcm" and chest.series_uid is None
    assert plain.series is None
    assert "1 DICOM SR" in predictor.predict_path(tmp_path / "in", tmp_path / "out")
    report = read_report(tmp_path / "out" / "chest.sr.dcm")[1]
    assert referenced(roi_groups(report)[0].roi) == (source.SOPInstanceUID, None)
    np.testing.assert_allclose(roi_groups(report)[0].roi.value[0], chest.boxes[0][:2])
    assert not (tmp_path / "out" / "plain.sr.dcm").exists()
