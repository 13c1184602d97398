"""PNG/JPEG/BMP/TIFF reading, PNG round trips and broken raster files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.errors import ImageReadError, MedlensError
from medlens.image import Image, Role
from medlens.io import load_image, save_image
from medlens.io.raster import read_raster, read_tiff, write_png

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- PNG round trips
@pytest.mark.parametrize(
    ("array", "stored_mode"),
    [
        (RNG.integers(0, 256, (20, 30)).astype(np.uint8), "L"),
        (RNG.integers(0, 65536, (20, 30)).astype(np.uint16), "I;16"),
        (RNG.integers(0, 200, (20, 30)).astype(np.uint16), "I;16"),  # 16-bit stays 16-bit
        (np.full((20, 30), 65535, np.uint16), "I;16"),
    ],
    ids=["8-bit", "16-bit", "16-bit-small-values", "16-bit-max"],
)
def test_png_round_trip_grayscale(tmp_path, array, stored_mode):
    image = Image(array, spacing=(0.3, 0.5), origin=(1.5, -2.0), modality="US")
    path = save_image(image, tmp_path / "gray.png")
    with PILImage.open(path) as pil:
        assert pil.mode == stored_mode and pil.size == (30, 20)
    back = load_image(path)
    assert back.array.dtype == array.dtype
    np.testing.assert_array_equal(back.array, array)
    assert back.spacing == (0.3, 0.5) and back.origin == (1.5, -2.0)
    assert back.modality == "US" and back.leading == ()


def test_png_round_trip_rgb(tmp_path):
    array = RNG.integers(0, 256, (3, 20, 30)).astype(np.uint8)
    image = Image(array, leading=("channel",), spacing=(0.2, 0.25), origin=(5.0, 6.0))
    path = save_image(image, tmp_path / "rgb.png")
    with PILImage.open(path) as pil:
        assert pil.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(pil)[..., 1], array[1])  # channel order kept
    back = load_image(path)
    assert back.leading == ("channel",) and back.num_channels == 3
    np.testing.assert_array_equal(back.array, array)
    assert back.spacing == (0.2, 0.25) and back.origin == (5.0, 6.0)


def test_png_rgba_is_read_as_rgb(tmp_path):
    array = RNG.integers(0, 256, (4, 8, 9)).astype(np.uint8)
    back = load_image(save_image(Image(array, leading=("channel",)), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(back.array, array[:3])


def test_png_round_trip_keeps_label_role_and_integer_types(tmp_path):
    mask = RNG.integers(0, 2, (10, 12)).astype(bool)
    back = load_image(save_image(Image(mask, role="label"), tmp_path / "mask.png"))
    assert back.role is Role.LABEL and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)
    wide = RNG.integers(0, 60000, (10, 12)).astype(np.int64)
    back = load_image(save_image(Image(wide), tmp_path / "wide.png"))
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, wide)
    # an explicit role overrides the stored one
    assert load_image(tmp_path / "mask.png", role="intensity").role is Role.INTENSITY


def test_png_direction_round_trip(tmp_path):
    image = Image(np.zeros((4, 5), np.uint8), direction=[[0, 1], [1, 0]])
    back = load_image(save_image(image, tmp_path / "swap.png"))
    np.testing.assert_array_equal(back.direction, [[0, 1], [1, 0]])


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (Image(np.zeros((3, 4, 5), np.uint8)), "2D images"),
        (Image(np.zeros((4, 5), np.float32)), "scale or cast"),
        (Image(np.full((4, 5), -1, np.int16)), "do not fit"),
        (Image(np.full((4, 5), 70000, np.int32)), "do not fit"),
        (Image(np.zeros((2, 4, 5), np.uint8), leading=("channel",)), "3 or 4 channels"),
        (Image(np.full((3, 4, 5), 300, np.uint16), leading=("channel",)), "8-bit"),
        (Image(np.zeros((2, 4, 5), np.uint8), leading=("time",)), "2D images"),
    ],
)
def test_write_png_refuses_what_png_cannot_hold(tmp_path, image, match):
    target = tmp_path / "out.png"
    with pytest.raises(MedlensError, match=match) as info:
        write_png(image, target)
    assert str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


# ----------------------------------------------------------------------------- other writers
def test_foreign_png_dpi_is_not_spacing(tmp_path):
    PILImage.fromarray(np.zeros((5, 6), np.uint8)).save(tmp_path / "web.png", dpi=(72, 72))
    image = load_image(tmp_path / "web.png")
    assert image.spacing == (1.0, 1.0)
    assert image.meta["dpi"] == pytest.approx((72.0, 72.0), abs=0.1)
    assert image.meta["spacing_known"] is False  # unit spacing stands in for none
    assert "spacing_known" not in image.replace(spacing=(0.2, 0.2)).meta  # given: known
    assert "spacing_known" not in load_image(save_image(image, tmp_path / "ours.png")).meta


def test_foreign_16_bit_png(tmp_path):
    array = RNG.integers(0, 65536, (7, 9)).astype(np.uint16)
    PILImage.fromarray(array).save(tmp_path / "depth.png")
    back = load_image(tmp_path / "depth.png")
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, array)


def test_palette_and_grey_alpha_pngs(tmp_path):
    grey = RNG.integers(0, 256, (6, 7)).astype(np.uint8)
    PILImage.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png").array, grey)
    colour = RNG.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    PILImage.fromarray(colour).quantize(8).save(tmp_path / "palette_rgb.png")
    image = load_image(tmp_path / "palette_rgb.png")
    assert image.leading == ("channel",) and image.array.shape == (3, 6, 7)
    la = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    PILImage.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png").array, grey)


def test_jpeg_and_bmp(tmp_path):
    y, x = np.mgrid[0:16, 0:24]
    colour = np.stack([x * 10, y * 15, 255 - x * 10], axis=-1).astype(np.uint8)  # smooth
    PILImage.fromarray(colour).save(tmp_path / "photo.jpg", quality=95)
    image = load_image(tmp_path / "photo.jpg")
    assert image.leading == ("channel",) and image.array.shape == (3, 16, 24)
    assert np.abs(image.array.astype(int) - np.moveaxis(colour, -1, 0)).mean() < 4  # lossy
    grey = RNG.integers(0, 256, (16, 24)).astype(np.uint8)
    PILImage.fromarray(grey).save(tmp_path / "scan.bmp")
    np.testing.assert_array_equal(load_image(tmp_path / "scan.bmp").array, grey)


def test_tiff_stack_and_rgb(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    stack = RNG.integers(0, 65535, (4, 10, 12)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    image = load_image(tmp_path / "stack.tif")
    assert image.spatial_dims == 3 and image.leading == ()
    np.testing.assert_array_equal(image.array, stack)
    rgb = RNG.integers(0, 255, (10, 12, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = read_tiff(tmp_path / "rgb.tif")
    assert image.leading == ("channel",)
    np.testing.assert_array_equal(image.array, np.moveaxis(rgb, -1, 0))
    # separate colour planes (planarconfig 2) are channels too, not a 3-slice volume
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    image = load_image(tmp_path / "planar.tif")
    assert image.leading == ("channel",) and image.spatial_dims == 2
    np.testing.assert_array_equal(image.array, np.moveaxis(rgb, -1, 0))
    floats = RNG.normal(size=(10, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", floats)
    np.testing.assert_array_equal(load_image(tmp_path / "f.tiff").array, floats)


# ----------------------------------------------------------------------------- broken files
def _png_bytes(tmp_path) -> bytes:
    PILImage.fromarray(np.arange(10000, dtype=np.uint8).reshape(100, 100)).save(tmp_path / "ok.png")
    return (tmp_path / "ok.png").read_bytes()


@pytest.mark.parametrize("keep", [33, 60, 200])
def test_png_with_garbage_after_the_header_is_an_error(tmp_path, keep):
    data = _png_bytes(tmp_path)
    target = tmp_path / "broken.png"
    target.write_bytes(data[:keep] + np.random.default_rng(keep).bytes(500))
    with pytest.raises(ImageReadError, match="corrupt or unreadable") as info:
        load_image(target)
    assert str(target) in str(info.value)


def test_truncated_png_is_an_error(tmp_path):
    data = _png_bytes(tmp_path)
    target = tmp_path / "short.png"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=re.escape("short.png")):
        read_raster(target)


@pytest.mark.parametrize("name", ["notes.png", "notes.jpg", "notes.tif", "notes.bmp", "x.nii"])
def test_text_file_with_an_image_suffix_is_an_error(tmp_path, name):
    target = tmp_path / name
    target.write_text("this is not an image\n" * 30)
    with pytest.raises(ImageReadError, match="not a recognised medical image format") as info:
        load_image(target)
    assert str(target) in str(info.value)


def test_corrupt_tiff_is_an_error(tmp_path):
    target = tmp_path / "bad.tif"
    target.write_bytes(b"II*\x00" + np.random.default_rng(1).bytes(300))
    with pytest.raises(ImageReadError, match=re.escape("bad.tif")):
        load_image(target)
