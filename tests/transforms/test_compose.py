"""Compose: seeds, replay, traces, probabilities, inversion, fusion and devices."""

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
    boxes_from_mask,
)

SHAPES = {2: (32, 32), 3: (20, 20, 20)}


# ----------------------------------------------------------------------------- helpers
def smooth(shape, batch=2, sigma=3.5, seed=0) -> torch.Tensor:
    return gaussian_blobs(shape, batch, sigma, seed, count=5, spread=(0.25, 0.75))


def make_batch(ndim: int, batch: int = 2, shape=None, label_dtype=torch.int64, **extra) -> Batch:
    """Smooth image, a box-shaped object with two values, its box and a few points."""
    shape = shape or SHAPES[ndim]
    label = torch.zeros(batch, 1, *shape, dtype=label_dtype)
    boxes, points = [], []
    for b in range(batch):
        low = [int(0.3 * s) + b for s in shape]
        high = [int(0.6 * s) + b for s in shape]
        window = tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))
        label[b, 0][window] = 3
        label[b, 0][tuple(slice(lo, lo + 2) for lo in low)] = 7
        boxes.append(boxes_from_mask(label[b, 0]))
        points.append(torch.tensor([low[::-1], high[::-1]], dtype=torch.float32) + 0.25)
    return Batch(image=smooth(shape, batch), label=label, boxes=boxes, points=points, **extra)


def full_chain(ndim: int) -> list:
    patch = (24, 24) if ndim == 2 else (16, 16, 16)
    return [
        RandomCrop(patch, foreground=0.5),
        RandomFlip(axes=tuple(range(ndim)), p=0.5),
        RandomRot90(p=0.5),
        RandomAffine(rotate=20, scale=0.1, shear=0.05, translate=2, p=0.8),
        RandomElastic(magnitude=1.5, control_points=4, p=0.7),
        GaussianNoise(std=(0.0, 0.1), p=0.5),
        ZScore(),
    ]


def assert_batches_equal(a: Batch, b: Batch) -> None:
    assert list(a) == list(b) and a.kinds == b.kinds
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert a[name].dtype == b[name].dtype, name
            assert torch.equal(a[name], b[name]), name
        else:
            assert len(a[name]) == len(b[name])
            for x, y in zip(a[name], b[name], strict=True):
                assert torch.equal(x, y), name


def forward_of(step, batch: Batch) -> torch.Tensor:
    pull = step.transform.matrix(step.in_shape, step.params, batch.spacing_tensor())
    return torch.linalg.inv(pull)


def index_grid(shape) -> torch.Tensor:
    """Index coordinates ``(*shape, n)`` (x, y[, z]) of every voxel."""
    axes = [torch.arange(s, dtype=torch.float64) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)


def round_trip_mask(forward: torch.Tensor, shape, out_shape=None, margin=3.0) -> torch.Tensor:
    """Voxels ``q`` of ``shape`` at least ``margin`` from its edge whose image ``forward @ q``
    lies inside ``out_shape`` (default: the same): there a round trip has its source."""
    grid = index_grid(shape)
    n = len(shape)
    sizes = torch.tensor(shape[::-1], dtype=torch.float64)
    out_sizes = torch.tensor((out_shape or shape)[::-1], dtype=torch.float64)
    moved = grid @ forward[:n, :n].T + forward[:n, n]
    inside = ((moved >= 0) & (moved <= out_sizes - 1)).all(dim=-1)
    away = ((grid >= margin) & (grid <= sizes - 1 - margin)).all(dim=-1)
    return inside & away


# ----------------------------------------------------------------------------- seeds and replay
@pytest.mark.parametrize("ndim", [2, 3])
def test_same_seed_same_output_and_other_seeds_differ(ndim):
    batch = make_batch(ndim, batch=3)
    first = Compose(full_chain(ndim), seed=11)(batch)
    again = Compose(full_chain(ndim), seed=11)(batch)
    assert_batches_equal(first, again)
    generator = torch.Generator().manual_seed(11)
    assert_batches_equal(first, Compose(full_chain(ndim), generator=generator)(batch))
    other = Compose(full_chain(ndim), seed=12)(batch)
    assert not torch.equal(first["image"], other["image"])
    # one chain, called twice, continues its generator: the second draw differs
    chain = Compose(full_chain(ndim), seed=11)
    assert_batches_equal(chain(batch), first)
    assert not torch.equal(chain(batch)["image"], first["image"])


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("ndim", [2, 3])
def test_replay_reproduces_the_output(ndim, fuse):
    batch = make_batch(ndim, batch=3)
    chain = Compose(full_chain(ndim), seed=5, fuse=fuse)
    out = chain(batch)
    assert_batches_equal(Compose(full_chain(ndim), fuse=fuse).replay(batch, out.trace), out)
    assert [k.tolist() for k in out.meta["boxes_kept"]] == [
        k.tolist() for k in chain.replay(batch, out.trace).meta["boxes_kept"]
    ]
    # replaying on another field set (a prediction) moves it the same way
    prediction = Batch(label=batch["label"].clone())
    replayed = Compose([], fuse=fuse).replay(prediction, out.trace)
    assert torch.equal(replayed["label"], out["label"])


def test_trace_records_transforms_parameters_and_shapes():
    batch = make_batch(3, batch=4)
    chain = full_chain(3)
    out = Compose(chain, seed=1)(batch)
    assert [step.transform for step in out.trace] == chain
    assert out.trace[0].in_shape == (20, 20, 20)
    assert all(step.in_shape == (16, 16, 16) for step in out.trace[1:])
    for step in out.trace:
        if "applied" in step.params:
            assert step.params["applied"].dtype == torch.bool
            assert step.params["applied"].shape == (4,)
    affine = out.trace[3].params
    assert affine["angles_deg"].shape == (4, 3) and affine["angles_deg"].dtype == torch.float64
    assert affine["scales"].shape == (4, 3) and affine["translation"].shape == (4, 3)
    assert out.trace[0].params["start"].shape == (4, 3)
    assert out.trace[1].params["flips"].shape == (4, 3)
    assert out.trace[4].params["control"].shape == (4, 3, 4, 4, 4)
    # samples not drawn for a step carry identity parameters
    off = ~affine["applied"]
    assert torch.all(affine["angles_deg"][off] == 0) and torch.all(affine["scales"][off] == 1)
    # a second chain on the output appends to the trace
    more = Compose([RandomFlip(p=1.0)], seed=2)(out)
    assert len(more.trace) == len(out.trace) + 1
    assert all(a is b for a, b in zip(more.trace, out.trace, strict=False))


def test_a_transform_called_alone_records_its_step():
    batch = make_batch(2)
    out = RandomFlip(axes=(0, 1), p=1.0)(batch)
    assert len(out.trace) == 1 and out.trace[0].params["flips"].all()
    assert torch.equal(out["image"], torch.flip(batch["image"], (2, 3)))
    generator = torch.Generator().manual_seed(3)
    again = RandomAffine(rotate=10)(batch, generator)
    expected = Compose([RandomAffine(rotate=10)], seed=3)(batch)
    assert torch.equal(again["image"], expected["image"])


# ----------------------------------------------------------------------------- probability
@pytest.mark.parametrize(
    "transform",
    [
        RandomAffine(rotate=30, p=0.5),
        RandomElastic(magnitude=2.0, control_points=3, p=0.5),
        RandomRot90(p=0.5),
        GaussianNoise(std=0.5, p=0.5),
    ],
    ids=["affine", "elastic", "rot90", "noise"],
)
def test_probability_is_respected(transform):
    image = torch.rand(400, 1, 6, 6)
    out = Compose([transform], seed=0)(Batch(image=image))
    applied = out.trace[-1].params["applied"]
    assert 0.42 < float(applied.double().mean()) < 0.58
    same = (out["image"] - image).abs().flatten(1).amax(dim=1) < 1e-6
    assert torch.equal(same, ~applied)  # drawn samples changed, the others untouched


def test_flip_probability_per_axis():
    out = Compose([RandomFlip(axes=(0, 1, 2), p=0.5)], seed=0)(
        Batch(image=torch.rand(400, 1, 2, 2, 2))
    )
    flips = out.trace[-1].params["flips"].double()
    assert torch.all((flips.mean(dim=0) > 0.42) & (flips.mean(dim=0) < 0.58))
    assert 0.8 < float(out.trace[-1].params["applied"].double().mean()) < 0.95  # 1 - 1/8


def test_probability_extremes():
    image = torch.rand(50, 1, 6, 6)
    never = Compose([RandomAffine(rotate=30, p=0.0)], seed=0)(Batch(image=image))
    always = Compose([RandomAffine(rotate=30, p=1.0)], seed=0)(Batch(image=image))
    assert not never.trace[-1].params["applied"].any()
    assert torch.equal(never["image"], image)
    assert always.trace[-1].params["applied"].all()


# ----------------------------------------------------------------------------- inversion
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("spacing", [None, (0.8, 1.0, 1.6)])
def test_affine_then_invert_returns_the_image(ndim, spacing):
    shape = (40, 40) if ndim == 2 else (24, 24, 24)
    extra = {} if spacing is None else {"spacing": spacing[:ndim]}
    batch = Batch(image=smooth(shape, batch=3, sigma=5.0), **extra)
    transform = RandomAffine(rotate=25, scale=0.15, shear=0.05, translate=3)
    out = Compose([transform], seed=4)(batch)
    forward = forward_of(out.trace[-1], batch)
    back = Compose([]).invert(out)
    assert back.trace == [] and back.spatial_shape == shape
    # an explicit Affine with the inverse forward matrix does the same
    explicit = Compose([Affine(torch.linalg.inv(forward))])(out)
    torch.testing.assert_close(explicit["image"], back["image"], atol=1e-5, rtol=0)
    for b in range(3):
        mask = round_trip_mask(forward[b], shape)
        assert float(mask.double().mean()) > 0.3
        # linear interpolation, twice, flattens the blobs' peaks by a few percent
        amplitude = float(batch["image"][b].max())
        error = (back["image"][b, 0] - batch["image"][b, 0]).abs()[mask]
        assert float(error.max()) < 0.03 * amplitude, float(error.max())
        assert float(error.mean()) < 0.005 * amplitude


@pytest.mark.parametrize("ndim", [2, 3])
def test_flips_and_rot90_invert_exactly(ndim):
    shape = (16, 16) if ndim == 2 else (16, 16, 16)
    batch = make_batch(ndim, batch=6, shape=shape)
    chain = [RandomFlip(axes=tuple(range(ndim)), p=0.5), RandomRot90(p=0.9)]
    if ndim == 3:
        chain.append(RandomRot90(axes=(0, 2), p=0.9))
    out = Compose(chain, seed=8)(batch)
    assert not torch.equal(out["image"], batch["image"])
    back = Compose([]).invert(out)
    for name in ("image", "label"):
        assert torch.equal(back[name], batch[name]), name
    for moved, original in zip(back["boxes"], batch["boxes"], strict=True):
        torch.testing.assert_close(moved, original, atol=1e-5, rtol=0)
    for moved, original in zip(back["points"], batch["points"], strict=True):
        torch.testing.assert_close(moved, original, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_affine_invert_restores_the_input_grid(ndim):
    shape = (40, 40) if ndim == 2 else (24, 24, 24)
    patch = (24, 24) if ndim == 2 else (16, 16, 16)
    batch = Batch(image=smooth(shape, batch=2, sigma=5.0))
    chain = [RandomCrop(patch, foreground=0.0), RandomAffine(rotate=15, p=1.0)]
    out = Compose(chain, seed=3)(batch)
    assert out.spatial_shape == patch
    back = Compose([]).invert(out)
    assert back.spatial_shape == shape
    start = out.trace[0].params["start"]
    crop_forward = torch.eye(ndim + 1, dtype=torch.float64).repeat(2, 1, 1)
    crop_forward[:, :ndim, ndim] = -start.flip(-1)
    forward = forward_of(out.trace[1], batch) @ crop_forward
    for b in range(2):
        mask = round_trip_mask(forward[b], shape, patch)
        assert mask.any()
        amplitude = float(batch["image"][b].max())
        error = (back["image"][b, 0] - batch["image"][b, 0]).abs()[mask]
        assert float(error.max()) < 0.03 * amplitude
        assert float(back["image"][b, 0][~mask].abs().max()) <= float(batch["image"].max())


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_prediction_without_spacing_replays_and_inverts_like_the_batch(ndim):
    """Test-time augmentation: the model's output carries no spacing; the trace does."""
    shape = (24, 24) if ndim == 2 else (12, 16, 16)
    batch = make_batch(ndim, shape=shape, spacing=(0.7, 1.0, 3.0)[:ndim])
    chain = [RandomFlip(axes=(0,), p=0.5), RandomAffine(rotate=30, scale=0.1)]
    out = Compose(chain, seed=3)(batch)
    prediction = Batch(image=out["image"].clone())  # no spacing
    back = Compose([]).invert(prediction, out.trace)
    torch.testing.assert_close(back["image"], Compose([]).invert(out)["image"])
    again = Compose([]).replay(Batch(image=batch["image"]), out.trace)
    assert torch.equal(again["image"], out["image"])
    for fuse in (True, False):
        unfused = Compose([], fuse=fuse).replay(Batch(image=batch["image"]), out.trace[1:])
        expected = Compose([], fuse=fuse).replay(batch, out.trace[1:])
        assert torch.equal(unfused["image"], expected["image"])


def test_invert_skips_intensity_steps_and_needs_a_trace():
    batch = make_batch(2)
    out = Compose([RandomFlip(axes=(0,), p=1.0), ZScore()], seed=0)(batch)
    back = Compose([]).invert(out)
    torch.testing.assert_close(back["image"], ZScore().apply_image(batch["image"], {}))
    assert torch.equal(back["label"], batch["label"])
    untouched = Compose([]).invert(batch)
    assert torch.equal(untouched["image"], batch["image"])


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize(("fuse", "label_mode"), [(True, "nearest"), (False, "nearest"),
                                                 (True, "onehot"), (False, "onehot")])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("ndim", [2, 3])
def test_labels_keep_their_values_and_dtype(ndim, dtype, fuse, label_mode):
    shape = (40, 40) if ndim == 2 else (24, 24, 24)
    generator = torch.Generator().manual_seed(0)
    values = torch.tensor([0, 3, 7, 12, 200], dtype=dtype)
    label = values[torch.randint(0, 5, (2, 1, *shape), generator=generator)]
    patch = (32, 32) if ndim == 2 else (20, 20, 20)
    chain = [
        RandomCrop(patch, foreground=0.5),
        RandomAffine(rotate=30, scale=0.2, shear=0.05, translate=2.5),
        RandomElastic(magnitude=2.0, control_points=4),
    ]
    batch = Batch(image=label.float(), label=label)
    out = Compose(chain, seed=1, fuse=fuse, label_mode=label_mode)(batch)
    assert out["label"].dtype == dtype
    found = set(torch.unique(out["label"]).tolist())
    assert found <= set(values.tolist()) and len(found) == 5
    assert not set(torch.unique(out["image"]).tolist()) <= set(values.tolist())  # image blends


@pytest.mark.parametrize("label_mode", ["nearest", "onehot"])
def test_one_spatial_step_is_the_same_fused_or_not(label_mode):
    batch = make_batch(3, shape=(16, 16, 16))
    chain = [RandomAffine(rotate=30, scale=0.2)]
    fused = Compose(chain, seed=2, label_mode=label_mode)(batch)
    unfused = Compose(chain, seed=2, fuse=False, label_mode=label_mode)(batch)
    assert_batches_equal(fused, unfused)
    if label_mode == "onehot":  # it is not nearest-neighbour resampling
        nearest = Compose(chain, seed=2)(batch)
        assert not torch.equal(nearest["label"], fused["label"])


# ----------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("ndim", [2, 3])
def test_two_affines_fuse_into_one_resampling(ndim):
    shape = (40, 40) if ndim == 2 else (24, 24, 24)
    batch = Batch(image=smooth(shape, batch=2), spacing=(0.9, 1.2, 1.0)[:ndim])
    chain = [RandomAffine(rotate=20, scale=0.1, translate=2), RandomAffine(rotate=20, scale=0.1)]
    fused = Compose(chain, seed=6)(batch)
    first, second = (forward_of(step, batch) for step in fused.trace)
    once = Compose([Affine(second @ first)])(batch)
    torch.testing.assert_close(fused["image"], once["image"], atol=1e-5, rtol=0)
    unfused = Compose(chain, seed=6, fuse=False)(batch)
    for step, again in zip(fused.trace, unfused.trace, strict=True):
        assert torch.equal(step.params["angles_deg"], again.params["angles_deg"])
    for b in range(2):
        # the unfused chain's intermediate must keep the source too
        mask = round_trip_mask(torch.linalg.inv(second[b] @ first[b]), shape)
        mask &= round_trip_mask(torch.linalg.inv(second[b]), shape)
        difference = (fused["image"][b, 0] - unfused["image"][b, 0]).abs()[mask]
        assert 1e-4 < float(difference.max()) < 0.04


def test_an_intensity_step_splits_the_fused_run():
    shape = (24, 24)
    batch = Batch(image=smooth(shape))
    rotation = torch.eye(3, dtype=torch.float64)
    angle = torch.tensor(0.3, dtype=torch.float64)
    rotation[:2, :2] = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])
    centre = torch.eye(3, dtype=torch.float64)
    centre[:2, 2] = 11.5
    forward = centre @ rotation @ torch.linalg.inv(centre)
    split = Compose([Affine(forward), GaussianNoise(std=0.0), Affine(forward)])(batch)
    unfused = Compose([Affine(forward), Affine(forward)], fuse=False)(batch)
    fused = Compose([Affine(forward), Affine(forward)])(batch)
    assert torch.equal(split["image"], unfused["image"])
    assert not torch.equal(split["image"], fused["image"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_crop_then_affine_takes_content_from_outside_the_crop(ndim):
    shape = (64, 64) if ndim == 2 else (32, 32, 32)
    patch = (24, 24) if ndim == 2 else (12, 12, 12)
    image = torch.rand(4, 1, *shape) + 1.0  # positive everywhere: zeros mean "outside"
    label = torch.zeros(4, 1, *shape, dtype=torch.int64)
    label[(slice(None), 0, *[slice(s // 2 - 1, s // 2 + 1) for s in shape])] = 1
    rotate = [(40, 45)] * (1 if ndim == 2 else 3)
    chain = [RandomCrop(patch, foreground=1.0), RandomAffine(rotate=rotate, scale=0.1)]
    out = Compose(chain, seed=2)(Batch(image=image, label=label))
    assert out.spatial_shape == patch
    assert bool((out["image"] > 0).all())  # the rotated corners reach outside the crop
    assert bool((out["label"] == 1).flatten(1).any(dim=1).all())
    alone = Compose([chain[0]], seed=2)(Batch(image=image, label=label))
    assert bool((alone["image"] > 0).all())


# ----------------------------------------------------------------------------- devices
@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_fields_stay_on_their_device(ndim):
    """On the meta device (no values): fields and their resampling never meet CPU tensors."""
    shape = SHAPES[ndim]
    batch = Batch(image=torch.rand(2, 1, *shape), label=torch.zeros(2, 1, *shape).long())
    chain = [RandomAffine(rotate=20), RandomElastic(magnitude=1.0, control_points=3)]
    out = Compose(chain, seed=0)(batch.to("meta"))
    assert out["image"].device.type == "meta" and out["label"].device.type == "meta"
    assert out["label"].dtype == torch.int64 and out.spatial_shape == shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ndim", [2, 3])
def test_cuda_equals_cpu(ndim):
    batch = make_batch(ndim, batch=3)
    chain = [step for step in full_chain(ndim) if not isinstance(step, GaussianNoise)]
    cpu = Compose(chain, seed=9)(batch)
    gpu = Compose(chain, seed=9)(batch.to("cuda"))
    assert gpu["image"].device.type == "cuda"
    torch.testing.assert_close(gpu["image"].cpu(), cpu["image"], atol=1e-4, rtol=0)
    assert gpu["label"].dtype == cpu["label"].dtype
    assert float((gpu["label"].cpu() != cpu["label"]).double().mean()) < 1e-3
    for name in ("boxes", "points"):
        for a, b in zip(gpu[name], cpu[name], strict=True):
            assert a.device.type == "cuda"
            torch.testing.assert_close(a.cpu(), b, atol=1e-3, rtol=0)
    back_cpu = Compose([]).invert(Compose(chain[1:4], seed=9)(batch))
    back_gpu = Compose([]).invert(Compose(chain[1:4], seed=9)(batch.to("cuda")))
    torch.testing.assert_close(back_gpu["image"].cpu(), back_cpu["image"], atol=1e-4, rtol=0)
