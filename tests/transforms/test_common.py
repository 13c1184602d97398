"""Common checks run on every public transform of ``medlens.transforms`` (timm / scikit-learn
style): 2D and 3D, with and without a time axis, every field kind; shapes and dtypes, no NaN,
label values kept, seed determinism, exact replay, and which kinds each family may touch.

A transform added to ``medlens.transforms.__all__`` without a factory here fails
:func:`test_every_public_transform_is_covered`.
"""

from __future__ import annotations

import math

import pytest
import torch
from blob_images import gaussian_blobs

import medlens.transforms as T
from medlens.transforms import Batch, Compose, IntensityTransform, SpatialTransform, Transform

BASES = {Transform, SpatialTransform, IntensityTransform, T.TemporalTransform}
PUBLIC = sorted(  # the time-axis transforms have their own suite (test_temporal_augment.py)
    name
    for name in T.__all__
    if isinstance(getattr(T, name), type)
    and issubclass(getattr(T, name), Transform)
    and not issubclass(getattr(T, name), T.TemporalTransform)
    and getattr(T, name) not in BASES
)
SHAPES = {2: (16, 16), 3: (8, 12, 12)}
LABEL_VALUES = (0, 2, 5)
FRAMES = 2


def _affine(n: int) -> T.Affine:
    angle = math.radians(12)
    forward = torch.eye(n + 1, dtype=torch.float64)
    forward[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)],
                                    [math.sin(angle), math.cos(angle)]])  # fmt: skip
    forward[:n, n] = 0.5
    return T.Affine(forward)


#: one instance per public transform, with p = 1 and parameters that visibly change the data
FACTORIES = {
    "Affine": _affine,
    "RandomAffine": lambda n: T.RandomAffine(rotate=20, scale=0.1, shear=0.05, translate=1.5),
    "RandomCrop": lambda n: T.RandomCrop((*SHAPES[n][:-1], 10), foreground=0.5),
    "RandomElastic": lambda n: T.RandomElastic(magnitude=1.0, control_points=4),
    "RandomFlip": lambda n: T.RandomFlip(axes=tuple(range(n)), p=0.5),
    "RandomRot90": lambda n: T.RandomRot90(p=1.0),
    "BiasField": lambda n: T.BiasField(0.3, order=2),
    "Brightness": lambda n: T.Brightness((-0.2, 0.2)),
    "Contrast": lambda n: T.Contrast((0.6, 1.4)),
    "Gamma": lambda n: T.Gamma((0.6, 1.6)),
    "GaussianBlur": lambda n: T.GaussianBlur((0.5, 1.2)),
    "GaussianNoise": lambda n: T.GaussianNoise((0.05, 0.1)),
    "LowResolution": lambda n: T.LowResolution((0.5, 0.8)),
    "Sharpen": lambda n: T.Sharpen((0.5, 1.0)),
    "ZScore": lambda n: T.ZScore(),
}
#: transforms that only work on 2D data: they must refuse 3D with a clear ValueError
TWO_D_ONLY: set[str] = set()


def make_batch(ndim: int, timed: bool, seed: int = 0) -> Batch:
    """Every kind: image, label, spatial (a copy of the image), displacement, boxes, points."""
    shape = SHAPES[ndim]
    gen = torch.Generator().manual_seed(seed)
    lead = (2, FRAMES) if timed else (2,)
    image = gaussian_blobs(shape, math.prod(lead), sigma=2.0, seed=seed).reshape(*lead, 1, *shape)
    image = torch.cat([image, 0.5 * image + 0.1], dim=-ndim - 1)  # two channels
    index = torch.randint(0, len(LABEL_VALUES), (*lead, 1, *shape), generator=gen)
    label = torch.tensor(LABEL_VALUES)[index]
    flow = torch.randn(*lead, ndim, *shape, generator=gen)
    size = torch.tensor(shape[::-1], dtype=torch.float32)
    boxes = [torch.cat([0.2 * size, 0.7 * size])[None] + b for b in range(2)]
    points = [torch.rand(3, ndim, generator=gen) * (size - 1) for _ in range(2)]
    return Batch(
        image=image,
        label=label,
        target=image.clone(),
        flow=flow,
        boxes=boxes,
        points=points,
        kinds={"target": "spatial"},
        spacing=(1.0,) * (ndim - 1) + (1.5,),
        time_axis=timed,
    )


def assert_batches_equal(a: Batch, b: Batch) -> None:
    assert list(a) == list(b) and a.kinds == b.kinds
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert a[name].dtype == b[name].dtype, name
            assert torch.equal(a[name], b[name]), name
        else:
            assert len(a[name]) == len(b[name]), name
            for x, y in zip(a[name], b[name], strict=True):
                assert torch.equal(x, y), name


def test_every_public_transform_is_covered():
    assert PUBLIC, "no public transforms found"
    assert set(PUBLIC) == set(FACTORIES), "give every public transform a factory here"
    assert TWO_D_ONLY.issubset(FACTORIES)


CASES = [
    pytest.param(name, ndim, timed, id=f"{name}-{ndim}d{'-time' if timed else ''}")
    for name in sorted(FACTORIES)
    for ndim in (2, 3)
    for timed in (False, True)
]


@pytest.mark.parametrize(("name", "ndim", "timed"), CASES)
def test_common(name, ndim, timed):
    transform = FACTORIES[name](ndim)
    batch = make_batch(ndim, timed)
    if ndim == 3 and name in TWO_D_ONLY:
        with pytest.raises(ValueError, match="2D"):
            Compose([transform], seed=3)(batch)
        return
    out = Compose([transform], seed=3)(batch)

    # same seed: identical; replay of the trace: identical
    assert_batches_equal(out, Compose([FACTORIES[name](ndim)], seed=3)(batch))
    assert_batches_equal(out, Compose([transform]).replay(batch, out.trace))
    assert len(out.trace) == 1 and out.trace[0].transform is transform

    # shapes, dtypes, frames and kinds kept; nothing NaN
    step = out.trace[0]
    spatial = isinstance(transform, SpatialTransform)
    out_shape = transform.out_shape(step.in_shape, step.params) if spatial else step.in_shape
    assert out.spatial_shape == tuple(out_shape) and out.num_frames == batch.num_frames
    assert out.kinds == batch.kinds and out.time_axis == batch.time_axis
    for key in ("image", "label", "target", "flow"):
        assert out[key].shape[:-ndim] == batch[key].shape[:-ndim], key
        assert out[key].dtype == batch[key].dtype, key
    for key in ("image", "target", "flow"):
        assert not torch.isnan(out[key]).any(), key
    for key in ("boxes", "points"):
        assert all(not torch.isnan(v).any() for v in out[key]), key
    # label maps keep only their values
    assert set(torch.unique(out["label"]).tolist()) <= set(LABEL_VALUES)

    if isinstance(transform, IntensityTransform):
        # only images change: every other kind passes through untouched
        for key in ("label", "target", "flow"):
            assert out[key] is batch[key], key
        for key in ("boxes", "points"):
            assert all(torch.equal(x, y) for x, y in zip(out[key], batch[key], strict=True))
        assert not torch.equal(out["image"], batch["image"])
        return
    # a spatial map moves exactly as the image it copies
    assert torch.equal(out["target"], out["image"])
    if timed:  # every frame moved with the same parameters: as if one frame at a time
        for t in range(FRAMES):
            alone = Compose([transform]).replay(batch.frame(t), out.trace)
            assert_batches_equal(out.frame(t), alone)
