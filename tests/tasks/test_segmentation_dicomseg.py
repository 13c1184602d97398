"""DICOM Segmentation output on real series, and the 3D segmentation pipeline on real CT.

Geometry is checked against oracles independent of medlens' own placement: SimpleITK/GDCM's
slice order of the series' files and its reading of the reference label map, and the SEG's own
per-frame headers read back with plain pydicom as well as with highdicom.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import SegmentationStorage

from medlens.errors import GeometryError, ImageReadError, MedlensError
from medlens.io import load_image
from medlens.io.dicomseg import DicomSegWarning, write_dicom_seg

# TotalSegmentator values kept in the small label maps (labels_total.csv) -> our values
KEPT = {5: 1, 1: 2, 52: 3}  # liver, spleen, aorta
NAMES = ["background", "liver", "spleen", "aorta", "kidney"]  # indexed by value; 4 stays empty


# ----------------------------------------------------------------------------- helpers
def gdcm_files(folder: Path) -> list[Path]:
    """The series' files in SimpleITK/GDCM's slice order (its own sort by position)."""
    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))]


def instance_uid(file: Path) -> str:
    """The instance's SOP Instance UID (from the file meta header when the dataset's is blank)."""
    ds = pydicom.dcmread(file, stop_before_pixels=True)
    return str(ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID)


def remap(array: np.ndarray) -> np.ndarray:
    out = np.zeros(array.shape, np.uint8)
    for old, new in KEPT.items():
        out[array == old] = new
    return out


def check_frames(seg_file: Path, files: list[Path], expected: np.ndarray) -> pydicom.Dataset:
    """Every frame of the SEG (plain pydicom) equals ``expected == segment`` on its source slice
    and sits at that slice's position; ``expected[z]`` belongs to ``files[z]``."""
    seg = pydicom.dcmread(seg_file)
    z_of = {instance_uid(f): z for z, f in enumerate(files)}
    position_of = {
        instance_uid(f): [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True)
                          .ImagePositionPatient] for f in files
    }  # fmt: skip
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    seen = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, position_of[source], atol=1e-3)
        np.testing.assert_array_equal(frame, expected[z_of[source]] == number)
        seen.add((z_of[source], number))
    # frames left out are exactly the empty ones
    for z in range(expected.shape[0]):
        for number in np.unique(expected[z]):
            assert number == 0 or (z, int(number)) in seen
    return seg


# ----------------------------------------------------------------------------- (a) the writer
@pytest.fixture(scope="module")
def ct_reference(ct_image, real, helpers):
    """The CT series' reference label map reduced to three structures, on the series' grid."""
    reference = load_image(real(*helpers.CT_SERIES_SEG)).reorient(ct_image.orientation)
    assert ct_image.same_grid(reference)  # the NIfTI's LAS axes are the series' LPS ones flipped
    return ct_image.with_array(remap(reference.array), role="label")


def test_seg_of_the_reference_label_map_matches_it_frame_by_frame(
    ct_dir, ct_reference, real, helpers, tmp_path
):
    output = tmp_path / "out" / "ct.seg.dcm"
    with pytest.warns(DicomSegWarning, match="no StudyInstanceUID or SeriesInstanceUID"):
        written = write_dicom_seg(ct_reference, ct_dir, output, label_values=[0, 1, 2, 3, 4],
                                  class_names=NAMES, algorithm_name="medlens-test")  # fmt: skip
    assert written == output and output.is_file()
    assert [p.name for p in output.parent.iterdir()] == ["ct.seg.dcm"]  # no temporary left

    # the oracle: GDCM's slice order, SimpleITK's reading of the reference NIfTI in LPS
    files = gdcm_files(ct_dir)
    oracle = sitk.DICOMOrient(sitk.ReadImage(str(real(*helpers.CT_SERIES_SEG))), "LPS")
    expected = remap(sitk.GetArrayFromImage(oracle))
    ct_sitk = sitk.ReadImage([str(f) for f in files])
    np.testing.assert_allclose(oracle.GetOrigin(), ct_sitk.GetOrigin(), atol=1e-3)

    seg = check_frames(output, files, expected)
    assert seg.Modality == "SEG" and seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    uids = [instance_uid(f) for f in files]
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced) == sorted(uids)
    labels = [(s.SegmentNumber, s.SegmentLabel, s.SegmentDescription) for s in seg.SegmentSequence]
    assert labels == [(1, "liver", "label value 1"), (2, "spleen", "label value 2"),
                      (3, "aorta", "label value 3"), (4, "kidney", "label value 4")]  # fmt: skip
    first = seg.SegmentSequence[0]
    assert (
        first.SegmentAlgorithmType == "AUTOMATIC" and first.SegmentAlgorithmName == "medlens-test"
    )
    algorithm = first.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medlens-test" and algorithm.AlgorithmVersion == "0.1.0"
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    # the empty segment 4 is described but has no frames; empty frames are left out
    numbers = [int(i.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for i in seg.PerFrameFunctionalGroupsSequence]  # fmt: skip
    assert 4 not in numbers and len(numbers) == sum(
        len(np.unique(expected[z])) - (0 in expected[z]) for z in range(expected.shape[0])
    )

    # highdicom reads it back into the same label map, source instance by source instance
    read = hd.seg.segread(output)
    pixels = read.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(pixels, ct_reference.array)  # and medlens' own grid agrees


def test_sagittal_mr_series_keeps_its_uids_and_orientation(t1_dir, t1_image, tmp_path):
    """A series with complete UIDs (no warning) in sagittal orientation (PIR)."""
    assert t1_image.orientation == "PIR"
    array = t1_image.array
    labels = np.zeros(array.shape, np.uint8)
    labels[array > np.percentile(array, 80)] = 1
    labels[array > np.percentile(array, 97)] = 2
    labels[:, :40] = 0  # an asymmetric mask: a flip or transpose would not survive
    output = tmp_path / "t1.seg.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomSegWarning)
        write_dicom_seg(t1_image.with_array(labels), t1_dir, output, label_values=[0, 1, 2])
    files = gdcm_files(t1_dir)
    assert len(files) == array.shape[0]
    seg = check_frames(output, files, labels)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 1", "label 2"]  # fallback
    np.testing.assert_allclose(
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        source.ImageOrientationPatient, atol=1e-6,
    )  # fmt: skip


def make_enhanced(files: list[Path], order) -> pydicom.Dataset:
    """An Enhanced MR-like multi-frame image of the single-frame ``files``, frames in ``order``."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(f) for f in files]
    ds = copy.deepcopy(datasets[0])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "SliceThickness", "SpacingBetweenSlices", "SliceLocation"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(order)
    orientation, measures, shared = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = datasets[0].ImageOrientationPatient
    measures.PixelSpacing = datasets[0].PixelSpacing
    measures.SliceThickness = datasets[0].SliceThickness
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for index in order:
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = datasets[index].ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.PixelData = b"".join(datasets[index].PixelData for index in order)
    return ds


def test_enhanced_multiframe_source_with_shuffled_frames(t1_dir, t1_image, tmp_path):
    """One multi-frame image whose frames are not in slice order: each SEG frame must still
    show the slice at its source frame's position."""
    files = gdcm_files(t1_dir)
    order = np.random.default_rng(3).permutation(len(files))
    folder = tmp_path / "enhanced"
    folder.mkdir()
    make_enhanced(files, order).save_as(folder / "mr.dcm", enforce_file_format=True)
    image = load_image(folder)
    assert image.same_grid(t1_image)
    labels = np.zeros(image.array.shape, np.uint8)
    labels[image.array > np.percentile(image.array, 90)] = 1
    labels[:, :, :100] = 0
    output = write_dicom_seg(image.with_array(labels), folder, tmp_path / "mr.seg.dcm",
                             label_values=[0, 1])  # fmt: skip
    seg = pydicom.dcmread(output)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(source.ReferencedFrameNumber)  # 1-based frame of the multi-frame source
        z = int(order[number - 1])  # that frame holds slice order[number - 1] (GDCM order)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        expected = pydicom.dcmread(files[z], stop_before_pixels=True).ImagePositionPatient
        np.testing.assert_allclose(position, [float(v) for v in expected], atol=1e-3)
        np.testing.assert_array_equal(frame, labels[z] == 1)
    assert int(seg.NumberOfFrames) == sum(labels[z].any() for z in range(labels.shape[0]))


def test_all_background_writes_every_frame_empty(t1_dir, t1_image, tmp_path):
    labels = t1_image.with_array(np.zeros(t1_image.array.shape, np.uint8))
    output = write_dicom_seg(labels, t1_dir, tmp_path / "empty.seg.dcm", label_values=[0, 1, 2])
    seg = pydicom.dcmread(output)
    assert int(seg.NumberOfFrames) == 2 * t1_image.array.shape[0]  # segments x slices
    assert not seg.pixel_array.any()
    uids = [instance_uid(f) for f in gdcm_files(t1_dir)]
    pixels = hd.seg.segread(output).get_pixels_by_source_instance(uids, combine_segments=True)
    assert pixels.shape == t1_image.array.shape and not pixels.any()


# ----------------------------------------------------------------------------- (c) errors
def test_missing_corrupt_and_mismatched_series_are_named(
    ct_dir, ct_reference, ct_small_image, tmp_path
):
    args = {"label_values": [0, 1, 2, 3]}
    missing = tmp_path / "no-such-series"
    with pytest.raises(ImageReadError, match="no-such-series"):
        write_dicom_seg(ct_reference, missing, tmp_path / "a.seg.dcm", **args)

    series = tmp_path / "series"
    shutil.copytree(ct_dir, series)
    files = sorted(series.iterdir())
    broken = series / "broken.dcm"  # named like DICOM, but it is not
    broken.write_bytes(b"not a DICOM file at all\n" * 20)
    with pytest.raises(ImageReadError) as caught:
        write_dicom_seg(ct_reference, series, tmp_path / "b.seg.dcm", **args)
    assert "broken.dcm" in str(caught.value)
    broken.unlink()

    files[7].unlink()  # a missing slice: the label map has one slice the series lacks
    with pytest.raises(GeometryError, match="20 slices, the series 19"):
        write_dicom_seg(ct_reference, series, tmp_path / "c.seg.dcm", **args)

    other = ct_small_image.with_array(np.zeros(ct_small_image.array.shape, np.uint8))
    with pytest.raises(GeometryError, match=r"512x512"):  # a label map on another grid
        write_dicom_seg(other, ct_dir, tmp_path / "d.seg.dcm", **args)
    shifted = ct_reference.replace(origin=tuple(np.add(ct_reference.origin, (0, 0, 1.0))))
    with pytest.raises(GeometryError, match="not on a slice"):
        write_dicom_seg(shifted, ct_dir, tmp_path / "e.seg.dcm", **args)
    with pytest.raises(MedlensError, match=r"values \[3\] that are not among"):
        write_dicom_seg(ct_reference, ct_dir, tmp_path / "f.seg.dcm", label_values=[0, 1, 2])
    assert not list(tmp_path.glob("*.seg.dcm"))


# ----------------------------------------------------------------------------- (b) the pipeline
TINY = ["network.features=[4,8,16]", "network.strides=[[1,1,1],[2,2,2],[2,2,2]]",
        "network.kernel_sizes=[[3,3,3],[3,3,3],[3,3,3]]", "patch_size=16,32,32", "batch_size=2",
        "train.epochs=1", "train.batches_per_epoch=2", "target_spacing=6,6,6"]  # fmt: skip


def make_dataset(root: Path, image: Path, label: Path) -> Path:
    """A Decathlon folder of two cases: the real small CT and its left-right mirror image."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    ct, seg = nib.load(image), nib.load(label)
    volume = np.asanyarray(ct.dataobj)
    labels = remap(np.asanyarray(seg.dataobj))
    for case, flip in (("ct_a", False), ("ct_b", True)):
        v, lab = (volume[::-1], labels[::-1]) if flip else (volume, labels)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(v), ct.affine, ct.header),
                 root / "imagesTr" / f"{case}.nii.gz")  # fmt: skip
        nib.save(nib.Nifti1Image(np.ascontiguousarray(lab), seg.affine),
                 root / "labelsTr" / f"{case}.nii.gz")  # fmt: skip
    spec = {
        "name": "tiny_ct", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "aorta"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in ("ct_a", "ct_b")],
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="module")
def ct_run(real, helpers, tmp_path_factory):
    """A tiny 3D U-Net trained for one epoch on the real small CT (6 mm, three structures)."""
    from medlens.tasks.segmentation.predict import load_segmentation_run
    from medlens.tasks.segmentation.train import train_segmentation

    root = tmp_path_factory.mktemp("pipeline")
    data = make_dataset(root / "data", real(*helpers.CT_SMALL), real(*helpers.CT_SMALL_SEG))
    info = train_segmentation(data, root / "run", overrides=TINY, progress=False,
                              log=lambda _: None)  # fmt: skip
    assert info["status"] == "complete" and info["label_values"] == [0, 1, 2, 3]
    run = load_segmentation_run(root / "run")
    assert run.plan.patch_size == [16, 32, 32] and run.plan.target_spacing == [6.0, 6.0, 6.0]
    return run


def test_pipeline_predicts_a_nifti_on_its_own_grid(ct_run, real, helpers, tmp_path):
    from medlens.tasks.segmentation.predict import predict_inputs

    small = real(*helpers.CT_SMALL)
    written = predict_inputs(ct_run, small, tmp_path / "masks")
    assert written == [tmp_path / "masks" / "example_ct_sm.nii.gz"]  # no SEG for a NIfTI
    mask, source = nib.load(written[0]), nib.load(small)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asanyarray(mask.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_pipeline_predicts_a_dicom_series_as_nifti_and_dicom_seg(ct_run, ct_dir, tmp_path):
    """Another grid than training's (0.98 x 0.98 x 2 mm, 512 x 512): geometry, not accuracy."""
    from medlens.tasks.segmentation.predict import predict_inputs

    out = tmp_path / "dicom_masks"
    with pytest.warns(DicomSegWarning):  # this series' Study/Series UIDs are blank
        written = predict_inputs(ct_run, ct_dir, out)
    nifti, seg_file = out / "dicom.nii.gz", out / "dicom.seg.dcm"
    assert written == [nifti, seg_file]
    series, predicted = load_image(ct_dir), load_image(nifti)
    assert predicted.spatial_shape == series.spatial_shape == (20, 512, 512)
    np.testing.assert_allclose(predicted.spacing, series.spacing, atol=1e-4)
    np.testing.assert_allclose(predicted.origin, series.origin, atol=1e-3)
    np.testing.assert_allclose(predicted.direction, series.direction, atol=1e-6)
    assert set(np.unique(predicted.array).tolist()) <= {0, 1, 2, 3}

    files = gdcm_files(ct_dir)
    seg = check_frames(seg_file, files, predicted.array)  # the SEG is the NIfTI, frame by frame
    assert seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == series.meta["frame_of_reference_uid"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "aorta"]
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    uids = [instance_uid(f) for f in files]
    assert {i.ReferencedSOPInstanceUID for i in referenced} == set(uids)
    pixels = hd.seg.segread(seg_file).get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels, predicted.array)
    if not predicted.array.any():  # the documented all-background form: every frame, empty
        assert int(seg.NumberOfFrames) == 3 * 20
