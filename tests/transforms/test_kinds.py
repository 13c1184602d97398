"""The ``spatial`` and ``displacement`` kinds: defaults, validation and how spatial transforms
move them (a flip negates its component, affines map vectors by their linear part, elastic
deformations compose exactly, and a warp with the moved field matches the moved warp)."""

from __future__ import annotations

import pytest
import torch
from blob_images import gaussian_blobs

from medlens.transforms import (
    Affine,
    Batch,
    Compose,
    GaussianNoise,
    RandomAffine,
    RandomCrop,
    RandomElastic,
    RandomFlip,
    RandomRot90,
    ZScore,
    _warp,
)
from medlens.transforms._inverse import pull_chain, select
from medlens.transforms._resample import pull_grid
from medlens.transforms.base import _stage_of

SHAPES = {2: (24, 28), 3: (14, 16, 18)}


def index_grid(shape, dtype=torch.float32) -> torch.Tensor:
    """``(n, *shape)`` index coordinates, components in index order (x, y[, z])."""
    axes = [torch.arange(s, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=0)


def linear_field(shape, seed=0, strength=0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A field ``u(p) = A p + c`` ``(1, n, *shape)``: linear interpolation reproduces it."""
    n = len(shape)
    gen = torch.Generator().manual_seed(seed)
    matrix, shift = torch.randn(n, n, generator=gen) * strength, torch.randn(n, generator=gen)
    field = torch.einsum("ij,j...->i...", matrix, index_grid(shape)) + shift.view(n, *[1] * n)
    return field[None], matrix, shift


# ----------------------------------------------------------------------------- the batch
@pytest.mark.parametrize("name", ["displacement", "displacements", "flow", "ddf", "dvf"])
def test_displacement_names(name):
    batch = Batch({"image": torch.rand(2, 1, 8, 8), name: torch.zeros(2, 2, 8, 8)})
    assert batch.kinds[name] == "displacement" and batch.names("displacement") == [name]


def test_target_keeps_its_dtype_rule_and_spatial_is_explicit():
    batch = Batch(image=torch.rand(1, 1, 8, 8), target=torch.rand(1, 1, 8, 8))
    assert batch.kinds["target"] == "image"  # as before: a float field is an image
    batch = Batch(target=torch.zeros(1, 1, 8, 8, dtype=torch.long))
    assert batch.kinds["target"] == "label"
    batch = Batch(
        image=torch.rand(1, 1, 8, 8), fixed=torch.rand(1, 1, 8, 8), kinds={"fixed": "spatial"}
    )
    assert batch.kinds["fixed"] == "spatial" and batch.names("spatial") == ["fixed"]


def test_new_kinds_are_validated():
    with pytest.raises(ValueError, match="components"):
        Batch(image=torch.rand(1, 1, 8, 8), flow=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="components"):
        Batch(image=torch.rand(1, 1, 4, 8, 8), flow=torch.zeros(1, 2, 4, 8, 8))
    with pytest.raises(ValueError, match="floating point"):
        Batch(image=torch.rand(1, 1, 8, 8), flow=torch.zeros(1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="floating point"):
        Batch({"t": torch.zeros(1, 1, 8, 8, dtype=torch.long)}, kinds={"t": "spatial"})
    with pytest.raises(ValueError, match="spatial shape"):
        Batch(image=torch.rand(1, 1, 8, 8), flow=torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="must be a"):
        Batch(image=torch.rand(1, 1, 8, 8), flow=torch.zeros(2, 8, 8))


def test_a_batch_of_spatial_or_displacement_fields_alone_has_a_grid():
    batch = Batch({"fixed": torch.rand(2, 1, 6, 8)}, kinds={"fixed": "spatial"})
    assert batch.spatial_shape == (6, 8) and batch.batch_size == 2
    batch = Batch(flow=torch.zeros(3, 3, 4, 6, 8))
    assert batch.spatial_shape == (4, 6, 8) and batch.spatial_dims == 3
    out = Compose([RandomFlip(axes=(0, 1, 2), p=1.0)])(batch)
    assert out["flow"].shape == (3, 3, 4, 6, 8)
    assert "flow: displacement (3, 3, 4, 6, 8)" in repr(batch)


# ----------------------------------------------------------------------------- exact moves
@pytest.mark.parametrize("ndim", [2, 3])
def test_a_flip_negates_the_flipped_component(ndim):
    shape = SHAPES[ndim]
    flow = torch.randn(2, ndim, *shape)
    batch = Batch(image=torch.rand(2, 1, *shape), flow=flow)
    for axis in range(ndim):  # tensor axis; its component is ndim - 1 - axis (index order)
        out = Compose([RandomFlip(axes=axis, p=1.0)])(batch)["flow"]
        expected = flow.flip(2 + axis)
        component = ndim - 1 - axis
        expected[:, component] = -expected[:, component]
        assert torch.equal(out, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_quarter_turns_and_crops_move_vectors_like_points(ndim):
    """A constant field ``v`` stays constant: the vector joining two pushed points."""
    shape = (16,) * ndim
    vector = torch.arange(1.0, ndim + 1.0)
    flow = vector.view(1, ndim, *[1] * ndim).expand(2, ndim, *shape).contiguous()
    start = torch.full((1, ndim), 4.0)
    batch = Batch(
        image=torch.rand(2, 1, *shape), flow=flow, kinds={"a": "points", "b": "points"},
        a=[start, start], b=[start + vector, start + vector],
    )  # fmt: skip
    chain = [RandomRot90(p=1.0), RandomFlip(axes=0, p=1.0), RandomCrop((12,) * ndim, foreground=0)]
    out = Compose(chain, seed=2)(batch)
    for b in range(2):
        expected = out["b"][b][0] - out["a"][b][0]
        moved = out["flow"][b].reshape(ndim, -1).T
        assert torch.equal(moved, expected.expand_as(moved))


@pytest.mark.parametrize("ndim", [2, 3])
def test_an_affine_maps_vectors_by_its_linear_part(ndim):
    shape = SHAPES[ndim]
    flow, matrix, shift = linear_field(shape)
    points = torch.stack([torch.tensor(s / 2) + torch.arange(-2.0, 3.0) for s in shape[::-1]], -1)
    ends = points + points @ matrix.T + shift
    batch = Batch(
        image=torch.rand(1, 1, *shape), flow=flow, kinds={"a": "points", "b": "points"},
        a=[points], b=[ends], spacing=(1.0,) * (ndim - 1) + (2.0,),
    )  # fmt: skip
    chain = [RandomAffine(rotate=25, scale=0.15, shear=0.05, translate=2)]
    out = Compose(chain, seed=4)(batch)
    # u'(y) = L u(x): sampled where the points landed, it joins them (u is linear: exact)
    sampled = _warp.sample_at(out["flow"], out["a"][0][None])[0]
    torch.testing.assert_close(sampled, out["b"][0] - out["a"][0], atol=1e-4, rtol=0)
    # at a voxel y directly: u'(y) = L u(x), x = pull(y), L the forward linear part
    step = out.trace[0]
    pull = step.transform.matrix(step.in_shape, step.params, step.spacing)[0]
    voxel = tuple(s // 2 for s in shape)
    source = pull @ torch.tensor([*voxel[::-1], 1.0], dtype=torch.float64)
    u_source = matrix.double() @ source[:ndim] + shift.double()
    expected = torch.linalg.inv(pull)[:ndim, :ndim] @ u_source
    moved = out["flow"][(0, slice(None), *voxel)].double()
    torch.testing.assert_close(moved, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_an_elastic_deformation_composes_the_field_exactly(ndim):
    """At every output voxel ``y``: ``pull(y + u'(y)) = x + u(x)`` with ``x = pull(y)``."""
    shape = SHAPES[ndim]
    flow = torch.randn(2, ndim, *shape)
    batch = Batch(image=torch.rand(2, 1, *shape), flow=flow)
    # gentle enough not to fold: a folded region has no inverse to compose with
    chain = [RandomAffine(rotate=20, scale=0.1, translate=1), RandomElastic(1.0, control_points=4)]
    out = Compose(chain, seed=6)(batch)
    stages = [_stage_of(step, batch) for step in out.trace]
    source = pull_grid(stages, shape, "cpu")  # (B, *S, n)
    target = source + _warp.warp_coords(flow, source).movedim(1, -1)
    landed = index_grid(shape).movedim(0, -1) + out["flow"].movedim(1, -1)
    for b in range(2):
        back = pull_chain([select(s, b) for s in stages], landed[b].reshape(-1, ndim).double())
        error = (back - target[b].reshape(-1, ndim).double()).norm(dim=-1)
        assert float(error.max()) < 2e-4


@pytest.mark.parametrize("ndim", [2, 3])
def test_an_elastic_deformation_keeps_a_zero_field_zero(ndim):
    shape = SHAPES[ndim]
    batch = Batch(image=torch.rand(2, 1, *shape), flow=torch.zeros(2, ndim, *shape))
    out = Compose([RandomElastic(3.0, control_points=5)], seed=1)(batch)
    assert float(out["flow"].abs().max()) < 2e-4


@pytest.mark.parametrize("chain", ["affine", "elastic"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_the_moved_field_warps_the_moved_image_onto_the_moved_warp(ndim, chain):
    """Registration: ``warped(p) = moving(p + u(p))``. Augment moving, field and warped alike;
    then the augmented field warps the augmented moving image onto the augmented warped one."""
    shape = (32, 32) if ndim == 2 else (20, 22, 24)
    moving = gaussian_blobs(shape, 1, sigma=3.0, seed=3)
    flow, _, _ = linear_field(shape, seed=5, strength=0.04)
    grid = index_grid(shape)[None]
    warped = _warp.warp_coords(moving, (grid + flow).movedim(1, -1), padding="border")
    batch = Batch({"moving": moving, "flow": flow, "warped": warped}, kinds={"warped": "spatial"})
    transforms = [RandomAffine(rotate=15, scale=0.1, translate=1)]
    if chain == "elastic":
        transforms.append(RandomElastic(1.0, control_points=4))
    out = Compose(transforms, seed=9)(batch)
    again = _warp.warp_coords(out["moving"], (grid + out["flow"]).movedim(1, -1))
    inner = tuple(slice(4, s - 4) for s in shape)
    error = (again[0, 0][inner] - out["warped"][0, 0][inner]).abs()
    assert float(error.mean()) < 0.01 * float(out["warped"].abs().max())


def test_invert_brings_a_field_back():
    shape = (16, 16)
    flow = torch.randn(2, 2, *shape)
    batch = Batch(image=torch.rand(2, 1, *shape), flow=flow)
    chain = Compose([RandomRot90(p=1.0), RandomFlip(axes=(0, 1), p=0.5)], seed=3)
    out = chain(batch)
    assert torch.equal(chain.invert(out)["flow"], flow)
    forward = torch.eye(3, dtype=torch.float64)
    forward[:2, :2] = torch.tensor([[0.9, -0.2], [0.2, 0.9]])
    chain = Compose([Affine(forward)])
    smooth, _, _ = linear_field(shape)  # linear: interpolation loses nothing inside
    back = chain.invert(chain(Batch(image=torch.rand(1, 1, *shape), flow=smooth)))["flow"]
    torch.testing.assert_close(back[..., 4:12, 4:12], smooth[..., 4:12, 4:12], atol=1e-4, rtol=0)


def test_intensity_transforms_never_touch_spatial_or_displacement_fields():
    batch = Batch(
        {"image": torch.rand(2, 1, 8, 8), "fixed": torch.rand(2, 1, 8, 8)},
        kinds={"fixed": "spatial"},
        flow=torch.randn(2, 2, 8, 8),
    )
    out = Compose([GaussianNoise(0.1), ZScore()], seed=0)(batch)
    assert out["fixed"] is batch["fixed"] and out["flow"] is batch["flow"]
    assert not torch.equal(out["image"], batch["image"])
