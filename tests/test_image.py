"""The image model: validation, coordinates, grids and tensor conversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import GeometryError
from medlens.image import Image, Role, orientation_from_direction


def rotation(angle_deg: float, axis: int = 2) -> np.ndarray:
    """A proper rotation about one world axis."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    out = np.eye(3)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    return out


# ----------------------------------------------------------------------------- construction
def test_defaults_are_unit_geometry():
    image = Image(np.zeros((4, 5, 6), np.int16))
    assert image.spacing == (1.0, 1.0, 1.0)
    assert image.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(image.direction, np.eye(3))
    assert image.role is Role.INTENSITY
    assert image.spatial_dims == 3
    assert image.spatial_shape == (4, 5, 6)
    assert image.size == (6, 5, 4)
    assert image.orientation == "LPS"
    assert image.num_channels == 1 and image.num_time_points == 1


def test_geometry_is_normalised_to_floats_and_arrays():
    image = Image([[1, 2], [3, 4]], spacing=[1, 2], origin=np.array([3, 4]), role="label")
    assert isinstance(image.array, np.ndarray)
    assert image.spacing == (1.0, 2.0) and all(isinstance(v, float) for v in image.spacing)
    assert image.origin == (3.0, 4.0)
    assert image.role is Role.LABEL and image.is_label
    # a flat ITK-style direction tuple is accepted
    flat = Image(np.zeros((2, 2, 2)), direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    np.testing.assert_array_equal(flat.direction, [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_leading_axes():
    fmri = Image(np.zeros((7, 3, 4, 5)), leading=("time",))
    assert fmri.spatial_dims == 3 and fmri.spatial_shape == (3, 4, 5)
    assert fmri.num_time_points == 7 and fmri.num_channels == 1
    rgb = Image(np.zeros((3, 4, 5), np.uint8), leading=["channel"])
    assert rgb.leading == ("channel",) and rgb.spatial_dims == 2 and rgb.num_channels == 3
    assert rgb.size == (5, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"array": np.zeros(5)}, "2 or 3 spatial axes"),
        ({"array": np.zeros((2, 2, 2, 2))}, "2 or 3 spatial axes"),
        ({"array": np.zeros((2, 3)), "leading": ("channel",)}, "2 or 3 spatial axes"),
        ({"array": np.zeros((2, 3, 4)), "leading": ("colour",)}, "leading axis names"),
        ({"array": np.zeros((3, 4)), "spacing": (1.0, 1.0, 1.0)}, "spacing and origin need 2"),
        ({"array": np.zeros((3, 4)), "origin": (0.0,)}, "spacing and origin need 2"),
        ({"array": np.zeros((2, 3, 4)), "spacing": (1.0, 0.0, 1.0)}, "positive and finite"),
        ({"array": np.zeros((2, 3, 4)), "spacing": (1.0, -2.0, 1.0)}, "positive and finite"),
        ({"array": np.zeros((2, 3, 4)), "spacing": (1.0, np.nan, 1.0)}, "positive and finite"),
        ({"array": np.zeros((2, 3, 4)), "origin": (0.0, np.inf, 0.0)}, "finite"),
        (
            {"array": np.zeros((2, 3, 4)), "direction": [[1, 0, 0], [1, 0, 0], [0, 0, 1]]},
            "singular",
        ),
        ({"array": np.zeros((2, 3, 4)), "direction": np.full((3, 3), np.nan)}, "finite"),
        ({"array": np.zeros((2, 3, 4)), "role": "mask"}, "mask"),
    ],
)
def test_constructor_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Image(**kwargs)


def test_constructor_rejects_wrong_direction_size():
    with pytest.raises(ValueError):
        Image(np.zeros((2, 3, 4)), direction=np.eye(2))


def test_from_affine_and_affine_agree():
    direction = rotation(30) @ rotation(-20, axis=0)
    image = Image(
        np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.5), origin=(10, -5, 7), direction=direction
    )
    back = Image.from_affine(np.zeros((3, 4, 5)), image.affine)
    np.testing.assert_allclose(back.spacing, image.spacing)
    np.testing.assert_allclose(back.origin, image.origin)
    np.testing.assert_allclose(back.direction, direction, atol=1e-12)
    # the RAS affine is the LPS one with x and y negated, and reads back with ras=True
    ras = image.ras_affine
    np.testing.assert_allclose(ras[:2], -image.affine[:2])
    np.testing.assert_allclose(ras[2:], image.affine[2:])
    from_ras = Image.from_affine(np.zeros((3, 4, 5)), ras, ras=True)
    np.testing.assert_allclose(from_ras.affine, image.affine, atol=1e-12)
    with pytest.raises(ValueError, match="zero-length"):
        Image.from_affine(np.zeros((3, 4, 5)), np.diag([1.0, 0.0, 1.0, 1.0]))


def test_ras_affine_of_2d_image_is_lifted_to_3d():
    image = Image(np.zeros((4, 5)), spacing=(0.5, 2.0), origin=(3.0, -4.0))
    expected = np.array(
        [[-0.5, 0, 0, -3.0], [0, -2.0, 0, 4.0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    np.testing.assert_allclose(image.ras_affine, expected)


def test_replace_and_with_array_share_geometry_not_meta():
    image = Image(np.zeros((3, 4)), spacing=(2, 3), meta={"path": "a.png"})
    other = image.with_array(np.ones((3, 4), np.uint8), role="label")
    assert other.spacing == image.spacing and other.role is Role.LABEL
    other.meta["path"] = "b.png"
    assert image.meta["path"] == "a.png"
    assert "shape=(3, 4)" in repr(image) and "orientation=LP" in repr(image)


# ----------------------------------------------------------------------------- orientation codes
@pytest.mark.parametrize(
    ("direction", "code"),
    [
        (np.eye(3), "LPS"),
        (np.diag([-1.0, -1.0, 1.0]), "RAS"),
        (np.diag([1.0, -1.0, 1.0]), "LAS"),
        ([[0, 0, -1], [1, 0, 0], [0, -1, 0]], "PIR"),  # the sagittal T1 series
        (rotation(10), "LPS"),  # oblique: dominant components
        (rotation(170), "RAS"),
        (np.eye(2), "LP"),
        ([[0, 1], [-1, 0]], "AL"),
    ],
)
def test_orientation_from_direction(direction, code):
    assert orientation_from_direction(np.asarray(direction, dtype=float)) == code


def test_orientation_of_45_degree_oblique_uses_each_world_axis_once():
    groups = {"L": "x", "R": "x", "P": "y", "A": "y", "S": "z", "I": "z"}
    for direction in (rotation(45), rotation(45, axis=0) @ rotation(45)):
        code = orientation_from_direction(direction)
        assert len(code) == 3
        assert sorted(groups[c] for c in code) == ["x", "y", "z"]


# ----------------------------------------------------------------------------- coordinates
def test_index_to_world_by_hand():
    image = Image(
        np.zeros((3, 4, 5)),
        spacing=(2.0, 3.0, 4.0),
        origin=(10.0, 20.0, 30.0),
        direction=[[0, 0, 1], [1, 0, 0], [0, 1, 0]],
    )
    # columns are index axes: i runs along world y (2 mm), j along z (3 mm), k along x (4 mm)
    np.testing.assert_allclose(image.index_to_world([1, 1, 1]), [14.0, 22.0, 33.0])
    np.testing.assert_allclose(image.index_to_world([0, 0, 2]), [18.0, 20.0, 30.0])
    np.testing.assert_allclose(image.index_to_world([0, 0, 0]), image.origin)
    np.testing.assert_allclose(image.world_to_index([14.0, 22.0, 33.0]), [1, 1, 1])


def test_world_index_round_trip_oblique():
    rng = np.random.default_rng(1)
    image = Image(
        np.zeros((10, 11, 12)),
        spacing=(0.7, 1.3, 2.9),
        origin=(-100.0, 37.5, 12.25),
        direction=rotation(25) @ rotation(40, axis=1),
    )
    index = rng.uniform(-5, 15, size=(50, 3))
    world = image.index_to_world(index)
    assert world.shape == (50, 3)
    np.testing.assert_allclose(image.world_to_index(world), index, atol=1e-9)
    # one voxel step moves by exactly its spacing
    step = image.index_to_world([0, 0, 1]) - image.index_to_world([0, 0, 0])
    assert np.linalg.norm(step) == pytest.approx(2.9)


def test_index_to_world_agrees_with_simpleitk_on_real_ct(ct_image, ct_sitk):
    reference = ct_sitk
    rng = np.random.default_rng(2)
    size = np.array(ct_image.size)
    for index in [(0, 0, 0), tuple(size - 1), *rng.integers(0, size, size=(8, 3)).tolist()]:
        index = tuple(int(v) for v in index)
        expected = reference.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(ct_image.index_to_world(index), expected, atol=1e-4)
        np.testing.assert_allclose(ct_image.world_to_index(expected), index, atol=1e-6)
    continuous = (10.25, 300.5, 7.75)
    np.testing.assert_allclose(
        ct_image.index_to_world(continuous),
        reference.TransformContinuousIndexToPhysicalPoint(continuous),
        atol=1e-4,
    )


def test_index_to_world_agrees_with_simpleitk_on_sagittal_t1(t1_image, t1_sitk):
    reference = t1_sitk
    for index in [(0, 0, 0), (255, 0, 0), (0, 255, 31), (128, 64, 16)]:
        np.testing.assert_allclose(
            t1_image.index_to_world(index),
            reference.TransformIndexToPhysicalPoint(index),
            atol=1e-3,
        )


# ----------------------------------------------------------------------------- grids
def test_same_grid_and_check_same_grid():
    base = Image(np.zeros((4, 5, 6)), spacing=(1, 1, 2), origin=(1, 2, 3), meta={"path": "ct.nii"})
    assert base.same_grid(base.with_array(np.ones((4, 5, 6), np.uint8)))
    assert base.same_grid(base.replace(origin=(1.0, 2.0, 3.0 + 1e-5)))  # within tolerance
    base.check_same_grid(base.replace())

    cases = {
        "shape": base.with_array(np.zeros((4, 5, 7))),
        "spacing": base.replace(spacing=(1, 1, 2.5)),
        "origin": base.replace(origin=(1, 2, 4)),
        "orientation": base.replace(direction=np.diag([-1.0, 1.0, 1.0])),
    }
    for word, other in cases.items():
        assert not base.same_grid(other)
        with pytest.raises(GeometryError, match=word) as info:
            base.check_same_grid(other, name="labels/case_7.nii.gz")
        assert "labels/case_7.nii.gz" in str(info.value)
        assert str(info.value.path) == "labels/case_7.nii.gz"
        assert "\n" not in str(info.value)


def test_check_same_grid_names_the_other_images_file():
    image = Image(np.zeros((4, 5)))
    mask = Image(np.zeros((4, 6)), meta={"path": "/data/masks/m001.png"})
    with pytest.raises(GeometryError, match=r"m001\.png.*shape"):
        image.check_same_grid(mask)


# ----------------------------------------------------------------------------- tensors
def test_to_tensor_shares_memory_with_contiguous_writable_array():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    image = Image(array)
    tensor = image.to_tensor()
    assert tensor.shape == (2, 3, 4) and tensor.dtype == torch.float32
    tensor[1, 2, 3] = -7.0
    assert array[1, 2, 3] == -7.0
    image.array[0, 0, 0] = 42.0
    assert tensor[0, 0, 0].item() == 42.0


def test_to_tensor_add_channel():
    image = Image(np.zeros((2, 3, 4), np.int16))
    tensor = image.to_tensor(add_channel=True)
    assert tensor.shape == (1, 2, 3, 4) and tensor.dtype == torch.int16
    tensor[0, 1, 1, 1] = 5  # still a view
    assert image.array[1, 1, 1] == 5
    rgb = Image(np.zeros((3, 4, 5), np.uint8), leading=("channel",))
    assert rgb.to_tensor(add_channel=True).shape == (3, 4, 5)  # already has channels
    fmri = Image(np.zeros((6, 2, 3, 4)), leading=("time",))
    assert fmri.to_tensor(add_channel=True).shape == (1, 6, 2, 3, 4)


def test_to_tensor_copies_read_only_and_strided_arrays():
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    array.flags.writeable = False
    tensor = Image(array).to_tensor()
    tensor[0, 0] = 100
    assert array[0, 0] == 0
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    view = base[:, ::2]
    tensor = Image(view).to_tensor()
    np.testing.assert_array_equal(tensor.numpy(), view)
    flipped = Image(np.flip(base, axis=0)).to_tensor()
    np.testing.assert_array_equal(flipped.numpy(), base[::-1])


def test_to_tensor_widens_uint16_losslessly():
    array = np.array([[0, 65535], [1, 40000]], dtype=np.uint16)
    tensor = Image(array).to_tensor()
    assert tensor.dtype == torch.int32
    np.testing.assert_array_equal(tensor.numpy(), array.astype(np.int32))


def test_to_tensor_of_big_endian_array():
    array = np.arange(6, dtype=">i2").reshape(2, 3)  # as np.load gives for a big-endian .npy
    tensor = Image(array).to_tensor()
    assert tensor.dtype == torch.int16
    np.testing.assert_array_equal(tensor.numpy(), array)
