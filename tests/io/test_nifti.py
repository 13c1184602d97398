"""NIfTI reading against SimpleITK, write/read round trips and corrupt files."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest

from medlens.errors import ImageReadError, MedlensError
from medlens.image import Image, Role
from medlens.io import load_image, save_image
from medlens.io.nifti import read_nifti, write_nifti


def oblique(angle_deg: float = 25.0) -> np.ndarray:
    """A proper rotation that is not axis-aligned, times an axis swap (non-identity direction)."""
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    swap = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])
    return rz @ swap


def assert_same_geometry(a: Image, b: Image, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


# ----------------------------------------------------------------------------- real volumes
@pytest.mark.parametrize(
    "item", ["CT_SMALL", "CT_SMALL_SEG", "MR_SMALL", "MR_SMALL_SEG", "CT_SERIES_SEG"]
)
def test_real_nifti_matches_simpleitk(item, real, helpers):
    path = real(*getattr(helpers, item))
    image = load_image(path)
    helpers.assert_matches_sitk(image, helpers.sitk_read(path))
    assert image.meta["format"] == "nifti" and image.meta["path"] == str(path)
    assert image.leading == ()


def test_real_nifti_orientations_and_types(real, helpers):
    ct = load_image(real(*helpers.CT_SMALL))
    assert ct.orientation == "RAS" and ct.array.dtype == np.int16
    assert ct.array.shape == (30, 101, 122)
    assert ct.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert -1100 <= ct.array.min() < -900 and ct.array.max() > 500  # Hounsfield units
    seg = load_image(real(*helpers.CT_SMALL_SEG), role="label")
    assert seg.role is Role.LABEL and seg.array.dtype == np.uint8
    assert len(np.unique(seg.array)) == 42  # background + 41 structures present
    assert seg.same_grid(ct)
    mr = load_image(real(*helpers.MR_SMALL))
    assert mr.orientation == "LPS" and mr.array.shape == (20, 91, 117)
    assert load_image(real(*helpers.CT_SERIES_SEG)).orientation == "LAS"


def test_reading_is_a_view_of_the_decoded_data(real, helpers):
    # (z, y, x) C order is NIfTI's Fortran-order (x, y, z) reversed: no copy, writable, and
    # contiguous, so a tensor made from it shares its memory
    image = load_image(real(*helpers.CT_SMALL))
    assert image.array.flags.c_contiguous and image.array.flags.writeable
    tensor = image.to_tensor()
    tensor[0, 0, 0] = 1234
    assert image.array[0, 0, 0] == 1234


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_3d_oblique_with_origin(tmp_path, suffix, helpers):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    image = Image(
        array,
        spacing=(0.5, 0.7, 2.0),
        origin=(10.5, -20.25, 30.0),
        direction=oblique(),
        meta={"description": "round trip"},
    )
    path = save_image(image, tmp_path / f"volume{suffix}")
    back = load_image(path)
    np.testing.assert_array_equal(back.array, array)
    assert back.array.dtype == np.float32
    assert_same_geometry(back, image)
    assert back.meta["description"] == "round trip"
    # another reader sees the same geometry and voxels
    helpers.assert_matches_sitk(back, helpers.sitk_read(path))


def test_round_trip_keeps_real_ct_geometry(tmp_path, real, helpers):
    ct = load_image(real(*helpers.CT_SMALL))
    back = load_image(save_image(ct, tmp_path / "ct.nii.gz"))
    np.testing.assert_array_equal(back.array, ct.array)
    assert back.array.dtype == np.int16
    assert back.same_grid(ct, atol=1e-5)


def test_round_trip_2d(tmp_path, helpers):
    array = np.arange(6 * 9, dtype=np.int16).reshape(6, 9) - 20
    image = Image(array, spacing=(0.4, 0.8), origin=(3.0, -4.0), direction=[[0, 1], [1, 0]])
    path = save_image(image, tmp_path / "slice.nii.gz")
    back = load_image(path)
    assert back.spatial_dims == 2
    np.testing.assert_array_equal(back.array, array)
    assert_same_geometry(back, image)
    helpers.assert_matches_sitk(back, helpers.sitk_read(path))


def test_round_trip_4d_time(tmp_path, helpers):
    rng = np.random.default_rng(1)
    array = rng.integers(-500, 500, size=(4, 5, 6, 7)).astype(np.int16)
    image = Image(
        array,
        spacing=(1.0, 2.0, 3.0),
        origin=(1.0, 2.0, 3.0),
        direction=oblique(-40),
        leading=("time",),
        meta={"time_step": 2.5},
    )
    path = save_image(image, tmp_path / "fmri.nii.gz")
    back = load_image(path)
    assert back.leading == ("time",) and back.array.shape == (4, 5, 6, 7)
    np.testing.assert_array_equal(back.array, array)
    assert_same_geometry(back, image)
    assert back.meta["time_step"] == pytest.approx(2.5)
    reference = helpers.sitk_read(path)
    assert reference.GetSize() == (7, 6, 5, 4)
    assert reference.GetSpacing()[3] == pytest.approx(2.5)


def test_round_trip_real_fmri(tmp_path, real, helpers):
    fmri = load_image(real(*helpers.FMRI_HUMAN))
    back = load_image(save_image(fmri, tmp_path / "fmri.nii"))
    assert back.leading == ("time",)
    np.testing.assert_array_equal(back.array, fmri.array)
    assert back.same_grid(fmri, atol=1e-4)


def test_round_trip_channels(tmp_path):
    array = np.random.default_rng(2).integers(0, 255, size=(3, 4, 5, 6)).astype(np.uint8)
    image = Image(array, leading=("channel",), spacing=(1.0, 1.5, 2.0))
    back = load_image(save_image(image, tmp_path / "rgb.nii.gz"))
    assert back.leading == ("channel",)
    np.testing.assert_array_equal(back.array, array)


def test_2d_image_with_leading_axis_keeps_its_axes(tmp_path):
    # (t, y, x) used to be written as an (x, y, t) *volume*, or to crash when it was a time series
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    cine = Image(array, spacing=(0.5, 0.25), leading=("time",), meta={"time_step": 0.04})
    back = load_image(save_image(cine, tmp_path / "cine.nii.gz"))
    assert back.leading == ("time",) and back.array.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(back.array[:, 0], array)
    assert back.spacing[:2] == pytest.approx((0.5, 0.25))
    assert back.meta["time_step"] == pytest.approx(0.04)
    rgb = Image(array.astype(np.uint8), leading=("channel",))
    back = load_image(save_image(rgb, tmp_path / "rgb.nii.gz"))
    assert back.leading == ("channel",) and back.array.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(back.array[:, 0], array)


def test_round_trip_uint8_label_map(tmp_path, real, helpers):
    seg = load_image(real(*helpers.CT_SMALL_SEG), role="label")
    path = save_image(seg, tmp_path / "seg.nii.gz")
    back = load_image(path, role="label")
    assert back.array.dtype == np.uint8 and back.role is Role.LABEL
    np.testing.assert_array_equal(back.array, seg.array)
    assert back.same_grid(seg)
    assert nib.load(str(path)).get_data_dtype() == np.uint8


@pytest.mark.parametrize(
    ("dtype", "low", "high", "stored"),
    [
        (np.int64, 0, 117, np.uint8),
        (np.int64, -3, 300, np.int16),
        (np.int64, 0, 70_000, np.int32),
        (np.uint32, 0, 200, np.uint8),
        (np.uint64, 0, 255, np.uint8),
        (bool, 0, 1, np.uint8),
    ],
)
def test_wide_integer_labels_are_narrowed_losslessly(tmp_path, dtype, low, high, stored):
    rng = np.random.default_rng(3)
    array = rng.integers(low, high + 1, size=(4, 5, 6)).astype(dtype)
    array.flat[0], array.flat[1] = low, high
    path = save_image(Image(array, role="label"), tmp_path / "labels.nii.gz")
    assert nib.load(str(path)).get_data_dtype() == stored
    back = load_image(path)
    assert back.array.dtype == stored
    np.testing.assert_array_equal(back.array, array.astype(stored))


def test_float16_is_written_as_float32(tmp_path):
    array = np.linspace(-2, 2, 60, dtype=np.float16).reshape(3, 4, 5)
    back = load_image(save_image(Image(array), tmp_path / "half.nii"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, array.astype(np.float32))


# ----------------------------------------------------------------------------- other writers' files
def test_scaled_nifti_applies_slope_and_intercept(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nii = nib.Nifti1Image(data, np.eye(4))
    nii.header.set_slope_inter(0.5, -3.0)
    for name in ("scaled.nii", "scaled.nii.gz"):
        nib.save(nii, str(tmp_path / name))
        image = load_image(tmp_path / name)
        np.testing.assert_allclose(image.array, data.T * 0.5 - 3.0)


def test_qform_only_file_is_read(tmp_path, helpers):
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    nii = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), None)
    nii.header.set_qform(affine, code=1)
    nii.header.set_sform(None, code=0)
    nib.save(nii, str(tmp_path / "q.nii"))
    image = load_image(tmp_path / "q.nii")
    np.testing.assert_allclose(image.ras_affine, affine, atol=1e-5)
    helpers.assert_matches_sitk(image, helpers.sitk_read(tmp_path / "q.nii"))


def test_multi_member_gzip_is_read(tmp_path, real, helpers):
    raw = gzip.decompress(real(*helpers.CT_SMALL).read_bytes())
    half = len(raw) // 2
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    image = load_image(tmp_path / "multi.nii.gz")
    np.testing.assert_array_equal(image.array, load_image(real(*helpers.CT_SMALL)).array)


def test_analyze_style_pair_is_read(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    nib.save(nib.Nifti1Pair(data, np.diag([2.0, 3.0, 4.0, 1.0])), str(tmp_path / "pair.img"))
    image = read_nifti(tmp_path / "pair.hdr")
    np.testing.assert_array_equal(image.array, data.T)
    assert image.spacing == pytest.approx((2.0, 3.0, 4.0))


# ----------------------------------------------------------------------------- corrupt files
def test_truncated_gzip_is_an_error(tmp_path, real, helpers):
    data = real(*helpers.CT_SMALL).read_bytes()
    target = tmp_path / "cut.nii.gz"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated gzip") as info:
        load_image(target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_gzip_body_is_an_error(tmp_path, real, helpers):
    data = bytearray(real(*helpers.CT_SMALL).read_bytes())
    data[5000:5400] = np.random.default_rng(0).bytes(400)  # header intact, deflate data broken
    target = tmp_path / "broken.nii.gz"
    target.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=re.escape("broken.nii.gz")):
        load_image(target)


def test_truncated_uncompressed_nifti_is_an_error(tmp_path):
    nib.save(
        nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)), str(tmp_path / "a.nii")
    )
    data = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "a.nii").write_bytes(data[:2000])
    with pytest.raises(ImageReadError, match=re.escape("a.nii")):
        load_image(tmp_path / "a.nii")


def test_gzip_that_is_not_nifti_is_an_error(tmp_path):
    (tmp_path / "notes.nii.gz").write_bytes(gzip.compress(b"hello " * 200))
    with pytest.raises(ImageReadError, match="does not hold a NIfTI"):
        load_image(tmp_path / "notes.nii.gz")


def test_write_nifti_is_atomic(tmp_path, monkeypatch):
    image = Image(np.zeros((3, 4, 5), np.float32))
    target = tmp_path / "out.nii.gz"
    write_nifti(image, target)
    before = target.read_bytes()

    def broken_save(nii, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(MedlensError, match=r"out\.nii\.gz: cannot write \(disk full\)"):
        write_nifti(Image(np.ones((3, 4, 5), np.float32)), target)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
    with pytest.raises(MedlensError, match=r"new\.nii\.gz: cannot write"):
        write_nifti(image, tmp_path / "new.nii.gz")
    assert not (tmp_path / "new.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
