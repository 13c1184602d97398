"""Enhancement steps against their formulas, SciPy's Gaussian filter and scikit-image's CLAHE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medlens.errors import MedlensError
from medlens.image import Image, Role
from medlens.preprocessing import CLAHE, Brightness, Contrast, Gamma, Sharpen


@pytest.fixture(scope="module")
def ultrasound(real):
    from medlens.io import load_image

    return load_image(real("hc18", "images", "000_HC.png"))


def test_contrast_scales_deviation_around_the_mean(ct_small_image):
    array = ct_small_image.array.astype(np.float64)
    out = Contrast(1.5)(ct_small_image).array.astype(np.float64)
    assert out.mean() == pytest.approx(array.mean(), abs=1e-2)
    assert out.std() == pytest.approx(1.5 * array.std(), rel=1e-5)
    np.testing.assert_allclose(Contrast(1.0)(ct_small_image).array, array, atol=1e-3)
    flat = Contrast(0.0)(ct_small_image).array
    np.testing.assert_allclose(flat, array.mean(), rtol=1e-6)


def test_brightness_adds_delta_and_accepts_tensors(ultrasound):
    out = Brightness(12.5)(ultrasound)
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.array, ultrasound.array.astype(np.float32) + 12.5)
    batch = torch.zeros(2, 1, 4, 4)
    assert torch.equal(Brightness(-1.0)(batch), batch - 1.0)


def test_gamma_keeps_the_range_and_follows_the_formula(ultrasound):
    array = ultrasound.array.astype(np.float64)
    out = Gamma(0.5)(ultrasound).array
    low, high = array.min(), array.max()
    expected = ((array - low) / (high - low)) ** 0.5 * (high - low) + low
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    assert out.min() == pytest.approx(low) and out.max() == pytest.approx(high)
    np.testing.assert_allclose(Gamma(1.0)(ultrasound).array, array, atol=1e-4)
    constant = Gamma(2.0)(Image(np.full((3, 3), 4.0)))
    np.testing.assert_array_equal(constant.array, 4.0)
    batch = torch.rand(2, 3, 5, 5)
    np.testing.assert_allclose(
        Gamma(2.0)(batch)[1, 2].numpy(),
        Gamma(2.0)(Image(batch[1, 2].numpy())).array,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="positive"):
        Gamma(0.0)(ultrasound)


def test_sharpen_equals_a_manual_unsharp_mask(ultrasound, ct_small_image):
    array = ultrasound.array.astype(np.float32)
    expected = array + 0.8 * (array - ndimage.gaussian_filter(array, sigma=2.0))
    np.testing.assert_allclose(Sharpen(0.8, 2.0)(ultrasound).array, expected, atol=1e-4)
    # per-axis sigma in index order (x, y, z) is reversed for the (z, y, x) array
    volume = ct_small_image.array.astype(np.float32)
    expected = volume + 1.5 * (volume - ndimage.gaussian_filter(volume, sigma=(0.5, 1.0, 2.0)))
    out = Sharpen(1.5, (2.0, 1.0, 0.5))(ct_small_image)
    np.testing.assert_allclose(out.array, expected, atol=1e-2)
    assert out.same_grid(ct_small_image)
    np.testing.assert_array_equal(Sharpen(0.0)(ultrasound).array, array)


def test_sharpen_never_blurs_across_channels():
    array = np.zeros((2, 9, 9), np.float32)
    array[0, 4, 4] = 1.0
    out = Sharpen(1.0, 1.0)(Image(array, leading=("channel",)))
    np.testing.assert_array_equal(out.array[1], 0.0)
    with pytest.raises(TypeError):
        Sharpen()(torch.zeros(1, 1, 4, 4))


def test_clahe_equals_scikit_image_in_2d(ultrasound):
    from skimage import exposure

    out = CLAHE(clip_limit=0.02, kernel_size=64)(ultrasound)
    expected = exposure.equalize_adapthist(ultrasound.array, kernel_size=64, clip_limit=0.02)
    assert out.array.dtype == np.float32 and out.same_grid(ultrasound)
    np.testing.assert_array_equal(out.array, expected.astype(np.float32))
    # per-axis kernel sizes are given in index order (x, y)
    out = CLAHE(kernel_size=(100, 60))(ultrasound)
    expected = exposure.equalize_adapthist(ultrasound.array, kernel_size=(60, 100))
    np.testing.assert_array_equal(out.array, expected.astype(np.float32))


def test_clahe_equals_scikit_image_in_3d(ct_small_image):
    from skimage import exposure

    out = CLAHE(clip_limit=0.03, kernel_size=(16, 16, 8))(ct_small_image)
    scaled = exposure.rescale_intensity(
        ct_small_image.array.astype(np.float64), out_range=(0.0, 1.0)
    )  # float images go to scikit-image scaled to [0, 1]
    expected = exposure.equalize_adapthist(scaled, kernel_size=(8, 16, 16), clip_limit=0.03)
    np.testing.assert_array_equal(out.array, expected.astype(np.float32))
    assert out.array.min() >= 0.0 and out.array.max() <= 1.0


def test_clahe_refuses_labels_nan_and_rgb_like_volumes():
    with pytest.raises(ValueError, match="label"):
        CLAHE()(Image(np.ones((8, 8), np.uint8), role=Role.LABEL))
    bad = np.ones((8, 8), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(MedlensError, match=r"us\.png"):
        CLAHE()(Image(bad, meta={"path": "us.png"}))
    with pytest.raises(ValueError, match="x axis"):
        CLAHE()(Image(np.ones((8, 8, 3), np.float32)))
