"""Pixels as each modality means them: X-ray presentation, colour and ultrasound, PET SUV.

Cross-checked against pydicom's own LUT and colour functions on the files that ship in pydicom's
wheel, and against the SUV formula computed independently here on a PET series written from real
MR values.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlens.errors import ImageReadError
from medlens.io import load_image

PET_CLASS = "1.2.840.10008.5.1.4.1.1.128"
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
HALF_LIFE = 6586.2  # F-18, s
DOSE = 3.7e8  # Bq
WEIGHT = 72.5  # kg


def _bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom wheel")
    return Path(path)


@pytest.fixture(scope="module")
def mr_slices(real):
    return sorted(real("dicom", "mr_t1_brain").glob("*.dcm"))[:6]


# ---------------------------------------------------------------------------------- PET SUV
def _pet_series(slices, folder: Path, *, decay="START", start_dt="20240101093000",
                start_time=None, series=("20240101", "101500"), edit=None) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i, source in enumerate(slices):
        ds = pydicom.dcmread(source)
        ds.Modality = "PT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PET_CLASS
        ds.SeriesInstanceUID = series_uid
        ds.Units, ds.DecayCorrection, ds.CorrectedImage = "BQML", decay, ["ATTN", "DECY"]
        ds.RescaleSlope, ds.RescaleIntercept = f"{0.5 + 0.01 * i:.2f}", "0"
        ds.PatientWeight, ds.PatientSize, ds.PatientSex = str(WEIGHT), "1.78", "M"
        ds.SeriesDate, ds.SeriesTime = series
        ds.AcquisitionDate, ds.AcquisitionTime = series
        item = pydicom.Dataset()
        item.RadionuclideTotalDose, item.RadionuclideHalfLife = str(DOSE), str(HALF_LIFE)
        if start_dt is not None:
            item.RadiopharmaceuticalStartDateTime = start_dt
        if start_time is not None:
            item.RadiopharmaceuticalStartTime = start_time
        ds.RadiopharmaceuticalInformationSequence = [item]
        if edit is not None:
            edit(i, ds)
        ds.save_as(folder / f"PT{i:03d}.dcm", enforce_file_format=True)
    return folder


def _bq_ml(slices) -> np.ndarray:
    """Bq/ml of the series, computed here from the written slopes (slice order by position)."""
    frames = []
    for i, source in enumerate(slices):
        ds = pydicom.dcmread(source)
        frames.append((float(ds.ImagePositionPatient[0]), ds.pixel_array * (0.5 + 0.01 * i)))
    return frames


def _expected(image, slices, factor: float) -> np.ndarray:
    return {round(pos, 3): values * factor for pos, values in _bq_ml(slices)}


def _check_suv(image, slices, factor: float) -> None:
    assert image.meta["suv_factor"] == pytest.approx(factor, rel=1e-9)
    wanted = _expected(image, slices, factor)
    assert image.array.shape[0] == len(slices)
    found = 0
    for k in range(image.array.shape[0]):
        position = image.origin + image.direction[:, 2] * image.spacing[2] * k
        key = next((p for p in wanted if abs(p - position[0]) < 1e-3), None)
        if key is not None:
            np.testing.assert_allclose(image.array[k], wanted[key], rtol=2e-6, atol=1e-3)
            found += 1
    assert found == len(slices)


def test_suv_bw_with_start_decay_correction(mr_slices, tmp_path):
    folder = _pet_series(mr_slices, tmp_path / "pet")
    image = load_image(folder, suv="bw")
    seconds = (dt.datetime(2024, 1, 1, 10, 15) - dt.datetime(2024, 1, 1, 9, 30)).total_seconds()
    factor = WEIGHT * 1000 / (DOSE * math.exp(-math.log(2) * seconds / HALF_LIFE))
    _check_suv(image, mr_slices, factor)
    assert image.meta["suv"]["decay_seconds"] == seconds


def test_suv_with_admin_decay_correction_and_across_midnight(mr_slices, tmp_path):
    admin = load_image(_pet_series(mr_slices, tmp_path / "admin", decay="ADMIN"), suv="bw")
    _check_suv(admin, mr_slices, WEIGHT * 1000 / DOSE)
    night = _pet_series(mr_slices, tmp_path / "night", start_dt=None, start_time="235000",
                        series=("20240102", "003000"))  # fmt: skip
    image = load_image(night, suv="bw")
    decayed = DOSE * 2 ** (-(40 * 60) / HALF_LIFE)  # 23:50 -> 00:30 the next day
    _check_suv(image, mr_slices, WEIGHT * 1000 / decayed)


def test_suv_lbm_and_bsa(mr_slices, tmp_path):
    folder = _pet_series(mr_slices, tmp_path / "pet", decay="ADMIN")
    bmi = WEIGHT / 1.78**2
    lbm = 9270 * WEIGHT / (6680 + 216 * bmi)  # Janmahasatian, male
    bsa = 0.007184 * WEIGHT**0.425 * 178**0.725  # Du Bois, m^2
    _check_suv(load_image(folder, suv="lbm"), mr_slices, lbm * 1000 / DOSE)
    _check_suv(load_image(folder, suv="bsa"), mr_slices, bsa * 1e4 / DOSE)


def test_suv_refuses_missing_or_inconsistent_tags(mr_slices, tmp_path):
    def no_weight(i, ds):
        del ds.PatientWeight

    def mixed_units(i, ds):
        ds.Units = "BQML" if i % 2 else "CNTS"

    with pytest.raises(ImageReadError, match="PatientWeight is missing"):
        load_image(_pet_series(mr_slices, tmp_path / "a", edit=no_weight), suv="bw")
    with pytest.raises(ImageReadError, match=r"disagree on Units \(BQML, CNTS\)"):
        load_image(_pet_series(mr_slices, tmp_path / "b", edit=mixed_units), suv="bw")
    with pytest.raises(ImageReadError, match="SUV needs a PET image, not modality MR"):
        load_image(mr_slices[0], suv="bw")
    plain = load_image(_pet_series(mr_slices, tmp_path / "c"))  # no suv: Bq/ml, no factor
    assert "suv_factor" not in plain.meta


def test_philips_factor_converts_counts(mr_slices, tmp_path):
    def counts(i, ds):
        ds.Units = "CNTS"
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", "0.000321")

    image = load_image(_pet_series(mr_slices, tmp_path / "p", edit=counts), suv="bw")
    _check_suv(image, mr_slices, 0.000321)


# ------------------------------------------------------------------------ projection X-ray
def _cr(source: Path, path: Path, photometric="MONOCHROME1", edit=None) -> Path:
    ds = pydicom.dcmread(source)
    values = ds.pixel_array.astype(np.uint16) & 0x0FFF
    ds.Modality = "CR"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_CLASS
    ds.PhotometricInterpretation = photometric
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = values.tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    ds.WindowCenter, ds.WindowWidth = "700", "900"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ImagerPixelSpacing = ["0.2", "0.25"]
    ds.EstimatedRadiographicMagnificationFactor = "1.25"
    if edit is not None:
        edit(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _pydicom_presentation(path: Path) -> np.ndarray:
    """pydicom's modality + VOI transforms, to [0, 1] by pydicom's own output range, inverted
    for MONOCHROME1: the reference for ours."""
    ds = pydicom.dcmread(path)
    slope, intercept = int(ds.RescaleSlope), int(ds.RescaleIntercept)
    modality = ds.pixel_array.astype(np.int64) * slope + intercept
    voi = apply_voi_lut(modality, ds)
    if "VOILUTSequence" in ds:
        top = 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        out = voi / top
    else:  # pydicom windows to the range of the rescaled stored values
        ends = (intercept, slope * (2 ** int(ds.BitsStored) - 1) + intercept)
        out = (voi - min(ends)) / (max(ends) - min(ends))
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_cr_monochrome1_presentation_matches_pydicom(mr_slices, tmp_path, function):
    def set_function(ds):
        ds.VOILUTFunction = function

    path = _cr(mr_slices[3], tmp_path / "cr.dcm", edit=set_function)
    shown = load_image(path, presentation=True)
    assert shown.array.dtype == np.float32 and 0 <= shown.array.min() <= shown.array.max() <= 1
    np.testing.assert_allclose(shown.array, _pydicom_presentation(path), atol=2e-4)
    assert shown.meta["photometric"] == "MONOCHROME1"
    assert shown.meta["window"] == {"center": 700.0, "width": 900.0, "function": function}
    raw = load_image(path)  # modality values, the interpretation recorded
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(raw.array, ds.pixel_array.astype(np.int64) * 2 - 100)
    assert raw.meta["photometric"] == "MONOCHROME1"
    # brighter means denser: inverting MONOCHROME1 turns the largest modality values dark
    assert shown.array.flat[np.argmax(raw.array)] < shown.array.flat[np.argmin(raw.array)]
    assert shown.spacing[:2] == pytest.approx((0.25 / 1.25, 0.2 / 1.25))
    assert "Magnification" in shown.meta["pixel_spacing_source"]


def test_voi_lut_sequence_matches_pydicom_and_a_foreign_lut_is_refused(mr_slices, tmp_path):
    def lut(first: int):
        def edit(ds):
            item = pydicom.Dataset()
            item.LUTDescriptor = [2048, first, 12]
            item.add_new(0x00283006, "US", [int(v) for v in np.linspace(0, 4095, 2048) ** 0.9])
            ds.VOILUTSequence = [item]
            ds.PhotometricInterpretation = "MONOCHROME2"

        return edit

    path = _cr(mr_slices[3], tmp_path / "lut.dcm", edit=lut(0))
    shown = load_image(path, presentation=True)
    np.testing.assert_allclose(shown.array, _pydicom_presentation(path), atol=1e-6)
    assert shown.meta["voi"] == "VOI LUT Sequence"
    far = _cr(mr_slices[3], tmp_path / "far.dcm", edit=lut(60000))
    with pytest.raises(ImageReadError, match=r"far\.dcm: VOI LUT covers values 60000"):
        load_image(far, presentation=True)


# ------------------------------------------------------------------- colour and ultrasound
def test_palette_ultrasound_is_rgb_with_spacing_in_mm():
    path = _bundled("examples_palette.dcm")
    image = load_image(path)
    ds = pydicom.dcmread(path)
    expected = apply_color_lut(ds.pixel_array, ds)
    assert image.leading == ("channel",) and image.array.shape == (3, *ds.pixel_array.shape)
    np.testing.assert_array_equal(np.moveaxis(image.array, 0, -1), expected)
    region = ds.SequenceOfUltrasoundRegions[0]
    assert image.spacing[:2] == pytest.approx(
        (10 * float(region.PhysicalDeltaX), 10 * float(region.PhysicalDeltaY))
    )
    assert image.meta["pixel_spacing_source"].startswith("SequenceOfUltrasoundRegions")


def test_multiframe_ybr_ultrasound_is_an_rgb_time_series():
    path = _bundled("examples_ybr_color.dcm")
    image = load_image(path)
    ds = pydicom.dcmread(path)
    assert image.leading == ("time", "channel")
    assert image.array.shape == (30, 3, 240, 320)
    np.testing.assert_array_equal(np.moveaxis(image.array, 1, -1), ds.pixel_array)  # RGB
    step = float(ds.get("FrameTime", 0) or 0) / 1000
    if step:
        assert image.meta["time_points"][:3] == pytest.approx([0, step, 2 * step])


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm",
     "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm",
     "SC_rgb_jpeg_gdcm.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm",
     "SC_rgb_rle_2frame.dcm"],
)  # fmt: skip
def test_colour_in_every_transfer_syntax_is_rgb(name):
    path = _bundled(name)
    image = load_image(path)
    ds = pydicom.dcmread(path)
    reference = ds.pixel_array  # pydicom converts YBR to RGB by default
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        np.testing.assert_array_equal(np.moveaxis(image.array, 1, -1), reference)
    else:
        np.testing.assert_array_equal(np.moveaxis(image.array, 0, -1), reference)


def test_bad_colour_tables_and_odd_ybr_are_one_line_errors(tmp_path):
    ds = pydicom.dcmread(_bundled("examples_palette.dcm"))
    ds.RedPaletteColorLookupTableDescriptor = [256, 0, 12]
    ds.save_as(tmp_path / "palette.dcm")
    with pytest.raises(ImageReadError, match=r"palette\.dcm: Red palette descriptor gives 12 bits"):
        load_image(tmp_path / "palette.dcm")
    ds = pydicom.dcmread(_bundled("SC_ybr_full_422_uncompressed.dcm"))
    ds.Columns = int(ds.Columns) - 1
    ds.save_as(tmp_path / "odd.dcm")
    with pytest.raises(ImageReadError) as caught:
        load_image(tmp_path / "odd.dcm")
    assert "\n" not in str(caught.value) and "odd.dcm" in str(caught.value)


# ------------------------------------------------------------------------------ medlens info
def test_info_shows_photometric_window_spacing_source_and_suv(mr_slices, tmp_path, capsys):
    import json

    from medlens.cli.main import main

    cr = _cr(mr_slices[3], tmp_path / "cr.dcm", edit=lambda ds: setattr(ds, "VOILUTFunction",
                                                                         "SIGMOID"))  # fmt: skip
    assert main(["info", str(cr), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["photometric"] == "MONOCHROME1" and shown["voi_function"] == "SIGMOID"
    assert (shown["window_center"], shown["window_width"]) == (700.0, 900.0)
    assert "Magnification" in shown["pixel_spacing_source"]
    assert main(["info", str(cr), "--json", "--presentation"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert 0 <= shown["intensity"]["min"] <= shown["intensity"]["max"] <= 1
    pet = _pet_series(mr_slices, tmp_path / "pet", decay="ADMIN")
    assert main(["info", str(pet), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["suv_factor"] == pytest.approx(WEIGHT * 1000 / DOSE)
    assert main(["info", str(pet), "--json", "--suv", "lbm"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["units"] == "SUVlbm" and shown["suv_factor"] < WEIGHT * 1000 / DOSE

    def no_weight(i, ds):
        del ds.PatientWeight

    bad = _pet_series(mr_slices, tmp_path / "bad", edit=no_weight)
    assert main(["info", str(bad), "--json"]) == 0  # the image is fine; SUV says why not
    assert "PatientWeight is missing" in json.loads(capsys.readouterr().out)["suv_factor"]
    assert main(["info", str(bad), "--suv", "bw"]) == 1
    assert capsys.readouterr().err.strip().endswith("cannot compute SUV: PatientWeight is missing")


# ------------------------------------------------------- classification reads X-ray as shown
def test_classification_reads_projection_xray_as_presented_and_records_it(mr_slices, tmp_path):
    from medlens.tasks.classification.data import InputSpec, load_labelled, read_inputs

    folder = tmp_path / "xr"
    folder.mkdir()
    rows = ["path,label"]
    for i, source in enumerate(mr_slices[:4]):
        _cr(source, folder / f"cr{i}.dcm")
        rows.append(f"cr{i}.dcm,{i % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    shown = load_labelled(folder / "labels.csv")
    assert shown.spec.presentation == "auto" and shown.spec.to_dict()["presentation"] == "auto"
    expected = load_image(folder / "cr0.dcm", presentation=True).array
    np.testing.assert_allclose(shown.images[0, 0], expected, atol=1e-6)
    raw = load_labelled(folder / "labels.csv", presentation="none")
    assert raw.images.max() > 1  # modality values
    predicted = read_inputs(folder / "cr1.dcm", shown.spec)
    np.testing.assert_allclose(predicted.images[0], shown.images[1], atol=1e-6)
    old = InputSpec.from_dict({"channels": 1, "shape": [8, 8], "uint8": True})
    assert old.presentation == "none" and old.load_options == {}  # runs from before: unchanged


def test_modality_lut_sequence_gives_the_modality_values(mr_slices, tmp_path):
    from pydicom.pixels import apply_modality_lut

    def lut(ds):
        del ds.RescaleSlope, ds.RescaleIntercept
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "OD"
        item.add_new(0x00283006, "US", [int(v) for v in np.sqrt(np.arange(4096)) * 1000])
        ds.ModalityLUTSequence = [item]

    path = _cr(mr_slices[2], tmp_path / "mlut.dcm", photometric="MONOCHROME2", edit=lut)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(load_image(path).array, apply_modality_lut(ds.pixel_array, ds))
    shown = load_image(path, presentation=True)  # the window then applies to the LUT's output
    assert 0 <= shown.array.min() < shown.array.max() <= 1


def test_philips_private_scale_slope_behind_an_option(mr_slices, tmp_path):
    folder = tmp_path / "philips"
    folder.mkdir()
    for i, source in enumerate(mr_slices[:3]):
        ds = pydicom.dcmread(source)
        ds.Manufacturer = "Philips Medical Systems"
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-10"
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", 0.25 + 0.05 * i)
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    shown = load_image(folder)
    quantitative = load_image(folder, philips_scale=True)
    for k in range(3):  # each slice by its own scale: (SV * RS + RI) / (RS * SS)
        ds = pydicom.dcmread(folder / f"{k}.dcm")
        sv = ds.pixel_array.astype(np.float64)
        ss = float(ds[0x2005, 0x100E].value)
        expected = (sv * 1.5 - 10) / (1.5 * ss)
        match = [z for z in range(3) if np.allclose(shown.array[z], sv * 1.5 - 10)]
        assert len(match) == 1
        np.testing.assert_allclose(quantitative.array[match[0]], expected, rtol=1e-5, atol=1e-3)
    with pytest.raises(ImageReadError, match="no Philips private Scale Slope"):
        load_image(mr_slices[0], philips_scale=True)


def test_nm_multiframe_frames_are_ordered_by_their_named_vectors(mr_slices, tmp_path):
    """Two energy windows x two detectors, stored detector-major: read window-major, named."""
    ds = pydicom.dcmread(mr_slices[0])
    planes = [pydicom.dcmread(p).pixel_array for p in mr_slices[:4]]
    ds.Modality = "NM"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        delattr(ds, keyword)
    ds.NumberOfFrames = 4
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]
    ds.EnergyWindowVector = [2, 1, 2, 1]
    ds.DetectorVector = [1, 1, 2, 2]
    ds.PixelData = np.stack(planes).astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "nm.dcm", enforce_file_format=True)
    image = load_image(tmp_path / "nm.dcm")
    assert image.leading == ("channel",) and image.array.shape[0] == 4
    assert image.meta["frame_axes"] == ["EnergyWindowVector", "DetectorVector"]
    assert image.meta["frame_index"] == {"EnergyWindowVector": [1, 1, 2, 2],
                                         "DetectorVector": [1, 2, 1, 2]}  # fmt: skip
    for k, stored in enumerate([1, 3, 0, 2]):  # frames (window, detector) in that order
        np.testing.assert_array_equal(image.array[k], planes[stored])


def test_philips_factor_cross_checks_bqml(mr_slices, tmp_path):
    from medlens.io._dicom_suv import SUVWarning

    def philips(value):
        def edit(i, ds):
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            block.add_new(0x00, "DS", value)

        return edit

    ours = WEIGHT * 1000 / DOSE
    agreeing = _pet_series(mr_slices, tmp_path / "a", decay="ADMIN", edit=philips(f"{ours:.8g}"))
    image = load_image(agreeing, suv="bw")
    assert image.meta["suv"]["philips_factor"] == pytest.approx(ours, rel=1e-6)
    other = _pet_series(mr_slices, tmp_path / "b", decay="ADMIN", edit=philips(f"{2 * ours:.8g}"))
    with pytest.warns(SUVWarning, match="differs from Philips' SUV scale factor"):
        image = load_image(other, suv="bw")
    assert image.meta["suv_factor"] == pytest.approx(ours)  # ours is used, and said
