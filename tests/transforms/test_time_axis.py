"""Image sequences: a leading time axis ``(B, T, C, *S)`` moves with one set of parameters per
sample, frame by frame exactly as a batch of single frames replaying the same trace."""

from __future__ import annotations

import pytest
import torch
from blob_images import gaussian_blobs

from medlens.transforms import (
    BiasField,
    Brightness,
    Compose,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
    RandomAffine,
    RandomCrop,
    RandomElastic,
    RandomFlip,
    RandomRot90,
    Sharpen,
    ZScore,
    _compile,
)
from medlens.transforms.batch import Batch

SHAPES = {2: (20, 20), 3: (10, 12, 12)}


def sequence(ndim: int, batch: int = 2, frames: int = 3, channels: int = 2) -> torch.Tensor:
    """``(B, T, C, *S)`` smooth frames, each different."""
    shape = SHAPES[ndim]
    blobs = gaussian_blobs(shape, batch * frames * channels, sigma=2.5, seed=ndim)
    return blobs.reshape(batch, frames, channels, *shape)


def timed_batch(ndim: int, **extra) -> Batch:
    image = sequence(ndim)
    label = (image[:, :, :1] > image[:, :, :1].mean()).long() * 3
    flow = torch.randn(2, 3, ndim, *SHAPES[ndim])
    return Batch(image=image, label=label, flow=flow, time_axis=True, **extra)


def assert_batches_equal(a: Batch, b: Batch) -> None:
    assert list(a) == list(b) and a.kinds == b.kinds
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert a[name].dtype == b[name].dtype, name
            assert torch.equal(a[name], b[name]), name
        else:
            for x, y in zip(a[name], b[name], strict=True):
                assert torch.equal(x, y), name


# ----------------------------------------------------------------------------- the batch
def test_a_timed_batch_knows_its_frames_and_grid():
    batch = timed_batch(3)
    assert batch.batch_size == 2 and batch.num_frames == 3
    assert batch.spatial_shape == SHAPES[3] and batch.spatial_dims == 3
    assert batch.timed("image") and batch.timed("flow")
    frame = batch.frame(1)
    assert frame.time_axis is False and frame.num_frames is None
    assert torch.equal(frame["image"], batch["image"][:, 1])
    assert frame["flow"].shape == (2, 3, *SHAPES[3])
    assert batch.copy().time_axis is True and batch.to("cpu").time_axis is True
    assert "timed" in repr(batch)


def test_time_axis_can_name_fields():
    image = sequence(2)
    static = torch.zeros(2, 1, *SHAPES[2], dtype=torch.long)
    batch = Batch(image=image, label=static, time_axis={"image"})
    assert batch.timed("image") and not batch.timed("label")
    assert batch.spatial_shape == SHAPES[2] and batch.num_frames == 3
    single = Batch(image=image, label=static, time_axis="image")  # one name
    assert single.time_axis == frozenset({"image"})
    # the first dense field may be the static one
    batch = Batch(label=static, image=image, time_axis={"image"})
    assert batch.spatial_shape == SHAPES[2] and batch.spatial_dims == 2


def test_timed_fields_are_validated():
    with pytest.raises(ValueError, match=r"\(B, T, C"):
        Batch(image=torch.rand(2, 1, 8, 8), time_axis=True)
    with pytest.raises(ValueError, match="frames"):
        Batch(
            image=torch.rand(2, 3, 1, 8, 8), seg=torch.zeros(2, 4, 1, 8, 8).long(), time_axis=True
        )
    with pytest.raises(ValueError, match="components"):
        Batch(image=torch.rand(2, 3, 1, 8, 8), flow=torch.zeros(2, 3, 3, 8, 8), time_axis=True)
    with pytest.raises(ValueError, match="spatial shape"):
        Batch(
            image=torch.rand(2, 3, 1, 8, 8),
            label=torch.zeros(2, 1, 8, 9).long(),
            time_axis={"image"},
        )


# ----------------------------------------------------------------------------- spatial
@pytest.mark.parametrize("ndim", [2, 3])
def test_random_affine_on_a_sequence_equals_the_frames_one_by_one(ndim):
    batch = timed_batch(ndim, spacing=(1.0,) * (ndim - 1) + (1.7,))
    transform = RandomAffine(rotate=25, scale=0.15, shear=0.05, translate=2)
    out = Compose([transform], seed=21)(batch)
    assert out["image"].shape == batch["image"].shape
    params = out.trace[0].params
    assert params["angles_deg"].shape[0] == 2  # one draw per sample, not per frame
    for t in range(3):
        alone = Compose([transform]).replay(batch.frame(t), out.trace)
        assert_batches_equal(out.frame(t), alone)
    # and different samples did get different parameters
    assert not torch.equal(params["angles_deg"][0], params["angles_deg"][1])


@pytest.mark.parametrize("ndim", [2, 3])
def test_a_full_spatial_chain_moves_every_frame_alike(ndim):
    batch = timed_batch(ndim)
    crop = (16, 16) if ndim == 2 else (8, 10, 10)
    chain = [
        RandomCrop(crop, foreground=0.5),
        RandomFlip(axes=tuple(range(ndim))),
        RandomRot90(p=1.0),
        RandomAffine(rotate=15, scale=0.1),
        RandomElastic(1.0, control_points=4),
    ]
    for label_mode in ("nearest", "onehot"):
        run = Compose(chain, seed=4, label_mode=label_mode)
        out = run(batch)
        assert out["image"].shape == (2, 3, 2, *crop) and out["flow"].shape == (2, 3, ndim, *crop)
        for t in range(3):
            alone = Compose(chain, label_mode=label_mode).replay(batch.frame(t), out.trace)
            assert_batches_equal(out.frame(t), alone)


def test_a_static_label_moves_with_its_sequence():
    image = sequence(2)
    label = (image[:, 0, :1] > 0.3).long()
    batch = Batch(image=image, label=label, time_axis={"image"})
    chain = [RandomAffine(rotate=30, translate=2), RandomFlip(axes=(0, 1))]
    out = Compose(chain, seed=8)(batch)
    assert out["label"].shape == label.shape and out["image"].shape == image.shape
    alone = Compose(chain).replay(batch.frame(0), out.trace)
    assert torch.equal(out["label"], alone["label"])
    assert torch.equal(out["image"][:, 0], alone["image"])


def test_crop_foreground_looks_at_every_frame():
    image = torch.rand(4, 3, 1, 32, 32)
    label = torch.zeros(4, 3, 1, 32, 32, dtype=torch.long)
    label[:, 2, 0, 26:29, 3:6] = 1  # foreground only in the last frame
    batch = Batch(image=image, label=label, time_axis=True)
    out = Compose([RandomCrop((8, 8), foreground=1.0)], seed=0)(batch)
    assert bool((out["label"][:, 2].flatten(1).amax(dim=1) == 1).all())


# ----------------------------------------------------------------------------- intensity
@pytest.mark.parametrize(
    "transform",
    [
        Brightness((-0.3, 0.3)),
        Brightness((0.8, 1.2), multiplicative=True),
        GaussianBlur((0.5, 1.5)),
        Sharpen((0.5, 1.0)),
        BiasField(0.3, order=2),
        LowResolution((0.5, 0.9)),
    ],
    ids=repr,
)
@pytest.mark.parametrize("ndim", [2, 3])
def test_intensity_parameters_are_shared_by_a_samples_frames(transform, ndim):
    batch = timed_batch(ndim)
    out = Compose([transform], seed=2)(batch)
    for t in range(3):
        alone = Compose([transform]).replay(batch.frame(t), out.trace)
        torch.testing.assert_close(out["image"][:, t], alone["image"], rtol=1e-5, atol=1e-6)
    assert out["label"] is batch["label"] and out["flow"] is batch["flow"]


def test_statistics_pool_over_the_frames():
    batch = timed_batch(2)
    image = batch["image"]
    out = Compose([ZScore()], seed=0)(batch)["image"]  # per sample and channel, all frames
    pooled = out.transpose(1, 2).flatten(2)
    torch.testing.assert_close(pooled.mean(-1), torch.zeros(2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled.std(-1, correction=0), torch.ones(2, 2), atol=1e-4, rtol=0)
    assert not torch.allclose(out[:, 0].mean(dim=(-2, -1)), torch.zeros(2, 2), atol=1e-3)
    for transform in (Gamma((0.5, 2.0)), Contrast((0.5, 0.9))):
        moved = Compose([transform], seed=1)(batch)["image"]
        low, high = image.transpose(1, 2).flatten(2).aminmax(dim=-1)
        new_low, new_high = moved.transpose(1, 2).flatten(2).aminmax(dim=-1)
        assert bool((new_low >= low - 1e-5).all() and (new_high <= high + 1e-5).all())
        if isinstance(transform, Gamma):  # mapped back onto the pooled range
            torch.testing.assert_close(new_low, low, atol=1e-5, rtol=0)
            torch.testing.assert_close(new_high, high, atol=1e-5, rtol=0)


def test_noise_differs_between_frames_with_one_std_per_sample():
    batch = Batch(image=torch.zeros(2, 3, 1, 64, 64), time_axis=True)
    out = Compose([GaussianNoise((0.1, 0.5))], seed=0)(batch)
    noise = out["image"]
    assert not torch.equal(noise[:, 0], noise[:, 1])
    std = out.trace[0].params["std"]
    per_frame = noise.flatten(2).std(dim=-1)  # (B, T)
    torch.testing.assert_close(per_frame, std.float()[:, None].expand(2, 3), rtol=0.05, atol=0)


def test_mixed_frame_layouts_and_the_fused_path_agree(monkeypatch):
    batch = timed_batch(3)
    mixed = [GaussianBlur(1.0), ZScore(), Brightness(0.1)]
    chained = Compose(mixed, seed=3)(batch)
    one_by_one = batch
    for step in chained.trace:
        one_by_one = Compose([step.transform]).replay(one_by_one, [step])
    torch.testing.assert_close(chained["image"], one_by_one["image"])
    # a run that can be fused (noise then z-score) folds the frames once for the whole run
    fusable = [GaussianNoise(0.1), ZScore()]
    eager = Compose(fusable, seed=5)(batch)
    monkeypatch.setattr(_compile, "enabled_for", lambda *args, **kwargs: True)
    fused = Compose(fusable, seed=5)(batch)  # compile off: the fused expression runs eagerly
    torch.testing.assert_close(fused["image"], eager["image"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ndim", [2, 3])
def test_sequences_and_displacements_on_cuda_equal_the_cpu(ndim):
    fixed = sequence(ndim)[:, :, :1]
    batch = timed_batch(ndim, fixed=fixed, kinds={"fixed": "spatial"})
    chain = [
        RandomFlip(axes=tuple(range(ndim))),
        RandomAffine(rotate=15, scale=0.1),
        RandomElastic(1.0, control_points=4),
        Brightness(0.1),
        ZScore(),
        GaussianBlur(1.0),
    ]
    cpu = Compose(chain, seed=9)(batch)
    gpu = Compose(chain, seed=9)(batch.to("cuda"))
    for name in ("image", "fixed", "flow"):
        assert gpu[name].device.type == "cuda", name
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=2e-3, rtol=0)
    assert float((gpu["label"].cpu() != cpu["label"]).double().mean()) < 1e-2
