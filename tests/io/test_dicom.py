"""DICOM reading: real series against SimpleITK, 4D fMRI, file order, broken and odd series,
DICOMDIR, enhanced multi-frame, compressed transfer syntaxes and rescaling."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from medlens.errors import ImageReadError, SeriesError
from medlens.io import load_image
from medlens.io.dicom import SliceSpacingWarning, list_series, read_dicom

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def t1_datasets(t1_dir, helpers) -> list[tuple[Path, Dataset]]:
    """(file, dataset) of the T1 series; tests deep-copy before changing one."""
    return [(f, pydicom.dcmread(f)) for f in helpers.series_files(t1_dir)]


def write_series(datasets, folder: Path, change=None, names=None) -> Path:
    """Save deep copies of ``datasets`` into ``folder``, after ``change(index, ds)`` if given."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (file, ds) in enumerate(datasets):
        ds = copy.deepcopy(ds)
        if change is not None:
            change(index, ds)
        ds.save_as(folder / (names[index] if names else file.name))
    return folder


def assert_same_image(image, reference) -> None:
    assert image.same_grid(reference, atol=1e-6)
    assert image.leading == reference.leading
    np.testing.assert_array_equal(image.array, reference.array)


# ----------------------------------------------------------------------------- real series
def test_t1_series_matches_simpleitk(t1_image, t1_sitk, helpers):
    helpers.assert_matches_sitk(t1_image, t1_sitk)
    assert t1_image.array.shape == (32, 256, 256) and t1_image.array.dtype == np.int16
    assert t1_image.orientation == "PIR"  # sagittal: rows run anterior->posterior
    assert t1_image.spacing == pytest.approx((1.0547, 1.0547, 1.2), abs=1e-4)
    assert t1_image.modality == "MR"
    assert t1_image.meta["format"] == "dicom" and len(t1_image.meta["files"]) == 32
    assert t1_image.meta["transfer_syntax"] == "1.2.840.10008.1.2.1"


def test_t1_slices_ordered_by_position_not_name(t1_image, t1_datasets):
    # slice k of the volume is the file whose position is k steps along the normal
    normal = t1_image.direction[:, 2]
    by_position = sorted(t1_datasets, key=lambda fd: np.dot(fd[1].ImagePositionPatient, normal))
    for k, (_, ds) in enumerate(by_position):
        np.testing.assert_array_equal(t1_image.array[k], ds.pixel_array)
        np.testing.assert_allclose(
            t1_image.index_to_world([0, 0, k]), [float(v) for v in ds.ImagePositionPatient],
            atol=1e-4,
        )  # fmt: skip


def test_ct_jpeg2000_series_matches_simpleitk(ct_image, ct_sitk, helpers):
    helpers.assert_matches_sitk(ct_image, ct_sitk)
    assert ct_image.array.shape == (20, 512, 512)
    assert ct_image.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    assert ct_image.orientation == "LPS" and ct_image.spacing[2] == pytest.approx(2.0)


def test_ct_series_is_in_hounsfield_units(ct_image, ct_dir, helpers):
    ds = pydicom.dcmread(helpers.series_files(ct_dir)[0], stop_before_pixels=True)
    assert float(ds.RescaleIntercept) != 0.0  # stored values are shifted: rescaling matters
    hu = ct_image.array
    assert np.issubdtype(hu.dtype, np.signedinteger)
    assert -1100 <= hu.min() <= -1000  # air
    assert np.median(hu) < -500  # mostly air around the body in this field of view
    body = hu[hu > -200]
    assert 0 < np.median(body) < 200  # soft tissue


def test_single_file_reads_as_one_slice(t1_dir, helpers):
    import SimpleITK as sitk

    file = helpers.series_files(t1_dir)[7]
    image = load_image(file)
    reference = sitk.ReadImage(str(file))
    assert image.array.shape == (1, 256, 256)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(image.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.spacing[:2], reference.GetSpacing()[:2], atol=1e-6)
    np.testing.assert_allclose(image.direction, np.reshape(reference.GetDirection(), (3, 3)))
    assert image.spacing[2] == pytest.approx(1.2)  # SpacingBetweenSlices for a lone slice


# ----------------------------------------------------------------------------- fMRI (4D)
def test_fmri_phantom_is_4d_in_time_order(real, helpers):
    folder = real(*helpers.FMRI_PHANTOM)
    image = load_image(folder)
    assert image.leading == ("time",)
    assert image.array.shape == (16, 8, 64, 64)
    assert image.num_time_points == 16
    times = np.array(image.meta["time_points"])
    assert times[0] == 0.0 and np.all(np.diff(times) > 0)
    np.testing.assert_allclose(np.diff(times), 1.5, atol=0.01)  # TR 1.5 s

    # match every (t, z) against the file it must come from
    headers = [(f, pydicom.dcmread(f)) for f in helpers.series_files(folder)]
    normal = image.direction[:, 2]
    lookup = {}
    for _, ds in headers:
        z = round(
            float(np.dot(ds.ImagePositionPatient, normal) - np.dot(image.origin, normal)) / 3.3
        )
        lookup.setdefault(z, []).append(ds)
    assert sorted(lookup) == list(range(8))
    for z, items in lookup.items():
        items.sort(key=lambda ds: int(ds.InstanceNumber))
        triggers = [float(ds.TriggerTime) for ds in items]
        assert triggers == sorted(triggers)  # InstanceNumber and TriggerTime agree
        for t, ds in enumerate(items):
            np.testing.assert_array_equal(image.array[t, z], ds.pixel_array)
    # slices of each volume ordered by position
    positions = [image.index_to_world([0, 0, z]) @ normal for z in range(8)]
    assert np.all(np.diff(positions) > 0)


def test_fmri_human_is_4d(real, helpers):
    image = load_image(real(*helpers.FMRI_HUMAN))
    assert image.leading == ("time",)
    assert image.array.shape == (3, 15, 64, 64)
    np.testing.assert_allclose(image.meta["time_points"], [0.0, 5.0, 10.0])  # TR 5 s
    assert image.spacing == pytest.approx((3.75, 3.75, 5.0), abs=1e-3)
    # files 1-15 are the first volume, 16-30 the second, 31-45 the third (ascending position)
    files = helpers.series_files(real(*helpers.FMRI_HUMAN))
    for t in range(3):
        for z in (0, 7, 14):
            ds = pydicom.dcmread(files[t * 15 + z])
            assert int(ds.InstanceNumber) == t * 15 + z + 1
            np.testing.assert_array_equal(image.array[t, z], ds.pixel_array)


def test_fmri_shuffled_gives_same_4d_image(real, helpers, tmp_path):
    folder = real(*helpers.FMRI_PHANTOM)
    reference = load_image(folder)
    rng = np.random.default_rng(11)
    files = helpers.series_files(folder)
    for n, i in enumerate(rng.permutation(len(files))):
        target = tmp_path / f"d{n % 3}" / f"{rng.integers(1e9):x}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(files[i], target)
    image = load_image(tmp_path)
    assert_same_image(image, reference)
    assert image.meta["time_points"] == reference.meta["time_points"]


def test_fmri_missing_time_point_is_reported(real, helpers, tmp_path):
    files = helpers.series_files(real(*helpers.FMRI_PHANTOM))
    helpers.copy_files(files[:40] + files[41:], tmp_path)
    with pytest.raises(SeriesError, match="incomplete temporal series") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


# ----------------------------------------------------------------------------- file order
def test_shuffled_renamed_nested_files_give_the_same_volume(t1_dir, t1_image, helpers, tmp_path):
    rng = np.random.default_rng(7)
    files = helpers.series_files(t1_dir)
    for i in rng.permutation(len(files)):
        folder = tmp_path.joinpath(*[f"sub{rng.integers(3)}" for _ in range(rng.integers(0, 3))])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[i], folder / f"{rng.integers(1 << 40):x}")  # no suffix, random
    shutil.copyfile(files[3], tmp_path / "duplicate.dcm")  # the same instance twice
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "sub0").mkdir(exist_ok=True)
    (tmp_path / "sub0" / "notes").write_bytes(b"plain text, no suffix")
    image = load_image(tmp_path)
    assert_same_image(image, t1_image)
    assert len(image.meta["files"]) == 33


def test_instance_numbers_do_not_decide_order(t1_datasets, t1_image, tmp_path):
    rng = np.random.default_rng(8)
    numbers = rng.permutation(len(t1_datasets)) + 1

    def scramble(index, ds):
        ds.InstanceNumber = int(numbers[index])

    image = load_image(write_series(t1_datasets, tmp_path, scramble))
    assert_same_image(image, t1_image)


# ----------------------------------------------------------------------------- broken series
def test_missing_middle_slice_is_an_error(t1_dir, helpers, tmp_path):
    files = helpers.series_files(t1_dir)
    helpers.copy_files(files[:15] + files[16:], tmp_path)
    with pytest.raises(SeriesError, match="missing") as info:
        load_image(tmp_path)
    message = str(info.value)
    assert "1 missing slice" in message and str(tmp_path) in message and "\n" not in message


def test_missing_slice_with_strict_false_only_warns(t1_dir, helpers, tmp_path):
    files = helpers.series_files(t1_dir)
    helpers.copy_files(files[:15] + files[16:], tmp_path)
    with pytest.warns(SliceSpacingWarning, match="missing"):
        image = read_dicom(tmp_path, strict=False)
    assert image.array.shape == (31, 256, 256)


def test_uneven_spacing_warns(t1_datasets, tmp_path):
    def nudge(index, ds):
        if index == 10:
            position = [float(v) for v in ds.ImagePositionPatient]
            position[0] += 0.3  # x is the slice normal of this sagittal series
            ds.ImagePositionPatient = position

    with pytest.warns(SliceSpacingWarning, match="uneven slice spacing"):
        image = load_image(write_series(t1_datasets, tmp_path, nudge))
    assert image.array.shape == (32, 256, 256)


def test_mixed_orientations_are_an_error(t1_datasets, tmp_path):
    def tilt(index, ds):
        if index == 5:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # an axial localiser

    with pytest.raises(SeriesError, match="mixed orientations") as info:
        load_image(write_series(t1_datasets, tmp_path, tilt))
    assert "1 of 32" in str(info.value)


def test_mixed_sizes_are_an_error(t1_datasets, tmp_path):
    def shrink(index, ds):
        if index in (3, 4):
            ds.PixelData = ds.pixel_array[:128, :128].tobytes()
            ds.Rows, ds.Columns = 128, 128

    with pytest.raises(SeriesError, match="different sizes") as info:
        load_image(write_series(t1_datasets, tmp_path, shrink))
    assert "256x256 (30 images)" in str(info.value) and "128x128 (2 images)" in str(info.value)


def test_position_on_some_slices_only_is_an_error(t1_datasets, tmp_path):
    def strip(index, ds):
        if index == 0:
            del ds.ImagePositionPatient

    with pytest.raises(SeriesError, match="lack position"):
        load_image(write_series(t1_datasets, tmp_path, strip))


def test_two_series_in_a_folder_are_listed_and_one_can_be_chosen(t1_datasets, t1_image, tmp_path):
    other_uid = generate_uid()

    def second_series(index, ds):  # a derived series: new UIDs, every value + 1
        ds.SeriesInstanceUID = other_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = (ds.pixel_array + 1).astype(np.int16).tobytes()

    write_series(t1_datasets, tmp_path / "a")
    write_series(t1_datasets[:20], tmp_path / "b", second_series)
    t1_uid = t1_image.meta["series_uid"]
    with pytest.raises(SeriesError, match="holds 2 series") as info:
        load_image(tmp_path)
    message = str(info.value)
    assert f"{t1_uid} (MR, 32 files)" in message and f"{other_uid} (MR, 20 files)" in message
    assert str(tmp_path) in message and "\n" not in message
    assert_same_image(load_image(tmp_path, series_uid=t1_uid), t1_image)
    chosen = load_image(tmp_path, series_uid=other_uid)
    assert chosen.array.shape == (20, 256, 256)
    assert chosen.meta["series_uid"] == other_uid
    with pytest.raises(SeriesError, match=re.escape("no series 1.2.3")):
        load_image(tmp_path, series_uid="1.2.3")
    listed = list_series(tmp_path)
    assert [(s.uid, len(s.files), s.modality) for s in listed] == [
        (t1_uid, 32, "MR"),
        (other_uid, 20, "MR"),
    ]


def test_series_without_uid_can_be_chosen_beside_another(
    t1_dir, ct_dir, t1_image, ct_image, helpers, tmp_path
):
    # the CT series was anonymised down to an empty SeriesInstanceUID
    helpers.copy_files(helpers.series_files(t1_dir), tmp_path / "mr")
    helpers.copy_files(helpers.series_files(ct_dir), tmp_path / "ct")
    assert "series_uid" not in ct_image.meta
    with pytest.raises(SeriesError, match=r"holds 2 series.*\(CT, 20 files\)"):
        load_image(tmp_path)
    assert_same_image(load_image(tmp_path, series_uid=""), ct_image)
    assert_same_image(load_image(tmp_path, series_uid=t1_image.meta["series_uid"]), t1_image)


# ----------------------------------------------------------------------------- DICOMDIR
def test_dicomdir_reads_like_the_folder(t1_datasets, t1_image, tmp_path):
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for _, ds in t1_datasets:
        ds = copy.deepcopy(ds)
        ds.StudyID = "1"  # the STUDY record needs one
        fileset.add(ds)
    fileset.write(tmp_path / "media")
    dicomdir = tmp_path / "media" / "DICOMDIR"
    assert dicomdir.is_file()
    image = load_image(dicomdir)
    assert_same_image(image, t1_image)
    assert len(image.meta["files"]) == 32
    assert all("SE000000" in f for f in image.meta["files"])  # resolved from its records
    assert_same_image(load_image(tmp_path / "media"), t1_image)  # the folder uses the DICOMDIR
    assert list_series(dicomdir)[0].uid == t1_image.meta["series_uid"]


def test_dicomdir_listing_a_missing_file_is_an_error(t1_datasets, tmp_path):
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for _, ds in t1_datasets[:3]:
        ds = copy.deepcopy(ds)
        ds.StudyID = "1"
        fileset.add(ds)
    fileset.write(tmp_path)
    victim = next(p for p in tmp_path.rglob("IM*") if p.is_file())
    victim.unlink()
    with pytest.raises(ImageReadError, match="which is missing") as info:
        load_image(tmp_path / "DICOMDIR")
    assert "DICOMDIR" in str(info.value)


# ----------------------------------------------------------------------------- enhanced multi-frame
def make_enhanced(datasets, order) -> Dataset:
    """An Enhanced MR-like multi-frame object holding the slices in ``order``."""
    first = datasets[0]
    ds = copy.deepcopy(first)
    for keyword in (
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
        "SpacingBetweenSlices", "SliceLocation", "InStackPositionNumber", "StackID",
    ):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = ENHANCED_MR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)

    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.SliceThickness
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    for index in order:
        position = Dataset()
        position.ImagePositionPatient = datasets[index].ImagePositionPatient
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = int(index) + 1
        content.TemporalPositionIndex = 1
        item = Dataset()
        item.PlanePositionSequence = Sequence([position])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = b"".join(datasets[index].PixelData for index in order)
    return ds


def test_enhanced_multiframe_reads_like_the_series(t1_datasets, t1_image, tmp_path):
    datasets = [ds for _, ds in t1_datasets]
    order = np.random.default_rng(5).permutation(len(datasets))
    assert list(order) != sorted(order)
    make_enhanced(datasets, order).save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    image = load_image(tmp_path / "enhanced.dcm")
    assert_same_image(image, t1_image)
    assert image.meta["files"] == [str(tmp_path / "enhanced.dcm")]
    info = list_series(tmp_path)[0]
    assert info.frames == 32 and len(info.files) == 1


def test_enhanced_multiframe_per_frame_rescale(t1_datasets, t1_image, tmp_path):
    datasets = [ds for _, ds in t1_datasets]
    ds = make_enhanced(datasets, range(len(datasets)))
    transform = Dataset()
    transform.RescaleSlope = "0.5"
    transform.RescaleIntercept = "-10"
    transform.RescaleType = "US"
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = Sequence([transform])
    ds.save_as(tmp_path / "scaled.dcm", enforce_file_format=True)
    image = load_image(tmp_path / "scaled.dcm")
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, t1_image.array * 0.5 - 10.0)


# ----------------------------------------------------------------------------- compression
def test_rle_lossless_decodes_identically(t1_datasets, t1_image, tmp_path):
    def compress(index, ds):
        ds.compress(RLELossless)

    image = load_image(write_series(t1_datasets, tmp_path, compress))
    assert image.meta["transfer_syntax"] == RLELossless
    assert_same_image(image, t1_image)


def test_jpeg2000_lossless_written_by_pydicom_decodes_identically(t1_datasets, t1_image, tmp_path):
    from pydicom.pixels import get_encoder

    if not get_encoder(JPEG2000Lossless).is_available:
        pytest.skip("no JPEG 2000 encoder plugin installed for pydicom")

    def compress(index, ds):
        ds.compress(JPEG2000Lossless)

    image = load_image(write_series(t1_datasets[:8], tmp_path, compress))
    assert image.meta["transfer_syntax"] == JPEG2000Lossless
    np.testing.assert_array_equal(image.array, t1_image.array[:8])


def _jpeg_ls(datasets, folder: Path, *, offset: int) -> Path:
    """JPEG-LS lossless files encoded with imagecodecs (pydicom's own encoder needs pyjpegls)."""
    imagecodecs = pytest.importorskip("imagecodecs")
    from pydicom.encaps import encapsulate

    def compress(index, ds):
        values = ds.pixel_array.astype(np.int32) + offset
        if offset >= 0:
            ds.PixelRepresentation = 0
            stored = values.astype(np.uint16)
        else:  # signed: two's complement bits in an unsigned 16-bit stream
            stored = values.astype(np.int16).view(np.uint16)
        ds.PixelData = encapsulate([imagecodecs.jpegls_encode(stored)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEG_LS_LOSSLESS

    return write_series(datasets, folder, compress)


def test_jpeg_ls_lossless_decodes_identically(t1_datasets, t1_image, tmp_path):
    image = load_image(_jpeg_ls(t1_datasets[:6], tmp_path / "u", offset=0))
    assert image.meta["transfer_syntax"] == JPEG_LS_LOSSLESS
    np.testing.assert_array_equal(image.array, t1_image.array[:6])
    signed = load_image(_jpeg_ls(t1_datasets[:6], tmp_path / "s", offset=-1000))
    assert signed.array.dtype == np.int16 and signed.array.min() < 0
    np.testing.assert_array_equal(signed.array, t1_image.array[:6] - 1000)


# ----------------------------------------------------------------------------- rescale
def test_rescale_slope_gives_float_values(t1_datasets, t1_image, tmp_path):
    def scale(index, ds):
        ds.RescaleSlope = "2.5"
        ds.RescaleIntercept = "-100"

    image = load_image(write_series(t1_datasets[:4], tmp_path, scale))
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, t1_image.array[:4] * 2.5 - 100.0)


def test_integer_rescale_keeps_integers_wide_enough(t1_datasets, t1_image, tmp_path):
    def scale(index, ds):
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "-1024"
        ds.PixelRepresentation = 0  # unsigned 16-bit stored values: up to 64511 after rescale

    image = load_image(write_series(t1_datasets[:4], tmp_path, scale))
    assert image.array.dtype == np.int32
    np.testing.assert_array_equal(image.array, t1_image.array[:4].astype(np.int32) - 1024)


def test_signed_12_bit_values_are_sign_extended(t1_datasets, tmp_path):
    def twelve_bit(index, ds):
        values = np.clip(ds.pixel_array.astype(np.int32) - 1500, -2048, 2047)
        raw = (values & 0x0FFF).astype(np.uint16)  # 12-bit two's complement, upper bits zero
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = raw.tobytes()

    image = load_image(write_series(t1_datasets[:2], tmp_path, twelve_bit))
    expected = np.clip(
        np.stack([ds.pixel_array for _, ds in t1_datasets[:2]]).astype(np.int32) - 1500, -2048, 2047
    )
    np.testing.assert_array_equal(image.array, expected)


def test_image_without_patient_geometry_is_2d(t1_datasets, tmp_path):
    def planar(index, ds):
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient

    write_series(t1_datasets[:1], tmp_path, planar, names=["xray.dcm"])
    image = load_image(tmp_path / "xray.dcm")
    assert image.array.shape == (256, 256) and image.spatial_dims == 2
    assert image.spacing == pytest.approx((1.0547, 1.0547))
    np.testing.assert_array_equal(image.array, t1_datasets[0][1].pixel_array)


# ----------------------------------------------------------------------------- corrupt input
def test_truncated_uncompressed_file_is_an_error(t1_dir, helpers, tmp_path):
    data = helpers.series_files(t1_dir)[0].read_bytes()
    target = tmp_path / "half.dcm"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_truncated_compressed_file_is_an_error(ct_dir, helpers, tmp_path):
    data = helpers.series_files(ct_dir)[0].read_bytes()
    target = tmp_path / "CT.half"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(target)
    assert str(target) in str(info.value)


def test_truncated_slice_in_a_series_is_not_silently_dropped(ct_dir, helpers, tmp_path):
    # the first slice (lowest position) cut short: leaving it out would shift the origin unseen
    copies = helpers.copy_files(helpers.series_files(ct_dir), tmp_path)
    victim = copies[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(tmp_path)
    assert victim.name in str(info.value)


def test_header_only_file_is_an_error(t1_dir, helpers, tmp_path):
    target = tmp_path / "cut.dcm"
    target.write_bytes(helpers.series_files(t1_dir)[0].read_bytes()[:1000])
    with pytest.raises(ImageReadError, match="corrupt or truncated") as info:
        load_image(target)
    assert str(target) in str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_named_dcm_are_an_error(tmp_path, seed):
    target = tmp_path / "noise.dcm"
    target.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ImageReadError, match="not a valid DICOM file") as info:
        load_image(target)
    assert str(target) in str(info.value)


def test_corrupt_file_inside_a_series_is_named(t1_dir, helpers, tmp_path):
    helpers.copy_files(helpers.series_files(t1_dir), tmp_path)
    (tmp_path / "zz_broken.dcm").write_bytes(np.random.default_rng(3).bytes(2048))
    with pytest.raises(ImageReadError, match=re.escape("zz_broken.dcm")):
        load_image(tmp_path)


def test_folder_of_non_images_is_an_error(t1_datasets, tmp_path):
    ds = copy.deepcopy(t1_datasets[0][1])
    del ds.PixelData
    ds.save_as(tmp_path / "report.dcm")
    with pytest.raises(ImageReadError, match="no DICOM images"):
        load_image(tmp_path)
