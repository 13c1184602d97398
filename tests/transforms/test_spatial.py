"""Spatial transforms: identities, exact moves, boxes and points, SciPy oracles, the kernels.

Conventions under test: tensors ``(B, C, [D,] H, W)``; boxes and points in continuous index
coordinates, index order ``(x, y[, z])``, voxel centres at integers; pull-back matrices map an
output voxel's index to the input's.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from blob_images import gaussian_blobs
from scipy import ndimage

from medlens.transforms import (
    Affine,
    Batch,
    Compose,
    RandomAffine,
    RandomCrop,
    RandomElastic,
    RandomFlip,
    RandomRot90,
    _warp,
    boxes_from_mask,
)

SHAPES = {2: (32, 32), 3: (24, 24, 24)}


# ----------------------------------------------------------------------------- helpers
def gaussians(shape, batch=2, sigma=3.5, seed=0) -> torch.Tensor:
    return gaussian_blobs(shape, batch, sigma, seed, count=4, spread=(0.35, 0.65))


def scene(ndim: int, batch: int = 2, shape=None, label_dtype=torch.int64) -> Batch:
    """A box-shaped object (label 1), single-voxel markers at its corners and centre (label
    ``k + 1`` for point ``k``), its box from the mask and the marked points; sample ``b`` is
    shifted by ``b`` voxels so that per-sample handling shows."""
    shape = shape or SHAPES[ndim]
    label = torch.zeros(batch, 1, *shape, dtype=label_dtype)
    markers = torch.zeros(batch, 1, *shape, dtype=label_dtype)
    boxes, points = [], []
    for b in range(batch):  # tensor order, inclusive; off-centre and not a cube
        low = [int(f * s) + b % 3 for f, s in zip((0.25, 0.3, 0.35)[-ndim:], shape, strict=True)]
        high = [int(f * s) + b % 3 for f, s in zip((0.55, 0.65, 0.6)[-ndim:], shape, strict=True)]
        label[b, 0][tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))] = 1
        marked = [*itertools.product(*zip(low, high, strict=True))]
        marked.append(tuple((lo + hi) // 2 for lo, hi in zip(low, high, strict=True)))
        for k, voxel in enumerate(marked):
            markers[b, 0][voxel] = k + 1
        points.append(torch.tensor([v[::-1] for v in marked], dtype=torch.float32))
        boxes.append(boxes_from_mask(label[b, 0]))
    image = gaussians(shape, batch)
    return Batch(image=image, label=label, markers=markers, boxes=boxes, points=points)


def marker_positions(markers: torch.Tensor, count: int) -> torch.Tensor:
    """Centroid (index order) of each marker value ``1..count`` in a ``([D,] H, W)`` map."""
    out = torch.full((count, markers.ndim), float("nan"), dtype=torch.float64)
    for k in range(count):
        found = torch.nonzero(markers == k + 1)
        if len(found):
            out[k] = found.double().mean(dim=0).flip(0)
    return out


def forward_matrix(step, batch: Batch) -> torch.Tensor:
    """Forward (input index -> output index) matrices of a recorded step."""
    pull = step.transform.matrix(step.in_shape, step.params, batch.spacing_tensor())
    return torch.linalg.inv(pull)


def pull_matrix(step, batch: Batch) -> torch.Tensor:
    return step.transform.matrix(step.in_shape, step.params, batch.spacing_tensor())


def scipy_affine(array: np.ndarray, pull: np.ndarray, out_shape, order: int) -> np.ndarray:
    """SciPy's resampling with our pull-back matrix (index order) turned to array order."""
    n = len(out_shape)
    return ndimage.affine_transform(
        array,
        pull[:n, :n][::-1, ::-1],
        offset=pull[:n, n][::-1],
        output_shape=tuple(out_shape),
        order=order,
        mode="grid-constant",
        cval=0.0,
    )


def shifted(x: torch.Tensor, shift) -> torch.Tensor:
    """``x`` with its content moved by whole voxels ``shift`` (index order), zeros let in."""
    out = torch.zeros_like(x)
    n = len(shift)
    source, target = [slice(None)] * 2, [slice(None)] * 2
    for k, size in enumerate(x.shape[2:]):
        s = int(shift[n - 1 - k])
        source.append(slice(max(-s, 0), max(min(size - s, size), 0)))
        target.append(slice(max(s, 0), max(min(size + s, size), 0)))
    out[tuple(target)] = x[tuple(source)]
    return out


def assert_boxes_close(actual, expected, atol=1e-5):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.double(), e.double(), atol=atol, rtol=0)


# ----------------------------------------------------------------------------- identities
def _identities(ndim: int):
    shape = SHAPES[ndim]
    return {
        "affine-default": RandomAffine(),
        "affine-0-0": RandomAffine(0, 0),
        "affine-p0": RandomAffine(rotate=30, scale=0.2, translate=3, p=0.0),
        "flip-p0": RandomFlip(axes=tuple(range(ndim)), p=0.0),
        "rot90-p0": RandomRot90(p=0.0),
        "crop-full": RandomCrop(shape, foreground=0.5),
        "elastic-p0": RandomElastic(magnitude=3.0, control_points=4, p=0.0),
        "elastic-0": RandomElastic(magnitude=0.0, control_points=4),
    }


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    "name",
    [
        "affine-default",
        "affine-0-0",
        "affine-p0",
        "flip-p0",
        "rot90-p0",
        "crop-full",
        "elastic-p0",
        "elastic-0",
    ],
)
def test_identity_parameters_give_the_input_back(ndim, name):
    batch = scene(ndim)
    out = Compose([_identities(ndim)[name]], seed=3)(batch)
    torch.testing.assert_close(out["image"], batch["image"], atol=1e-6, rtol=0)
    assert out["label"].dtype == batch["label"].dtype
    assert torch.equal(out["label"], batch["label"])
    assert torch.equal(out["markers"], batch["markers"])
    assert_boxes_close(out["boxes"], batch["boxes"], atol=1e-6)
    assert_boxes_close(out["points"], batch["points"], atol=1e-6)
    assert [k.tolist() for k in out.meta["boxes_kept"]] == [[0], [0]]


# ----------------------------------------------------------------------------- flips and rot90
@pytest.mark.parametrize("ndim", [2, 3])
def test_flip_equals_torch_flip_and_moves_boxes_and_points(ndim):
    batch = scene(ndim, batch=8)
    out = Compose([RandomFlip(axes=tuple(range(ndim)), p=0.5)], seed=1)(batch)
    flips = out.trace[-1].params["flips"]
    assert flips.any() and not flips.all()
    for b in range(8):
        dims = [axis + 1 for axis in range(ndim) if flips[b, axis]]
        for name in ("image", "label", "markers"):
            expected = torch.flip(batch[name][b], dims) if dims else batch[name][b]
            assert torch.equal(out[name][b], expected), (name, b)
    _assert_exact_geometry(out, ndim)


ROT90_CASES = [
    ((12, 12), (0, 1)),
    ((12, 12), (-2, -1)),
    ((12, 12), (1, 0)),
    ((9, 12, 12), (1, 2)),
    ((12, 12, 9), (0, 1)),
    ((12, 9, 12), (0, 2)),
    ((12, 9, 12), (2, 0)),
]


@pytest.mark.parametrize(("shape", "axes"), ROT90_CASES)
def test_rot90_equals_torch_rot90(shape, axes):
    """Quarter turns go from the first axis towards the second, as torch/numpy rot90 do."""
    image = torch.rand(12, 1, *shape)
    out = Compose([RandomRot90(axes=axes, p=1.0)], seed=0)(Batch(image=image))
    turns = out.trace[-1].params["turns"]
    assert set(turns.tolist()) == {1, 2, 3}
    dims = tuple(a % len(shape) + 1 for a in axes)
    for b in range(12):
        expected = torch.rot90(image[b], int(turns[b]), dims=dims)
        assert torch.equal(out["image"][b], expected), (b, int(turns[b]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_rot90_moves_boxes_and_points_with_the_image(ndim):
    batch = scene(ndim, batch=6)
    chain = [RandomRot90(axes=(-2, -1), p=1.0)]
    if ndim == 3:
        chain += [RandomRot90(axes=(0, 1), p=1.0), RandomRot90(axes=(0, 2), p=1.0)]
    out = Compose(chain, seed=2)(batch)
    _assert_exact_geometry(out, ndim)


def test_rot90_on_a_non_square_plane_only_half_turns():
    batch = Batch(image=torch.rand(64, 1, 6, 8))
    out = Compose([RandomRot90(p=1.0)], seed=0)(batch)
    turns = out.trace[-1].params["turns"]
    assert set(turns.tolist()) == {0, 2}
    assert torch.equal(out.trace[-1].params["applied"], turns > 0)
    for b in range(64):
        assert torch.equal(out["image"][b], torch.rot90(batch["image"][b], int(turns[b]), (1, 2)))


def _assert_exact_geometry(out: Batch, ndim: int, all_present: bool = True) -> None:
    """After an exact move, boxes equal the moved mask's box and points the markers' voxels
    (those still in view when ``all_present`` is false, e.g. after a crop)."""
    count = 2**ndim + 1
    for b in range(out.batch_size):
        expected = boxes_from_mask(out["label"][b, 0] == 1)
        assert_boxes_close([out["boxes"][b]], [expected], atol=1e-5)
        found = marker_positions(out["markers"][b, 0], count)
        present = ~torch.isnan(found[:, 0])
        assert present.all() or not all_present
        assert present.any()
        points = out["points"][b].double()
        torch.testing.assert_close(points[present], found[present], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- translations, crops
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("shift", [(3, -2, 1), (-9, 5, 2), (-40, 0, 0)])
def test_integer_translation_moves_and_clips_boxes_exactly(ndim, shift):
    batch = scene(ndim)
    forward = torch.eye(ndim + 1, dtype=torch.float64)
    forward[:ndim, ndim] = torch.tensor(shift[:ndim], dtype=torch.float64)
    out = Compose([Affine(forward)])(batch)
    assert torch.equal(out["image"], shifted(batch["image"], shift[:ndim]))
    assert torch.equal(out["label"], shifted(batch["label"], shift[:ndim]))
    for b in range(2):
        mask = out["label"][b, 0] == 1
        kept = out.meta["boxes_kept"][b].tolist()
        if mask.any():
            assert kept == [0]
            assert_boxes_close([out["boxes"][b]], [boxes_from_mask(mask)])
        else:  # moved out of view: dropped
            assert kept == [] and out["boxes"][b].shape == (0, 2 * ndim)
        moved = batch["points"][b] + torch.tensor(shift[:ndim], dtype=torch.float32)
        torch.testing.assert_close(out["points"][b], moved)  # points are not clipped
        found = marker_positions(out["markers"][b, 0], 2**ndim + 1)
        present = ~torch.isnan(found[:, 0])
        torch.testing.assert_close(out["points"][b][present].double(), found[present])


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_moves_and_clips_boxes_exactly(ndim):
    patch = (20, 16) if ndim == 2 else (12, 14, 10)
    batch = scene(ndim, batch=6)
    out = Compose([RandomCrop(patch, foreground=0.5)], seed=4)(batch)
    assert out.spatial_shape == patch
    starts = out.trace[-1].params["start"]
    for b in range(6):
        window = tuple(slice(int(s), int(s) + p) for s, p in zip(starts[b], patch, strict=True))
        assert torch.equal(out["image"][b, 0], batch["image"][b, 0][window])
        assert torch.equal(out["label"][b, 0], batch["label"][b, 0][window])
        mask = out["label"][b, 0] == 1
        if mask.any():
            assert_boxes_close([out["boxes"][b]], [boxes_from_mask(mask)])
        else:
            assert out["boxes"][b].shape[0] == 0
        offset = starts[b].flip(0).float()
        torch.testing.assert_close(out["points"][b], batch["points"][b] - offset)


@pytest.mark.parametrize("ndim", [2, 3])
def test_flip_rot90_crop_chain_is_exact(ndim):
    patch = (24, 24) if ndim == 2 else (16, 20, 20)
    batch = scene(ndim, batch=8)
    chain = [
        RandomCrop(patch, foreground=1.0),
        RandomFlip(axes=tuple(range(ndim)), p=0.5),
        RandomRot90(axes=(-2, -1), p=0.8),
    ]
    out = Compose(chain, seed=5)(batch)
    assert out.spatial_shape == patch
    assert (out.trace[2].params["turns"] % 2 == 1).sum() >= 2  # some quarter turns
    _assert_exact_geometry(out, ndim, all_present=False)


# ----------------------------------------------------------------------------- rotations, scaling
@pytest.mark.parametrize("ndim", [2, 3])
def test_rotation_and_scaling_move_boxes_and_points(ndim):
    shape = (40, 40) if ndim == 2 else (28, 28, 28)
    batch = scene(ndim, batch=4, shape=shape)
    out = Compose([RandomAffine(rotate=30, scale=0.15, translate=2)], seed=6)(batch)
    forward = forward_matrix(out.trace[-1], batch)
    count = 2**ndim + 1
    for b in range(4):
        # the moved box is the bounding box of the box's moved corners
        box = batch["boxes"][b][0].double()
        corners = torch.tensor(
            list(itertools.product(*zip(box[:ndim], box[ndim:], strict=True))),
            dtype=torch.float64,
        )
        moved = corners @ forward[b, :ndim, :ndim].T + forward[b, :ndim, ndim]
        analytic = torch.cat([moved.min(dim=0).values, moved.max(dim=0).values])
        assert_boxes_close([out["boxes"][b]], [analytic[None]], atol=1e-4)
        # it contains the resampled mask's box (voxel extents: up to half a voxel out) and is
        # close to it (a rotated rectangle's corner-based box is somewhat larger)
        mask_box = boxes_from_mask(out["label"][b, 0] == 1)[0].double()
        assert torch.all(mask_box[:ndim] >= analytic[:ndim] - 0.5 - 1e-4)
        assert torch.all(mask_box[ndim:] <= analytic[ndim:] + 0.5 + 1e-4)
        assert float((mask_box - analytic).abs().max()) < 2.0
        # points land on the voxels their markers moved to
        found = marker_positions(out["markers"][b, 0], count)
        present = ~torch.isnan(found[:, 0])
        assert int(present.sum()) >= count - 2
        error = (out["points"][b].double()[present] - found[present]).norm(dim=1)
        assert float(error.max()) <= 1.0, error


@pytest.mark.parametrize("ndim", [2, 3])
def test_elastic_moves_points_with_the_markers(ndim):
    shape = (48, 48) if ndim == 2 else (28, 28, 28)
    batch = scene(ndim, batch=3, shape=shape)
    transform = RandomElastic(magnitude=2.0, control_points=4)
    out = Compose([transform], seed=7)(batch)
    assert out.trace[-1].params["applied"].all()
    count = 2**ndim + 1
    total = 0
    for b in range(3):
        found = marker_positions(out["markers"][b, 0], count)
        present = ~torch.isnan(found[:, 0])
        total += int(present.sum())
        error = (out["points"][b].double()[present] - found[present]).norm(dim=1)
        assert float(error.max()) <= 1.0, error
        # the points really moved: the deformation is not a no-op
        assert float((out["points"][b] - batch["points"][b]).abs().max()) > 0.5
        # and they solve pull(y) = p: the displacement at y brings it back to the input point
        field = transform.displacement(shape, out.trace[-1].params)[b : b + 1]
        y = out["points"][b].double()
        shift = _warp.sample_at(field, y[None].float())[0].double()
        torch.testing.assert_close(y + shift, batch["points"][b].double(), atol=2e-3, rtol=0)
        # the box (surface lattice of the moved box) contains the object and is close to it
        mask_box = boxes_from_mask(out["label"][b, 0] == 1)[0].double()
        moved_box = out["boxes"][b][0].double()
        assert torch.all(mask_box[:ndim] >= moved_box[:ndim] - 1.0)
        assert torch.all(mask_box[ndim:] <= moved_box[ndim:] + 1.0)
        assert float((mask_box - moved_box).abs().max()) < 2.0
    assert total >= 2 * count  # nearest resampling drops some single voxels where it compresses


@pytest.mark.parametrize("ndim", [2, 3])
def test_elastic_moves_many_marked_voxels_to_their_points(ndim):
    shape = (40, 40) if ndim == 2 else (24, 24, 24)
    generator = torch.Generator().manual_seed(3)
    count = 60
    markers = torch.zeros(1, 1, *shape, dtype=torch.int32)
    flat = torch.randperm(markers.numel(), generator=generator)
    positions = []
    for index in flat.tolist():
        voxel = np.unravel_index(index, shape)
        if all(3 <= v < s - 3 for v, s in zip(voxel, shape, strict=True)):  # stay inside
            markers[(0, 0, *voxel)] = len(positions) + 1
            positions.append([float(v) for v in voxel[::-1]])
        if len(positions) == count:
            break
    batch = Batch(markers=markers, points=[torch.tensor(positions)])
    out = Compose([RandomElastic(magnitude=2.0, control_points=4)], seed=1)(batch)
    found = marker_positions(out["markers"][0, 0], count)
    present = ~torch.isnan(found[:, 0])
    assert int(present.sum()) >= 0.6 * count
    moved = (out["points"][0].double() - torch.tensor(positions)).norm(dim=1)
    assert float(moved.max()) > 1.0  # a real deformation
    error = (out["points"][0].double()[present] - found[present]).norm(dim=1)
    assert float(error.max()) <= 1.0, error
    assert float(error.mean()) <= 0.5


# ----------------------------------------------------------------------------- spacing
@pytest.mark.parametrize("ndim", [2, 3])
def test_rotation_is_isotropic_in_millimetres(ndim):
    """Spacing (1, 2[, 1]): a 90-degree turn in the x-y plane keeps a physical disk a disk."""
    shape = (24, 48) if ndim == 2 else (4, 24, 48)  # y spacing 2: the plane is 48 x 48 mm
    spacing = (1.0, 2.0, 1.0)[:ndim]
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    x, y = grids[-1] - (shape[-1] - 1) / 2, grids[-2] - (shape[-2] - 1) / 2
    disk = (x * spacing[0]) ** 2 + (y * spacing[1]) ** 2 <= 18.0**2
    label = torch.from_numpy(disk.astype(np.int64))[None, None]
    rotate = [(90, 90)] if ndim == 2 else [(0, 0), (0, 0), (90, 90)]  # about z: the x-y plane
    chain = [RandomAffine(rotate=rotate)]
    out = Compose(chain)(Batch(label=label, spacing=spacing))["label"]
    dice = 2 * (out & label).sum() / (out.sum() + label.sum())
    assert float(dice) > 0.97
    # the same turn in voxel units squashes it into an ellipse of the other orientation
    squashed = Compose(chain)(Batch(label=label))["label"]
    dice = 2 * (squashed & label).sum() / (squashed.sum() + label.sum())
    assert float(dice) < 0.75


# ----------------------------------------------------------------------------- SciPy oracles
def _generic_affine() -> list:
    return [RandomAffine(rotate=25, scale=0.15, shear=0.05, translate=3)]


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_matches_scipy_on_random_data(ndim):
    shape = (37, 41) if ndim == 2 else (19, 23, 21)
    generator = torch.Generator().manual_seed(11)
    image = torch.rand(3, 1, *shape, generator=generator) * 200 - 50
    label = torch.randint(0, 6, (3, 1, *shape), generator=generator, dtype=torch.int16)
    batch = Batch(image=image, label=label, spacing=(0.8, 1.1, 1.7)[:ndim])
    out = Compose(_generic_affine(), seed=12)(batch)
    pull = pull_matrix(out.trace[-1], batch).numpy()
    ties = 0
    for b in range(3):
        expected = scipy_affine(image[b, 0].double().numpy(), pull[b], shape, order=1)
        np.testing.assert_allclose(out["image"][b, 0].numpy(), expected, rtol=0, atol=200e-4)
        nearest = scipy_affine(label[b, 0].numpy(), pull[b], shape, order=0)
        ties += int((out["label"][b, 0].numpy() != nearest).sum())
    assert out["label"].dtype == torch.int16
    assert ties <= 1e-3 * label.numel()


@pytest.mark.parametrize("shape", [(1, 9, 8), (1, 8)])
def test_affine_matches_scipy_along_an_axis_of_size_one(shape):
    """A single-slice volume shifted half a voxel across the slice blends with the zeros."""
    ndim = len(shape)
    image = torch.rand(1, 1, *shape) + 1.0
    forward = torch.eye(ndim + 1, dtype=torch.float64)
    forward[ndim - 1, ndim] = 0.5  # along the first tensor axis, the one of size 1
    forward[0, ndim] = 0.25
    out = Compose([Affine(forward)])(Batch(image=image))
    pull = torch.linalg.inv(forward).numpy()
    expected = scipy_affine(image[0, 0].double().numpy(), pull, shape, order=1)
    np.testing.assert_allclose(out["image"][0, 0].numpy(), expected, rtol=0, atol=1e-5)


def test_affine_matches_scipy_on_real_ct(ct_small_image):
    array = ct_small_image.array[:, 20:84, 30:94].astype(np.float32)  # (30, 64, 64)
    image = torch.from_numpy(array.copy())[None, None]
    batch = Batch(image=image, spacing=ct_small_image.spacing)
    out = Compose([RandomAffine(rotate=20, scale=0.1, shear=0.05, translate=4)], seed=2)(batch)
    pull = pull_matrix(out.trace[-1], batch).numpy()[0]
    expected = scipy_affine(array.astype(np.float64), pull, array.shape, order=1)
    value_range = float(array.max() - array.min())
    difference = np.abs(out["image"][0, 0].numpy() - expected)
    assert difference.max() <= 1e-4 * value_range
    assert np.abs(expected).max() > 100  # a real, non-empty comparison


@pytest.mark.parametrize("ndim", [2, 3])
def test_elastic_matches_scipy_map_coordinates(ndim):
    shape = (40, 36) if ndim == 2 else (20, 22, 18)
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(2, 1, *shape, generator=generator)
    label = torch.randint(0, 4, (2, 1, *shape), generator=generator, dtype=torch.uint8)
    transform = RandomElastic(magnitude=3.0, control_points=5)
    out = Compose([transform], seed=9)(Batch(image=image, label=label))
    field = transform.displacement(shape, out.trace[-1].params).double().numpy()
    assert field.shape == (2, ndim, *shape)
    grids = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))  # array order
    ties = 0
    for b in range(2):
        source = grids + field[b][::-1]  # field channels are x, y[, z]: reverse to array order
        expected = ndimage.map_coordinates(
            image[b, 0].double().numpy(), source, order=1, mode="grid-constant", cval=0.0
        )
        np.testing.assert_allclose(out["image"][b, 0].numpy(), expected, rtol=0, atol=1e-4)
        nearest = ndimage.map_coordinates(
            label[b, 0].numpy(), source, order=0, mode="grid-constant", cval=0
        )
        ties += int((out["label"][b, 0].numpy() != nearest).sum())
    assert out["label"].dtype == torch.uint8
    assert ties <= 1e-3 * label.numel()


# ----------------------------------------------------------------------------- kernels
def _signed_permutations(n: int):
    for order in itertools.permutations(range(n)):
        for signs in itertools.product((1, -1), repeat=n):
            linear = torch.zeros(n, n, dtype=torch.float64)
            for i, (j, s) in enumerate(zip(order, signs, strict=True)):
                linear[i, j] = s
            yield linear


@pytest.mark.parametrize("ndim", [2, 3])
def test_exact_index_path_equals_interpolation(ndim):
    """Every signed axis permutation with integer shifts: the index path equals grid_sample."""
    shape = (7,) * ndim
    image = torch.rand(1, 2, *shape)
    label = torch.randint(0, 9, (1, 1, *shape))
    for linear in _signed_permutations(ndim):
        pull = torch.eye(ndim + 1, dtype=torch.float64)[None].clone()
        pull[0, :ndim, :ndim] = linear
        centre = torch.full((ndim,), 3.0, dtype=torch.float64)
        pull[0, :ndim, ndim] = centre - linear @ centre + torch.tensor([1.0, -2.0, 0.0][:ndim])
        for x, mode in ((image, "linear"), (label, "nearest")):
            exact = _warp.index_warp(x, pull, shape)
            assert exact is not None
            reference = _warp.warp_coords(x, _warp.affine_coords(pull, shape), mode=mode)
            torch.testing.assert_close(
                exact, reference, atol=1e-5, rtol=0, msg=f"{mode} {linear.tolist()}"
            )


# ----------------------------------------------------------------------------- crop sampling
def _dot_batch(size: int, where=(27, 3), shape=(32, 32)) -> Batch:
    label = torch.zeros(size, 1, *shape, dtype=torch.int64)
    label[:, 0, where[0], where[1]] = 2  # one foreground voxel
    return Batch(image=torch.rand(size, 1, *shape), label=label)


def test_crop_foreground_one_always_contains_foreground():
    out = Compose([RandomCrop((8, 8), foreground=1.0)], seed=0)(_dot_batch(200))
    assert out.trace[-1].params["foreground"].all()
    assert bool((out["label"].flatten(1) == 2).any(dim=1).all())


def test_crop_foreground_zero_is_uniform():
    out = Compose([RandomCrop((8, 8), foreground=0.0)], seed=0)(_dot_batch(400, (16, 16)))
    starts = out.trace[-1].params["start"]
    assert not out.trace[-1].params["foreground"].any()
    assert starts.min() == 0 and starts.max() == 24  # the whole range 0..32-8
    assert abs(float(starts.mean()) - 12.0) < 1.0
    counts = torch.bincount(starts.flatten().long(), minlength=25).double()
    assert counts.min() > 0.4 * counts.mean()
    # the central dot is hit about as often as uniform placement predicts ((8/25)^2 ~ 10 %)
    hits = (out["label"].flatten(1) == 2).any(dim=1).double().mean()
    assert 0.06 < float(hits) < 0.15


def test_crop_classes_select_the_foreground():
    batch = _dot_batch(50)
    batch["label"][:, 0, 2, 30] = 5
    out = Compose([RandomCrop((6, 6), foreground=1.0, classes=[5])], seed=1)(batch)
    assert bool((out["label"].flatten(1) == 5).any(dim=1).all())


@pytest.mark.parametrize("foreground", [0.0, 1.0])
@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_pads_a_smaller_volume_around_the_centre(ndim, foreground):
    shape = (10, 40) if ndim == 2 else (10, 40, 7)
    patch = (16, 24) if ndim == 2 else (16, 24, 12)
    image = torch.rand(4, 1, *shape) + 1.0
    label = torch.ones(4, 1, *shape, dtype=torch.int64)
    out = Compose([RandomCrop(patch, foreground=foreground)], seed=3)(
        Batch(image=image, label=label)
    )
    assert out.spatial_shape == patch and out["label"].shape == (4, 1, *patch)
    starts = out.trace[-1].params["start"]
    for b in range(4):
        assert starts[b, 0] == -3  # (10 - 16) // 2: padded evenly
        if ndim == 3:
            assert starts[b, 2] == -3  # (7 - 12) // 2
        window = tuple(
            slice(max(int(s), 0), int(s) + p) for s, p in zip(starts[b], patch, strict=True)
        )
        inside = tuple(
            slice(-min(int(s), 0), -min(int(s), 0) + size)
            for s, size in zip(starts[b], shape, strict=True)
        )
        inner = out["image"][b, 0][inside]
        assert torch.equal(inner, image[b, 0][window])
        assert float(out["image"][b, 0].sum()) == pytest.approx(float(inner.sum()), rel=1e-6)


def test_crop_refuses_wrong_dimensions_and_late_placement():
    batch = _dot_batch(2)
    with pytest.raises(ValueError, match="does not match"):
        Compose([RandomCrop((8, 8, 8))])(batch)
    with pytest.raises(ValueError, match="before other shape-changing"):
        Compose([RandomCrop((16, 16)), RandomCrop((8, 8))])(batch)


# ----------------------------------------------------------------------------- parameters
def test_affine_parameter_ranges():
    batch = Batch(image=torch.rand(300, 1, 4, 4, 4))
    transform = RandomAffine(
        rotate=[(0, 10), (-5, 5), (-20, 20)], scale=(0.1, 0.2, 0.3), shear=0.05, translate=2
    )
    params = Compose([transform], seed=0)(batch).trace[-1].params
    angles = params["angles_deg"]
    assert angles.shape == (300, 3)
    assert angles[:, 0].min() >= 0 and angles[:, 0].max() <= 10
    assert angles[:, 1].min() >= -5 and angles[:, 1].max() <= 5
    assert angles[:, 2].min() >= -20 and angles[:, 2].max() <= 20 and angles[:, 2].max() > 15
    scales = params["scales"]
    for axis, half in enumerate((0.1, 0.2, 0.3)):
        assert scales[:, axis].min() >= 1 - half and scales[:, axis].max() <= 1 + half
    assert params["shears"].shape == (300, 6) and params["shears"].abs().max() <= 0.05
    assert params["translation"].abs().max() <= 2
    iso = Compose([RandomAffine(scale=0.2, isotropic=True)], seed=0)(batch).trace[-1].params
    assert torch.equal(iso["scales"][:, 0], iso["scales"][:, 1])
    assert torch.equal(iso["scales"][:, 0], iso["scales"][:, 2])
    with pytest.raises(ValueError, match="rotate"):
        Compose([RandomAffine(rotate=(1, 2))])(batch)


def test_flip_refuses_axes_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        Compose([RandomFlip(axes=2)])(Batch(image=torch.rand(1, 1, 4, 4)))


def test_elastic_needs_two_control_points_and_is_not_invertible():
    with pytest.raises(ValueError, match="control_points"):
        RandomElastic(control_points=1)
    out = Compose([RandomElastic(magnitude=1.0, control_points=3)])(
        Batch(image=torch.rand(1, 1, 8, 8))
    )
    with pytest.raises(ValueError, match="cannot be inverted"):
        Compose([]).invert(out)


@pytest.mark.parametrize("min_visible, kept", [(0.0, [0, 1]), (0.4, [0, 1]), (0.6, [0])])
def test_boxes_cut_by_the_output_are_dropped_below_the_visible_fraction(min_visible, kept):
    """A box half pushed out of the image is kept (clipped) or dropped as
    ``meta["boxes_min_visible"]`` says; a box wholly inside is always kept."""
    from medlens.transforms import Affine, Batch, Compose

    batch = Batch(
        image=torch.zeros(1, 1, 20, 20),
        boxes=[torch.tensor([[4.5, 4.5, 8.5, 8.5], [10.5, 4.5, 18.5, 8.5]])],
    )
    batch.meta["boxes_min_visible"] = min_visible
    shift = torch.eye(3, dtype=torch.float64)
    shift[0, 2] = 5.0  # 5 voxels along x: the second box ends at 23.5, the image at 19.5
    out = Compose([Affine(shift)], seed=0)(batch)
    assert out.meta["boxes_kept"][0].tolist() == kept
    boxes = out["boxes"][0]
    assert torch.allclose(boxes[0], torch.tensor([9.5, 4.5, 13.5, 8.5]))
    if len(kept) == 2:  # clipped at the image's edge: half of it is left
        assert torch.allclose(boxes[1], torch.tensor([15.5, 4.5, 19.5, 8.5]))
