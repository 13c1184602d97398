"""Intensity normalisation: statistics by hand, the fit/transform contract, CT windows, tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import GeometryError, MedlensError
from medlens.image import Image, Role
from medlens.preprocessing import (
    CT_WINDOWS,
    CTWindow,
    MinMax,
    NotFittedError,
    PercentileClipZScore,
    ZScore,
)


@pytest.fixture(scope="module")
def ct_seg(real, helpers):
    from medlens.io import load_image

    return load_image(real(*helpers.CT_SMALL_SEG), role="label")


def random_image(shape=(5, 6, 7), seed=0, **kwargs) -> Image:
    rng = np.random.default_rng(seed)
    return Image((rng.normal(50.0, 20.0, shape)).astype(np.float32), **kwargs)


# ----------------------------------------------------------------------------- z-score
def test_zscore_gives_zero_mean_unit_std(ct_small_image):
    out = ZScore()(ct_small_image)
    assert out.array.dtype == np.float32 and out.same_grid(ct_small_image)
    assert out.array.mean(dtype=np.float64) == pytest.approx(0.0, abs=1e-5)
    assert out.array.std(dtype=np.float64) == pytest.approx(1.0, abs=1e-5)
    assert out.meta == ct_small_image.meta


def test_zscore_inside_a_mask(ct_small_image, ct_seg):
    out = ZScore()(ct_small_image, mask=ct_seg)
    inside = out.array[ct_seg.array > 0].astype(np.float64)
    assert inside.mean() == pytest.approx(0.0, abs=1e-5)
    assert inside.std() == pytest.approx(1.0, abs=1e-5)
    # every voxel is normalised with the mask's statistics
    values = ct_small_image.array[ct_seg.array > 0].astype(np.float64)
    expected = (ct_small_image.array - values.mean()) / values.std()
    np.testing.assert_allclose(out.array, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(MedlensError, match="empty"):
        ZScore()(ct_small_image, mask=np.zeros(ct_small_image.spatial_shape, bool))
    with pytest.raises(GeometryError):
        ZScore()(ct_small_image, mask=np.ones((3, 3, 3), bool))


def test_zscore_nonzero_leaves_background_at_zero():
    array = np.zeros((6, 8, 8), np.float32)
    array[1:5, 2:6, 2:6] = np.random.default_rng(1).uniform(10, 30, (4, 4, 4))
    out = ZScore(nonzero=True)(Image(array))
    assert np.all(out.array[array == 0] == 0)
    inside = out.array[array != 0].astype(np.float64)
    assert inside.mean() == pytest.approx(0.0, abs=1e-5)
    assert inside.std() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(MedlensError, match="non-zero region is empty"):
        ZScore(nonzero=True)(Image(np.zeros((4, 4), np.float32)))


def test_zscore_per_channel_and_on_tensors():
    rng = np.random.default_rng(2)
    array = np.stack([rng.normal(0, 1, (6, 7)), rng.normal(100, 30, (6, 7))]).astype(np.float32)
    image = Image(array, leading=("channel",))
    out = ZScore()(image)
    assert out.leading == ("channel",)
    np.testing.assert_allclose(out.array.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.array.std(axis=(1, 2)), 1.0, atol=1e-5)
    batch = torch.from_numpy(np.stack([array, 2 * array + 5]))  # (B, C, H, W)
    normed = ZScore()(batch)
    assert isinstance(normed, torch.Tensor) and normed.shape == batch.shape
    np.testing.assert_allclose(normed[0].numpy(), out.array, atol=1e-5)
    np.testing.assert_allclose(normed[1].numpy(), out.array, atol=1e-5)  # affine-invariant
    masked = ZScore()(batch, mask=batch[:, :1] > 0)
    assert masked.shape == batch.shape


def test_zscore_constant_image_nan_and_label_maps():
    out = ZScore()(Image(np.full((4, 5), 7.0, np.float32)))
    np.testing.assert_array_equal(out.array, 0.0)
    bad = np.ones((4, 5, 6), np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(MedlensError, match=r"scan\.nii\.gz.*NaN"):
        ZScore()(Image(bad, meta={"path": "scan.nii.gz"}))
    with pytest.raises(MedlensError, match="NaN"):
        ZScore()(torch.from_numpy(bad)[None, None])
    with pytest.raises(ValueError, match="label maps"):
        ZScore()(Image(np.ones((4, 5), np.uint8), role=Role.LABEL))
    with pytest.raises(TypeError):
        ZScore()(np.ones((4, 5)))


# ----------------------------------------------------------------------------- fitted percentiles
def test_percentile_clip_zscore_learns_plausible_hu_bounds_on_real_ct(ct_small_image, ct_seg):
    step = PercentileClipZScore(samples_per_image=None)
    assert step.fit([ct_small_image], [ct_seg]) is step
    foreground = ct_small_image.array[ct_seg.array > 0].astype(np.float64)
    lower, upper = np.percentile(foreground, [0.5, 99.5])
    assert step.lower_ == pytest.approx(lower) and step.upper_ == pytest.approx(upper)
    # the organs include the lungs (air) and the spine (bone)
    assert -1024 <= step.lower_ < -800 and 200 < step.upper_ < 1200
    clipped = np.clip(foreground, lower, upper)
    assert step.mean_ == pytest.approx(clipped.mean()) and step.std_ == pytest.approx(clipped.std())
    assert step.n_voxels_ == foreground.size

    out = step.transform(ct_small_image)
    inside = out.array[ct_seg.array > 0].astype(np.float64)
    assert inside.mean() == pytest.approx(0.0, abs=1e-4)
    assert inside.std() == pytest.approx(1.0, abs=1e-4)
    assert out.array.min() == pytest.approx((lower - step.mean_) / step.std_, rel=1e-5)
    assert out.array.max() == pytest.approx((upper - step.mean_) / step.std_, rel=1e-5)


def test_percentile_clip_zscore_subsamples_with_a_seed(ct_small_image, ct_seg):
    shifted = ct_small_image.with_array(ct_small_image.array + 100)
    a = PercentileClipZScore(samples_per_image=5000, seed=3).fit(
        [ct_small_image, shifted], [ct_seg, ct_seg]
    )
    b = PercentileClipZScore(samples_per_image=5000, seed=3).fit(
        [ct_small_image, shifted], [ct_seg, ct_seg]
    )
    c = PercentileClipZScore(samples_per_image=5000, seed=4).fit(
        [ct_small_image, shifted], [ct_seg, ct_seg]
    )
    assert a.get_state() == b.get_state()
    assert a.get_state() != c.get_state()
    assert a.n_voxels_ == 10000
    full = PercentileClipZScore(samples_per_image=None).fit(
        [ct_small_image, shifted], [ct_seg, ct_seg]
    )
    assert a.mean_ == pytest.approx(full.mean_, abs=0.05 * full.std_)
    assert a.std_ == pytest.approx(full.std_, rel=0.05)


def test_percentile_clip_zscore_contract_and_errors(ct_small_image, ct_seg):
    step = PercentileClipZScore(lower=1.0, upper=99.0)
    assert vars(step) == step.get_params()  # __init__ stores its arguments, nothing else
    with pytest.raises(NotFittedError, match="fit"):
        step.transform(ct_small_image)
    empty = np.zeros(ct_small_image.spatial_shape, np.uint8)
    with pytest.raises(MedlensError, match="no foreground"):
        step.fit([ct_small_image], [empty])
    # an empty mask is skipped when another image has foreground
    step.fit([ct_small_image, ct_small_image], [empty, ct_seg])
    assert step.n_voxels_ == 10000
    bad = ct_small_image.array.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(MedlensError, match="example_ct_sm"):
        PercentileClipZScore().fit([ct_small_image.with_array(bad)])
    with pytest.raises(ValueError, match="lower < upper"):
        PercentileClipZScore(lower=60, upper=40).fit([ct_small_image])
    with pytest.raises(ValueError, match="masks"):
        PercentileClipZScore().fit([ct_small_image], [ct_seg, ct_seg])


def test_percentile_clip_zscore_on_tensors_equals_images(ct_small_image):
    step = PercentileClipZScore().fit([ct_small_image])  # no masks: every voxel
    batch = ct_small_image.to_tensor()[None, None]
    out = step.transform(batch)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), step.transform(ct_small_image).array, atol=1e-6)


# ----------------------------------------------------------------------------- CT windows
@pytest.mark.parametrize("preset", sorted(CT_WINDOWS))
def test_ct_window_maps_window_edges_to_zero_and_one(preset):
    center, width = CT_WINDOWS[preset]
    hu = np.array(
        [[center - width / 2, center, center + width / 2, center - width, center + width]],
        np.float32,
    )
    out = CTWindow(preset)(Image(hu, modality="CT")).array[0]
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.0, 1.0], atol=1e-6)


def test_ct_window_values_custom_window_and_tensors():
    assert CT_WINDOWS["lung"] == (-600, 1500) and CT_WINDOWS["brain"] == (40, 80)
    assert CT_WINDOWS["abdomen"] == CT_WINDOWS["soft_tissue"] == (40, 400)
    assert CT_WINDOWS["bone"] == (400, 1800)
    assert CTWindow("Soft tissue").window() == (40, 400)
    hu = torch.tensor([[[[-500.0, 300.0, 1050.0]]]])
    out = CTWindow(center=300, width=1500)(hu)
    np.testing.assert_allclose(out.numpy().ravel(), [0.0, 0.5, 1.0], atol=1e-6)
    raw = CTWindow(center=0, width=100, clip=False)(Image(np.array([[-100.0, 100.0]])))
    np.testing.assert_allclose(raw.array, [[-0.5, 1.5]])
    with pytest.raises(ValueError, match="unknown CT window"):
        CTWindow("spleen")(Image(np.zeros((2, 2))))
    with pytest.raises(ValueError, match="not both"):
        CTWindow("lung", center=1, width=2).window()
    with pytest.raises(ValueError, match="needs a preset"):
        CTWindow(center=40).window()


def test_ct_window_on_real_ct(ct_small_image):
    out = CTWindow("soft_tissue")(ct_small_image)  # -160 to 240 HU: air and bone saturate
    assert out.array.min() == 0.0 and out.array.max() == 1.0
    expected = np.clip((ct_small_image.array + 160.0) / 400.0, 0, 1)
    np.testing.assert_allclose(out.array, expected, atol=1e-6)
    lung = CTWindow("lung")(ct_small_image)  # -1350 to 150 HU
    np.testing.assert_allclose(lung.array.min(), (-1100 + 1350) / 1500, atol=1e-6)


# ----------------------------------------------------------------------------- min-max
def test_minmax_range_percentiles_and_constant(ct_small_image):
    out = MinMax()(ct_small_image)
    assert out.array.min() == 0.0 and out.array.max() == pytest.approx(1.0)
    out = MinMax(out_range=(-1, 1), percentiles=(1, 99))(ct_small_image)
    low, high = np.percentile(ct_small_image.array, [1, 99])
    expected = (np.clip(ct_small_image.array, low, high) - low) / (high - low) * 2 - 1
    np.testing.assert_allclose(out.array, expected, atol=1e-5)
    flat = MinMax(out_range=(2, 3))(Image(np.full((3, 4), 5.0)))
    np.testing.assert_array_equal(flat.array, 2.0)
    with pytest.raises(ValueError, match="low < high"):
        MinMax(percentiles=(99, 1))(ct_small_image)


def test_minmax_on_tensors_matches_numpy_percentiles():
    rng = np.random.default_rng(5)
    array = rng.gamma(2.0, 3.0, size=(3, 2, 7, 9, 5)).astype(np.float32)
    out = MinMax(percentiles=(2.5, 97.5))(torch.from_numpy(array))
    for b in range(3):
        for c in range(2):
            values = array[b, c]
            low, high = np.percentile(values, [2.5, 97.5])
            expected = (np.clip(values, low, high) - low) / (high - low)
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-5)
