"""Reorientation and resampling keep world positions; checked by hand and against SimpleITK."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medlens.geometry import reorient, resample
from medlens.image import Image, Role

ALL_CODES = [
    "".join(letters)
    for axes in itertools.permutations(["LR", "PA", "SI"])
    for letters in itertools.product(*axes)
]  # the 48 axis-aligned orientations


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(12.0), np.deg2rad(-7.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def numbered_image(shape=(3, 4, 5), **kwargs) -> Image:
    """Every voxel holds a distinct value, so a voxel can be found again after reorienting."""
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    kwargs.setdefault("spacing", (0.5, 1.5, 2.5)[: array.ndim - len(kwargs.get("leading", ()))])
    return Image(array, **kwargs)


def assert_world_positions_kept(before: Image, after: Image) -> None:
    """Each voxel of ``after`` sits at the world position the same value had in ``before``."""
    lead = len(before.leading)
    spatial = after.array[(0,) * lead] if lead else after.array
    index = np.stack(np.meshgrid(*[np.arange(s) for s in after.size], indexing="ij"), -1)
    index = index.reshape(-1, after.spatial_dims)
    old = np.rint(before.world_to_index(after.index_to_world(index))).astype(int)
    np.testing.assert_allclose(
        before.index_to_world(old), after.index_to_world(index), atol=1e-9
    )  # every new voxel centre is an old voxel centre
    old_values = (before.array[(0,) * lead] if lead else before.array)[tuple(old[:, ::-1].T)]
    new_values = spatial[tuple(index[:, ::-1].T)]
    np.testing.assert_array_equal(new_values, old_values)


# ----------------------------------------------------------------------------- reorient
@pytest.mark.parametrize("target", ALL_CODES)
def test_reorient_to_every_code_keeps_every_voxels_world_position(target):
    image = numbered_image(origin=(10.0, -20.0, 5.0), direction=np.diag([-1.0, 1.0, 1.0]))
    out = image.reorient(target)
    assert out.orientation == target
    assert sorted(out.spatial_shape) == sorted(image.spatial_shape)
    assert_world_positions_kept(image, out)
    # and back again gives the original exactly
    back = out.reorient(image.orientation)
    assert back.same_grid(image, atol=1e-9)
    np.testing.assert_array_equal(back.array, image.array)


def test_reorient_is_a_view_and_a_no_op_returns_the_image():
    image = numbered_image()
    assert image.reorient("LPS") is image
    out = image.reorient("rai")  # lower case accepted
    assert out.orientation == "RAI"
    assert np.shares_memory(out.array, image.array)
    assert out.spacing == image.spacing  # no axis permutation here
    np.testing.assert_allclose(out.origin, image.index_to_world([4, 3, 2]))


def test_reorient_permutes_spacing_with_the_axes():
    image = numbered_image(spacing=(0.5, 1.5, 2.5))
    out = image.reorient("SLP")
    assert out.spacing == (2.5, 0.5, 1.5)
    assert out.spatial_shape == (4, 5, 3)  # (z, y, x) of the new index axes (P, L, S)


def test_reorient_oblique_image_keeps_world_positions():
    image = numbered_image(origin=(1.0, 2.0, 3.0), direction=oblique_direction())
    assert image.orientation == "LPS"
    for target in ("RAS", "PIR", "ILA"):
        out = image.reorient(target)
        assert out.orientation == target
        assert_world_positions_kept(image, out)


def test_reorient_leading_axes_and_2d():
    fmri = numbered_image((2, 3, 4, 5), leading=("time",))
    out = fmri.reorient("ASR")
    assert out.leading == ("time",) and out.array.shape[0] == 2
    assert_world_positions_kept(fmri, out)
    # every time point moves the same way
    np.testing.assert_array_equal(
        out.array[1], fmri.with_array(fmri.array[1], leading=()).reorient("ASR").array
    )
    flat = numbered_image((4, 6))
    out = flat.reorient("AR")
    assert out.orientation == "AR" and out.spatial_shape == (6, 4)
    assert_world_positions_kept(flat, out)


@pytest.mark.parametrize("target", ["RA", "RAX", "RRS", "LPSS", "APP"])
def test_reorient_rejects_impossible_codes(target):
    with pytest.raises(ValueError, match="cannot reorient"):
        numbered_image().reorient(target)


@pytest.mark.parametrize("target", ["LPS", "RAS", "PIR", "ASL", "IRP"])
def test_reorient_matches_simpleitk_dicomorient(target, ct_small_image, ct_small_sitk, helpers):
    import SimpleITK as sitk

    ours = ct_small_image.reorient(target)
    helpers.assert_matches_sitk(ours, sitk.DICOMOrient(ct_small_sitk, target))


def test_reorient_real_sagittal_t1_keeps_world_positions(t1_image):
    assert t1_image.orientation == "PIR"
    out = t1_image.reorient("RAS")
    assert out.orientation == "RAS"
    assert out.spatial_shape == (256, 256, 32)
    rng = np.random.default_rng(3)
    for new_index in rng.integers(0, out.size, size=(20, 3)):
        world = out.index_to_world(new_index)
        old_index = np.rint(t1_image.world_to_index(world)).astype(int)
        np.testing.assert_allclose(t1_image.index_to_world(old_index), world, atol=1e-6)
        assert out.array[tuple(new_index[::-1])] == t1_image.array[tuple(old_index[::-1])]


# ----------------------------------------------------------------------------- resample
def sitk_resample(reference_image, *, size, spacing, origin, direction, label: bool):
    import SimpleITK as sitk

    return sitk.Resample(
        reference_image,
        [int(v) for v in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        [float(v) for v in origin],
        [float(v) for v in spacing],
        [float(v) for v in np.asarray(direction).ravel()],
        0.0,
        reference_image.GetPixelID() if label else sitk.sitkFloat32,
    )


def inside_mask(source: Image, target: Image, margin: float = 1e-3) -> np.ndarray:
    """Output voxels whose centres map inside the source's voxel-centre box grown by ``-margin``."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in target.size], indexing="ij"), -1)
    mapped = source.world_to_index(target.index_to_world(index.reshape(-1, 3)))
    ok = np.all((mapped >= margin) & (mapped <= np.array(source.size) - 1 - margin), axis=1)
    return ok.reshape(index.shape[:-1]).transpose(2, 1, 0)  # index order -> (z, y, x)


def test_resample_to_spacing_matches_simpleitk_linear(ct_small_image, ct_small_sitk):
    out = ct_small_image.resample((2.0, 2.5, 4.0))
    assert out.array.dtype == np.float32
    assert out.spacing == (2.0, 2.5, 4.0)
    assert out.origin == ct_small_image.origin
    np.testing.assert_array_equal(out.direction, ct_small_image.direction)
    assert out.size == (183, 121, 22)  # extent kept: 122 * 3 / 2, 101 * 3 / 2.5, 30 * 3 / 4
    expected = sitk_resample(
        ct_small_sitk,
        size=out.size,
        spacing=out.spacing,
        origin=out.origin,
        direction=out.direction,
        label=False,
    )
    import SimpleITK as sitk

    reference = sitk.GetArrayFromImage(expected)
    np.testing.assert_allclose(out.array, reference, atol=0.01)  # borders included


def test_resample_onto_an_oblique_grid_matches_simpleitk(ct_small_image, ct_small_sitk):
    import SimpleITK as sitk

    centre = ct_small_image.index_to_world(np.array(ct_small_image.size) / 2.0)
    direction = ct_small_image.direction @ oblique_direction()
    spacing = (2.2, 3.1, 3.7)
    size = np.array([100, 80, 24])
    origin = centre - (direction * spacing) @ (size / 2.0)
    grid = Image(
        np.zeros(size[::-1], np.uint8), spacing=spacing, origin=origin, direction=direction
    )
    out = ct_small_image.resample(like=grid)
    assert out.same_grid(grid)
    expected = sitk.GetArrayFromImage(
        sitk_resample(
            ct_small_sitk, size=size, spacing=spacing, origin=origin, direction=direction,
            label=False,
        )
    )  # fmt: skip
    np.testing.assert_allclose(out.array, expected, atol=0.01)
    outside = ~inside_mask(ct_small_image, out, margin=-0.5)
    assert 0.05 < outside.mean() < 0.5  # the oblique grid reaches past the CT's field of view
    assert np.all(out.array[outside] == 0.0)  # filled there


def test_resample_label_map_nearest_matches_simpleitk_and_keeps_labels(real, helpers):
    import SimpleITK as sitk

    from medlens.io import load_image

    path = real(*helpers.CT_SMALL_SEG)
    labels = load_image(path, role="label")
    reference = helpers.sitk_read(path)
    values = set(np.unique(labels.array).tolist())
    assert len(values) > 30

    # an oblique target grid at 2 mm: nearest neighbour never blends label values
    direction = labels.direction @ oblique_direction()
    origin = np.asarray(labels.origin) + 0.37
    size = (170, 140, 40)
    grid = Image(np.zeros(size[::-1]), spacing=(2.0, 2.0, 2.0), origin=origin, direction=direction)
    out = labels.resample(like=grid)
    assert out.role is Role.LABEL and out.array.dtype == labels.array.dtype
    assert set(np.unique(out.array).tolist()) <= values
    expected = sitk.GetArrayFromImage(
        sitk_resample(
            reference, size=size, spacing=grid.spacing, origin=origin, direction=direction,
            label=True,
        )
    )  # fmt: skip
    # no voxel maps to an exact half-voxel tie on this oblique grid, so rounding agrees everywhere
    assert np.mean(out.array != expected) < 1e-4

    # upsampling keeps every label; downsampling adds none
    finer = labels.resample(1.5)
    assert set(np.unique(finer.array).tolist()) == values
    coarser = labels.resample(7.0)
    assert set(np.unique(coarser.array).tolist()) <= values


def test_resample_intensity_order_zero_and_label_order_one():
    image = Image(np.array([[0, 10], [20, 30]], dtype=np.int16), spacing=(1.0, 1.0))
    linear = image.resample(0.5)
    assert linear.array.shape == (4, 4)
    assert linear.array[0, 1] == pytest.approx(5.0)  # halfway between 0 and 10
    nearest = image.resample(0.5, order=0)
    assert set(np.unique(nearest.array).tolist()) <= {0, 10, 20, 30}
    label = image.replace(role="label")
    assert set(np.unique(label.resample(0.5).array).tolist()) <= {0, 10, 20, 30}


def test_resample_identity_grid_is_exact_and_keeps_geometry():
    # An oblique grid: rounding puts border voxels a hair outside the input's voxel-centre box.
    # They used to come back as ``fill``; the field of view reaches half a voxel further.
    rng = np.random.default_rng(4)
    image = Image(
        rng.normal(size=(5, 6, 7)).astype(np.float32),
        spacing=(0.9, 1.1, 2.0),
        origin=(3.0, 4.0, -5.0),
        direction=oblique_direction(),
    )
    out = image.resample(like=image)
    assert out.same_grid(image)
    np.testing.assert_allclose(out.array, image.array, atol=1e-5)
    labels = image.with_array(rng.integers(1, 5, size=(5, 6, 7)).astype(np.uint8), role="label")
    np.testing.assert_array_equal(labels.resample(like=labels).array, labels.array)


def test_resample_field_of_view_reaches_half_a_voxel_past_the_border():
    image = Image(np.array([[10.0, 20.0, 30.0, 40.0]], dtype=np.float32), spacing=(1.0, 1.0))
    shifted = Image(np.zeros((1, 6)), spacing=(1.0, 1.0), origin=(-0.4, 0.0))
    out = image.resample(like=shifted, fill=-1.0)
    # x = -0.4 takes the edge value (as ITK does); 3.6 and 4.6 are outside: filled
    np.testing.assert_allclose(out.array[0], [10.0, 16.0, 26.0, 36.0, -1.0, -1.0])
    out = image.resample(like=shifted.replace(origin=(-0.6, 0.0)), fill=-1.0)
    np.testing.assert_allclose(out.array[0], [-1.0, 14.0, 24.0, 34.0, 40.0, -1.0])
    labels = image.with_array(np.array([[1, 2, 3, 4]], np.uint8), role="label")
    out = labels.resample(like=shifted, fill=9)
    np.testing.assert_array_equal(out.array[0], [1, 2, 3, 4, 9, 9])


def test_resample_time_series_volume_by_volume():
    rng = np.random.default_rng(5)
    fmri = Image(rng.normal(size=(3, 4, 6, 6)).astype(np.float32), leading=("time",))
    out = fmri.resample((2.0, 2.0, 2.0))
    assert out.leading == ("time",) and out.array.shape == (3, 2, 3, 3)
    for t in range(3):
        single = fmri.with_array(fmri.array[t], leading=()).resample((2.0, 2.0, 2.0))
        np.testing.assert_array_equal(out.array[t], single.array)


def test_resample_preserves_world_position_of_content():
    """A bright voxel stays at the same world position when resampled onto a shifted grid."""
    array = np.zeros((9, 9, 9), np.float32)
    array[4, 4, 4] = 100.0
    image = Image(array, spacing=(2.0, 2.0, 2.0), origin=(-8.0, -8.0, -8.0))
    assert np.allclose(image.index_to_world([4, 4, 4]), 0.0)
    target = Image(
        np.zeros((17, 17, 17)), spacing=(1.0, 1.0, 1.0), origin=(8.0, -8.0, 8.0),
        direction=np.diag([-1.0, 1.0, -1.0]),
    )  # fmt: skip
    out = image.resample(like=target)
    peak = np.unravel_index(np.argmax(out.array), out.array.shape)
    np.testing.assert_allclose(out.index_to_world(peak[::-1]), [0.0, 0.0, 0.0], atol=1e-9)
    assert out.array[peak] == pytest.approx(100.0)


def test_resample_argument_errors():
    image = Image(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="exactly one"):
        image.resample()
    with pytest.raises(ValueError, match="exactly one"):
        image.resample(2.0, like=image)
    with pytest.raises(ValueError, match="positive"):
        image.resample((1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="2D grid"):
        image.resample(like=Image(np.zeros((4, 5))))
    explicit = resample(image, spacing=2.0, shape=(3, 3, 3))
    assert explicit.spatial_shape == (3, 3, 3)


# ----------------------------------------------------------------------------- real CT + labels
def test_ct_series_and_its_nifti_label_map_share_a_grid(ct_image, real, helpers):
    from medlens.io import load_image

    labels = load_image(real(*helpers.CT_SERIES_SEG), role="label")
    assert ct_image.orientation == "LPS" and labels.orientation == "LAS"
    assert not ct_image.same_grid(labels)  # same voxels, but y runs the other way

    aligned = labels.reorient(ct_image.orientation)
    assert ct_image.same_grid(aligned)
    ct_image.check_same_grid(aligned)
    resampled = labels.resample(like=ct_image)
    assert ct_image.same_grid(resampled)
    np.testing.assert_array_equal(resampled.array, aligned.array)
    np.testing.assert_array_equal(reorient(labels, "LPS").array, aligned.array)

    # voxel (i, j, k) of the LAS label map is voxel (i, 511 - j, k) of the LPS CT
    for index in [(0, 0, 0), (100, 200, 5), (511, 511, 19), (256, 17, 10)]:
        world = labels.index_to_world(index)
        ct_index = ct_image.world_to_index(world)
        np.testing.assert_allclose(ct_index, [index[0], 511 - index[1], index[2]], atol=1e-6)
        np.testing.assert_allclose(labels.world_to_index(world), index, atol=1e-9)
        i, j, k = index
        assert aligned.array[k, 511 - j, i] == labels.array[k, j, i]


def test_ct_label_map_overlaps_plausible_hounsfield_units(ct_image, real, helpers):
    from medlens.io import load_image

    labels = load_image(real(*helpers.CT_SERIES_SEG), role="label").resample(like=ct_image)
    hu = ct_image.array
    liver, spleen = labels.array == 5, labels.array == 1  # labels_total.csv: 5 liver, 1 spleen
    assert liver.sum() > 10_000 and spleen.sum() > 10_000
    assert 40 < hu[liver].mean() < 200
    assert 40 < hu[spleen].mean() < 200
    assert np.mean(hu[labels.array > 0] > -200) > 0.95  # organs are inside the body, not in air
    assert np.median(hu[labels.array == 0]) < -900  # most background is air
    # the raw LAS array laid over the LPS CT without reorienting misses the liver
    raw = load_image(real(*helpers.CT_SERIES_SEG), role="label").array
    assert not 40 < hu[raw == 5].mean() < 200
