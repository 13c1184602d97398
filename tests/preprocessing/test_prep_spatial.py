"""Spatial steps keep world positions, extents and label values; checked against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import GeometryError, MedlensError
from medlens.image import Image, Role
from medlens.preprocessing import (
    Box,
    CropForeground,
    PadOrCrop,
    Reorient,
    Resample,
    ResampleLike,
    Resize,
    centered_box,
    crop_to_box,
    foreground_box,
)


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(20.0), np.deg2rad(-9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def numbered(shape=(6, 7, 8), **kwargs) -> Image:
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    n = len(shape) - len(kwargs.get("leading", ()))
    kwargs.setdefault("spacing", (0.7, 1.3, 2.9)[:n])
    kwargs.setdefault("origin", (10.0, -20.0, 30.0)[:n])
    if n == 3:
        kwargs.setdefault("direction", oblique_direction())
    return Image(array, **kwargs)


def world_of_all_voxels(image: Image) -> np.ndarray:
    """World positions ``(z, y, x, n)`` of every voxel centre, in array order."""
    grids = np.meshgrid(*[np.arange(s) for s in image.spatial_shape], indexing="ij")
    index = np.stack(grids[::-1], axis=-1).astype(float)  # array order -> index order
    return image.index_to_world(index)


@pytest.fixture(scope="module")
def ct_seg(real, helpers):
    from medlens.io import load_image

    return load_image(real(*helpers.CT_SMALL_SEG), role="label")


# ----------------------------------------------------------------------------- crop boxes
def test_crop_keeps_every_voxels_world_position():
    image = numbered()
    box = Box((1, 2, 3), (5, 6, 7))
    out = crop_to_box(image, box)
    np.testing.assert_array_equal(out.array, image.array[1:5, 2:6, 3:7])
    np.testing.assert_allclose(out.origin, image.index_to_world([3, 2, 1]))
    assert out.spacing == image.spacing
    np.testing.assert_array_equal(out.direction, image.direction)
    np.testing.assert_allclose(world_of_all_voxels(out), world_of_all_voxels(image)[1:5, 2:6, 3:7])


def test_crop_beyond_the_border_pads_and_still_keeps_world_positions():
    image = numbered()
    box = Box((-2, 1, -1), (8, 5, 9))  # reaches past the image on four faces
    out = crop_to_box(image, box, value=-7)
    assert out.spatial_shape == (10, 4, 10)
    inner = out.array[2:8, :, 1:9]
    np.testing.assert_array_equal(inner, image.array[:, 1:5, :])
    assert np.all(out.array[:2] == -7) and np.all(out.array[8:] == -7)
    np.testing.assert_allclose(
        world_of_all_voxels(out)[2:8, :, 1:9], world_of_all_voxels(image)[:, 1:5, :]
    )
    edge = crop_to_box(image, box, mode="edge")
    np.testing.assert_array_equal(edge.array[0], edge.array[2])
    labels = image.with_array(image.array % 3 + 1, role=Role.LABEL)
    padded = crop_to_box(labels, box, value=-7)
    assert set(np.unique(padded.array).tolist()) == {0, 1, 2, 3}  # labels pad with 0
    with pytest.raises(ValueError, match="mode"):
        crop_to_box(image, box, mode="reflect")


def test_crop_leading_axes_and_2d():
    series = numbered((3, 5, 6, 7), leading=("time",))
    out = crop_to_box(series, Box((1, 1, 1), (4, 4, 4)))
    assert out.array.shape == (3, 3, 3, 3)
    np.testing.assert_array_equal(out.array, series.array[:, 1:4, 1:4, 1:4])
    flat = numbered((9, 11))
    out = crop_to_box(flat, Box((2, 3), (5, 9)))
    np.testing.assert_allclose(out.origin, flat.index_to_world([3, 2]))


def test_box_validation():
    with pytest.raises(ValueError):
        Box((0, 3), (4, 3))
    assert Box((1, 2, 3), (4, 6, 8)).shape == (3, 4, 5)
    assert Box((1, 2, 3), (4, 6, 8)).start_index == (3, 2, 1)
    with pytest.raises(ValueError, match="2D box"):
        crop_to_box(numbered(), Box((0, 0), (2, 2)))


def test_crop_foreground_real_ct_is_tight_and_crops_the_label_map_identically(
    ct_small_image, ct_seg
):
    step = CropForeground(threshold=-500)
    cropped, box = step.crop(ct_small_image)
    array = ct_small_image.array
    inside = np.zeros(array.shape, bool)
    inside[tuple(slice(a, b) for a, b in zip(box.start, box.stop, strict=True))] = True
    assert np.all(array[~inside] <= -500)  # nothing above threshold is cut away
    for axis in range(3):  # tight: every face of the box touches the foreground
        first = np.take(cropped.array, 0, axis=axis)
        last = np.take(cropped.array, -1, axis=axis)
        assert (first > -500).any() and (last > -500).any()
    assert cropped.spatial_shape != ct_small_image.spatial_shape  # the CT has air around it

    image, label = step.transform_pair(ct_small_image, ct_seg)
    np.testing.assert_array_equal(image.array, cropped.array)
    assert label.same_grid(image) and label.role is Role.LABEL
    np.testing.assert_array_equal(label.array, crop_to_box(ct_seg, box).array)
    # a voxel keeps its world position
    voxel = np.add(box.start_index, [3, 4, 5])
    np.testing.assert_allclose(
        image.index_to_world([3, 4, 5]), ct_small_image.index_to_world(voxel)
    )
    assert image.array[5, 4, 3] == ct_small_image.array[tuple(voxel[::-1])]

    _, wide_box = CropForeground(threshold=-500, margin=2).crop(ct_small_image)
    for a, b, s, a0, b0 in zip(
        wide_box.start, wide_box.stop, array.shape, box.start, box.stop, strict=True
    ):
        assert a == max(a0 - 2, 0) and b == min(b0 + 2, s)


def test_crop_foreground_from_a_mask(ct_small_image, ct_seg):
    box = foreground_box(ct_small_image, mask=ct_seg)
    hits = np.argwhere(ct_seg.array > 0)
    assert box.start == tuple(hits.min(0)) and box.stop == tuple(hits.max(0) + 1)
    out = CropForeground()(ct_small_image, mask=ct_seg)
    assert out.spatial_shape == box.shape
    with pytest.raises(GeometryError):
        foreground_box(ct_small_image, mask=crop_to_box(ct_seg, box))


def test_crop_foreground_without_foreground_keeps_the_whole_image():
    image = Image(np.zeros((4, 5, 6), np.float32))
    out, box = CropForeground(threshold=0.0).crop(image)
    assert box == Box((0, 0, 0), (4, 5, 6)) and out.spatial_shape == (4, 5, 6)
    nan = image.with_array(np.full((4, 5, 6), np.nan, np.float32), meta={"path": "bad.nii"})
    with pytest.raises(MedlensError, match=r"bad\.nii"):
        CropForeground()(nan)


def test_foreground_margin_per_index_axis_and_box_round_trip():
    array = np.zeros((10, 10, 10), np.float32)
    array[5, 5, 5] = 1.0
    box = foreground_box(Image(array), margin=(1, 2, 3))  # x, y, z
    assert box == Box((2, 3, 4), (9, 8, 7))  # z, y, x
    assert Box.from_dict(box.to_dict()) == box


def test_crop_foreground_multichannel_uses_any_channel():
    array = np.zeros((2, 6, 6), np.float32)
    array[0, 1, 1] = 1.0
    array[1, 4, 3] = 1.0
    out = CropForeground()(Image(array, leading=("channel",)))
    assert out.array.shape == (2, 4, 3)


# ----------------------------------------------------------------------------- pad or crop
def test_pad_or_crop_is_centred_and_padding_undoes_cropping():
    assert centered_box((10,), (6,)) == Box((2,), (8,))
    assert centered_box((5,), (8,)) == Box((-1,), (7,))
    image = numbered((6, 7, 8))
    small = PadOrCrop((4, 5, 3))(image)
    assert small.spatial_shape == (4, 5, 3)
    back = PadOrCrop((6, 7, 8), value=-1)(small)
    assert back.same_grid(image)
    kept = back.array != -1
    np.testing.assert_array_equal(back.array[kept], image.array[kept])
    assert kept.sum() == 4 * 5 * 3
    mixed = PadOrCrop((None, 9, 4))(image)  # None keeps an axis
    assert mixed.spatial_shape == (6, 9, 4)
    np.testing.assert_allclose(
        world_of_all_voxels(mixed)[:, 1:8, :], world_of_all_voxels(image)[:, :, 2:6]
    )


def test_pad_or_crop_label_map_follows_and_pads_with_zero():
    image = numbered((6, 7, 8))
    labels = image.with_array((image.array % 4 + 1).astype(np.uint8), role=Role.LABEL)
    step = PadOrCrop((8, 5, 10), value=-1000)
    out, lab = step.transform_pair(image, labels)
    assert lab.same_grid(out) and lab.array.dtype == np.uint8
    assert set(np.unique(lab.array).tolist()) == {0, 1, 2, 3, 4}
    assert out.array.min() == -1000
    edge = PadOrCrop((8, 7, 8), mode="edge")(image)
    np.testing.assert_array_equal(edge.array[0], image.array[0])


# ----------------------------------------------------------------------------- resize
def assert_extent_kept(before: Image, after: Image) -> None:
    """The two grids cover the same physical box, corner to corner."""
    lo_before = before.index_to_world(np.full(before.spatial_dims, -0.5))
    hi_before = before.index_to_world(np.array(before.size) - 0.5)
    lo_after = after.index_to_world(np.full(after.spatial_dims, -0.5))
    hi_after = after.index_to_world(np.array(after.size) - 0.5)
    np.testing.assert_allclose(lo_after, lo_before, atol=1e-9)
    np.testing.assert_allclose(hi_after, hi_before, atol=1e-9)


def test_resize_keeps_extent_and_matches_simpleitk(ct_small_image, ct_small_sitk, ct_seg, helpers):
    import SimpleITK as sitk

    step = Resize((20, 64, 80))
    out, lab = step.transform_pair(ct_small_image, ct_seg)
    assert out.spatial_shape == (20, 64, 80) and out.array.dtype == np.float32
    assert_extent_kept(ct_small_image, out)
    np.testing.assert_allclose(
        np.array(out.size) * out.spacing, np.array(ct_small_image.size) * ct_small_image.spacing
    )
    assert lab.same_grid(out) and lab.array.dtype == ct_seg.array.dtype

    def sitk_on(grid, source, interpolator, pixel):
        return sitk.GetArrayFromImage(
            sitk.Resample(
                source,
                list(grid.size),
                sitk.Transform(),
                interpolator,
                list(grid.origin),
                list(grid.spacing),
                grid.direction.ravel().tolist(),
                0.0,
                pixel,
            )
        )

    expected = sitk_on(out, ct_small_sitk, sitk.sitkLinear, sitk.sitkFloat32)
    np.testing.assert_allclose(out.array, expected, atol=0.01)
    seg_sitk = helpers.sitk_read(ct_seg.meta["path"])
    expected = sitk_on(lab, seg_sitk, sitk.sitkNearestNeighbor, seg_sitk.GetPixelID())
    assert np.mean(lab.array != expected) < 1e-3  # only exact half-voxel ties may round apart
    values = set(np.unique(ct_seg.array).tolist())
    assert set(np.unique(lab.array).tolist()) <= values
    finer = Resize((60, 202, 244)).transform_pair(ct_small_image, ct_seg)[1]
    assert set(np.unique(finer.array).tolist()) == values  # upsampling loses no label


def test_resize_keeps_content_at_its_world_position():
    array = np.zeros((9, 9, 9), np.float32)
    array[2, 6, 4] = 100.0
    image = Image(
        array, spacing=(2.0, 1.0, 3.0), origin=(5.0, -3.0, 7.0), direction=oblique_direction()
    )
    out = Resize((27, 27, 27))(image)
    assert_extent_kept(image, out)
    peak = np.unravel_index(np.argmax(out.array), out.array.shape)
    np.testing.assert_allclose(
        out.index_to_world(peak[::-1]), image.index_to_world([4, 6, 2]), atol=1e-9
    )


def test_resize_keep_aspect_scales_uniformly_then_pads(real):
    from medlens.io import load_image

    photo = load_image(real("hc18", "images", "000_HC.png"))  # 800 x 540 ultrasound
    assert photo.spatial_shape == (540, 800)
    plain = Resize((128, 128))(photo)
    assert plain.spatial_shape == (128, 128)
    assert_extent_kept(photo, plain)
    aspect = Resize((128, 128), keep_aspect=True, value=-1)(photo)
    assert aspect.spatial_shape == (128, 128)
    rows = np.flatnonzero((aspect.array != -1).any(axis=1))
    assert rows.size == round(540 * 128 / 800)  # 86 rows of image, the rest padding
    assert aspect.spacing[0] == pytest.approx(800 / 128)
    assert aspect.spacing[1] == pytest.approx(540 / 86)
    # the content is centred: same world position of the image centre
    centre = photo.index_to_world((np.array(photo.size) - 1) / 2)
    np.testing.assert_allclose(aspect.index_to_world([63.5, 21 + 42.5]), centre, atol=1e-9)
    mask = photo.with_array((photo.array > 100).astype(np.uint8), role=Role.LABEL)
    img, lab = Resize((128, 128), keep_aspect=True).transform_pair(photo, mask)
    assert lab.same_grid(img) and set(np.unique(lab.array).tolist()) == {0, 1}


def test_resize_rejects_bad_shapes():
    with pytest.raises(ValueError, match="positive"):
        Resize((4, 4))(numbered())
    with pytest.raises(ValueError, match="positive"):
        Resize((0, 4, 4))(numbered())


# ----------------------------------------------------------------------------- wrappers
def test_resample_and_resample_like_wrap_image_resample(ct_small_image, ct_seg):
    out, lab = Resample((2.0, 2.5, 4.0)).transform_pair(ct_small_image, ct_seg)
    expected = ct_small_image.resample((2.0, 2.5, 4.0))
    np.testing.assert_array_equal(out.array, expected.array)
    assert out.same_grid(expected) and lab.same_grid(out)
    np.testing.assert_array_equal(lab.array, ct_seg.resample((2.0, 2.5, 4.0)).array)

    reference = Image(
        np.zeros((12, 40, 50)),
        spacing=(4.0, 4.0, 5.0),
        origin=np.asarray(ct_small_image.origin) + 7.0,
        direction=ct_small_image.direction @ oblique_direction(),
    )
    step = ResampleLike.from_image(reference)
    out, lab = step.transform_pair(ct_small_image, ct_seg)
    assert out.same_grid(reference) and lab.same_grid(reference)
    np.testing.assert_array_equal(out.array, ct_small_image.resample(like=reference).array)
    assert set(np.unique(lab.array).tolist()) <= set(np.unique(ct_seg.array).tolist())


def test_reorient_step_moves_the_label_map_too(ct_small_image, ct_seg):
    image, label = Reorient("LPI").transform_pair(ct_small_image, ct_seg)
    assert image.orientation == "LPI" and label.orientation == "LPI"
    assert label.same_grid(image)
    np.testing.assert_array_equal(image.array, ct_small_image.reorient("LPI").array)
    np.testing.assert_array_equal(label.array, ct_seg.reorient("LPI").array)
