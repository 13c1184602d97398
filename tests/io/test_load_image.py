"""``load_image`` / ``save_image``: format by content, roles, atomic writes, one-line errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.errors import ImageReadError, MedlensError
from medlens.image import Image, Role
from medlens.io import load_image, save_image
from medlens.io._detect import sniff


# ----------------------------------------------------------------------------- format by content
def test_format_is_chosen_by_content_not_name(tmp_path, real, helpers):
    ct = real(*helpers.CT_SMALL)
    shutil.copyfile(ct, tmp_path / "scan.dat")  # a gzipped NIfTI with a misleading name
    assert sniff(tmp_path / "scan.dat") == "nifti"
    expected = load_image(ct).array
    np.testing.assert_array_equal(load_image(tmp_path / "scan.dat").array, expected)
    shutil.copyfile(ct, tmp_path / "gzipped.nii")  # compressed content, uncompressed name
    np.testing.assert_array_equal(load_image(tmp_path / "gzipped.nii").array, expected)
    (tmp_path / "plain.bin").write_bytes(gzip.decompress(ct.read_bytes()))
    assert sniff(tmp_path / "plain.bin") == "nifti"
    plain = load_image(tmp_path / "plain.bin")
    np.testing.assert_array_equal(plain.array, expected)
    assert plain.same_grid(load_image(ct))

    PILImage.fromarray(np.eye(4, dtype=np.uint8) * 9).save(tmp_path / "png_named.jpg", "PNG")
    assert sniff(tmp_path / "png_named.jpg") == "png"
    np.testing.assert_array_equal(load_image(tmp_path / "png_named.jpg").array, np.eye(4) * 9)

    t1_file = helpers.series_files(real(*helpers.T1_SERIES))[0]
    shutil.copyfile(t1_file, tmp_path / "IMG0001")  # DICOM files often have no suffix
    assert sniff(tmp_path / "IMG0001") == "dicom"
    assert load_image(tmp_path / "IMG0001").array.shape == (1, 256, 256)


def test_preamble_less_dicom_is_read(tmp_path, real, helpers):
    t1_file = helpers.series_files(real(*helpers.T1_SERIES))[0]
    raw = t1_file.read_bytes()
    assert raw[128:132] == b"DICM"
    (tmp_path / "bare").write_bytes(raw[132:])  # no preamble, no DICM marker
    image = load_image(tmp_path / "bare")
    np.testing.assert_array_equal(image.array, load_image(t1_file).array)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".png", ".npz"])
def test_save_then_load_for_every_writer(tmp_path, suffix):
    image = Image(np.arange(12, dtype=np.uint8).reshape(3, 4), spacing=(0.5, 2.0), role="label")
    back = load_image(save_image(image, tmp_path / f"out{suffix}"), role="label")
    np.testing.assert_array_equal(back.array, image.array)
    assert back.spacing == pytest.approx(image.spacing) and back.role is Role.LABEL


def test_role_argument(tmp_path, real, helpers):
    seg = real(*helpers.CT_SMALL_SEG)
    assert load_image(seg).role is Role.INTENSITY
    assert load_image(seg, role="label").role is Role.LABEL
    assert load_image(seg, role=Role.LABEL).is_label
    t1 = real(*helpers.T1_SERIES)
    assert load_image(t1, role="label").role is Role.LABEL
    with pytest.raises(ValueError):
        load_image(seg, role="segmentation")


def test_save_image_unknown_extension(tmp_path):
    with pytest.raises(MedlensError, match="unknown output format") as info:
        save_image(Image(np.zeros((2, 2))), tmp_path / "image.jpg")
    assert "image.jpg" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_save_image_creates_folders_and_leaves_no_temporary_files(tmp_path):
    image = Image(np.zeros((3, 4), np.uint8))
    for name in ("a/b/c.nii.gz", "a/d.png", "e/f.npz", "a/b/c.nii.gz"):  # last one overwrites
        assert save_image(image, tmp_path / name) == tmp_path / name
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert found == ["a/b/c.nii.gz", "a/d.png", "e/f.npz"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".png", ".npz"])
def test_failed_write_leaves_neither_partial_nor_temporary_file(tmp_path, suffix, monkeypatch):
    from medlens import _atomic
    from medlens._atomic import OutputError

    real_replace = _atomic.os.replace

    def crash(src, dst):  # the data is fully written, but the final rename never happens
        raise OSError("power cut")

    monkeypatch.setattr(_atomic.os, "replace", crash)
    target = tmp_path / f"out{suffix}"
    with pytest.raises(OutputError, match=r"out\..*: cannot write \(power cut\)") as caught:
        save_image(Image(np.zeros((3, 4), np.uint8)), target)
    assert caught.value.path == target  # the user's path, not the temporary file's
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(_atomic.os, "replace", real_replace)
    save_image(Image(np.zeros((3, 4), np.uint8)), target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# ----------------------------------------------------------------------------- corrupt inputs
def _make_corrupt(kind: str, tmp_path: Path, data_root: Path | None) -> Path:
    rng = np.random.default_rng(0)
    if kind == "missing":
        return tmp_path / "nowhere" / "scan.nii.gz"
    if kind == "empty file":
        (tmp_path / "empty.dcm").write_bytes(b"")
        return tmp_path / "empty.dcm"
    if kind == "empty nii.gz":
        (tmp_path / "empty.nii.gz").write_bytes(b"")
        return tmp_path / "empty.nii.gz"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if kind == "folder of non-DICOM files":
        folder = tmp_path / "docs"
        folder.mkdir()
        (folder / "README.txt").write_text("hello")
        (folder / "notes").write_text("plain text without a suffix")
        PILImage.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "photo.png")
        return folder
    if kind == "random bytes .dcm":
        (tmp_path / "noise.dcm").write_bytes(rng.bytes(8192))
        return tmp_path / "noise.dcm"
    if kind == "text .dcm":
        (tmp_path / "notes.dcm").write_text("not a DICOM file\n" * 20)
        return tmp_path / "notes.dcm"
    if kind == "text .png":
        (tmp_path / "notes.png").write_text("not a PNG\n" * 20)
        return tmp_path / "notes.png"
    if kind == "text .nii.gz":
        (tmp_path / "notes.nii.gz").write_text("not gzip\n" * 20)
        return tmp_path / "notes.nii.gz"
    if kind == "png with garbage":
        PILImage.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "ok.png")
        head = (tmp_path / "ok.png").read_bytes()[:41]
        (tmp_path / "garbage.png").write_bytes(head + rng.bytes(300))
        return tmp_path / "garbage.png"
    assert data_root is not None
    if kind == "truncated DICOM":
        source = sorted((data_root / "dicom" / "mr_t1_brain").iterdir())[0].read_bytes()
        (tmp_path / "half.dcm").write_bytes(source[: len(source) // 2])
        return tmp_path / "half.dcm"
    if kind == "truncated JPEG 2000 DICOM":
        folder = data_root / "totalsegmentator" / "ct_dicom_series" / "dicom"
        source = sorted(folder.iterdir())[0].read_bytes()
        (tmp_path / "CT.cut").write_bytes(source[: len(source) // 2])
        return tmp_path / "CT.cut"
    if kind == "truncated nii.gz":
        source = (data_root / "totalsegmentator" / "ct_small" / "example_ct_sm.nii.gz").read_bytes()
        (tmp_path / "cut.nii.gz").write_bytes(source[: len(source) // 2])
        return tmp_path / "cut.nii.gz"
    raise AssertionError(kind)


SYNTHETIC = {
    "missing": "no such file or folder",
    "empty file": "file is empty",
    "empty nii.gz": "file is empty",
    "empty folder": "folder is empty",
    "folder of non-DICOM files": "holds no DICOM files",
    "random bytes .dcm": "not a valid DICOM file",
    "text .dcm": "not a valid DICOM file",
    "text .png": "not a recognised medical image format",
    "text .nii.gz": "not a recognised medical image format",
    "png with garbage": "corrupt or unreadable image",
}
FROM_REAL = {
    "truncated DICOM": "truncated",
    "truncated JPEG 2000 DICOM": "truncated",
    "truncated nii.gz": "corrupt or truncated gzip",
}


def _check_error(path: Path, problem: str) -> None:
    with pytest.raises(ImageReadError, match=problem) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")  # names the file first
    assert "\n" not in message and len(message) < 400  # one line
    assert info.value.path == path


@pytest.mark.parametrize(("kind", "problem"), SYNTHETIC.items(), ids=list(SYNTHETIC))
def test_corrupt_input_gives_one_line_error_naming_it(tmp_path, kind, problem):
    _check_error(_make_corrupt(kind, tmp_path, None), problem)


@pytest.mark.parametrize(("kind", "problem"), FROM_REAL.items(), ids=list(FROM_REAL))
def test_corrupt_copy_of_real_file_gives_one_line_error(tmp_path, data_root, kind, problem):
    _check_error(_make_corrupt(kind, tmp_path, data_root), problem)


def test_gzip_wrapping_a_non_nifti_is_named(tmp_path):
    target = tmp_path / "archive.nii.gz"
    target.write_bytes(gzip.compress(np.zeros(1000, np.uint8).tobytes()))
    _check_error(target, "does not hold a NIfTI")
