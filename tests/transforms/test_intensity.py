"""Intensity transforms: the common contract for every one, then each against an oracle.

The contract (shape, dtype, no NaN on constant images, labels untouched, seed determinism, exact
identity at ``p=0``, replay, 2D and 3D, CUDA equal to CPU) runs over ``TRANSFORMS``; the oracles
are SciPy's ``gaussian_filter`` and direct NumPy formulas.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medlens.transforms import _filters
from medlens.transforms.base import Compose
from medlens.transforms.batch import Batch
from medlens.transforms.intensity import (
    BiasField,
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
    Sharpen,
    ZScore,
)
from medlens.transforms.spatial import RandomAffine, RandomCrop, RandomFlip

SHAPES = {2: (20, 24), 3: (12, 14, 16)}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TRANSFORMS = {
    "blur": lambda p: GaussianBlur((0.5, 1.5), p),
    "blur_axes": lambda p: GaussianBlur((0.2, 2.5), p, per_axis=True, mode="reflect"),
    "sharpen": lambda p: Sharpen((0.5, 1.5), (0.5, 1.5), p),
    "gamma": lambda p: Gamma((0.7, 1.5), p),
    "gamma_inverted": lambda p: Gamma((0.7, 1.5), p, invert=True, retain_stats=True),
    "contrast": lambda p: Contrast((0.75, 1.25), p),
    "contrast_free": lambda p: Contrast((0.5, 1.5), p, preserve_range=False),
    "brightness": lambda p: Brightness((-0.1, 0.1), p),
    "brightness_mul": lambda p: Brightness((-0.2, 0.2), p, multiplicative=True),
    "bias": lambda p: BiasField(0.5, 3, p),
    "low_res": lambda p: LowResolution((0.5, 0.9), p),
    "low_res_area": lambda p: LowResolution(
        (0.4, 0.9), p, per_axis=True, downsample="area", upsample="linear"
    ),
    "noise": lambda p: GaussianNoise(0.1, p=p),
}
NAMES = sorted(TRANSFORMS)


def make_batch(ndim: int, batch: int = 4, channels: int = 2, seed: int = 0, constant=None):
    """Image (smooth plus noise, channels on different scales) and an integer label map."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *SHAPES[ndim])
    if constant is not None:
        image = torch.full(shape, float(constant))
    else:
        image = torch.rand(shape, generator=gen) + torch.linspace(0, 1, shape[-1])
        image = image * torch.arange(1, channels + 1).view(1, -1, *([1] * ndim)) * 50 - 20
    label = torch.randint(0, 4, (batch, 1, *SHAPES[ndim]), generator=gen)
    return Batch(image=image, label=label)


def run(transform, batch: Batch, seed: int = 0) -> Batch:
    return Compose([transform], seed=seed)(batch)


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name, ndim):
    batch = make_batch(ndim)
    transform = TRANSFORMS[name](1.0)
    out = run(transform, batch, seed=3)
    image = out["image"]
    assert image.shape == batch["image"].shape and image.dtype == batch["image"].dtype
    assert torch.isfinite(image).all()
    assert not torch.equal(image, batch["image"])
    assert torch.equal(out["label"], batch["label"])  # labels pass through untouched
    assert torch.equal(run(transform, batch, seed=3)["image"], image)  # same seed, same output
    assert not torch.equal(run(transform, batch, seed=4)["image"], image)
    replayed = Compose([]).replay(batch, out.trace)
    assert torch.equal(replayed["image"], image)
    params = out.trace[-1].params
    assert params["applied"].dtype == torch.bool and params["applied"].shape == (4,)
    for value in params.values():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "cpu" and value.shape[0] == 4


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_constant_images_stay_finite(name, ndim):
    batch = make_batch(ndim, constant=7.0)
    image = run(TRANSFORMS[name](1.0), batch)["image"]
    assert torch.isfinite(image).all()
    if name not in ("noise", "brightness", "brightness_mul", "bias"):
        torch.testing.assert_close(image, batch["image"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_p_zero_is_exact_identity(name):
    batch = make_batch(3)
    batch["image"][0, 0, 0, 0, 0] = -0.0
    out = run(TRANSFORMS[name](0.0), batch)
    assert torch.equal(out["image"], batch["image"])
    if name != "noise":  # bit for bit (GaussianNoise adds 0 * noise, turning -0.0 into 0.0)
        assert torch.equal(out["image"].view(torch.int32), batch["image"].view(torch.int32))


@pytest.mark.parametrize("name", NAMES)
def test_partial_application_matches_per_sample(name):
    """With p = 0.5 the applied samples get what applying to them alone gives; others unchanged."""
    batch = make_batch(2, batch=8)
    transform = TRANSFORMS[name](0.5)
    out = run(transform, batch, seed=11)
    params = out.trace[-1].params
    applied = params["applied"]
    assert 0 < int(applied.sum()) < 8
    assert torch.equal(out["image"][~applied], batch["image"][~applied])
    forced = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in params.items()}
    forced["applied"] = torch.ones(8, dtype=torch.bool)
    full = transform.apply(batch, forced)["image"]
    torch.testing.assert_close(out["image"][applied], full[applied], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_several_image_fields(name):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, *SHAPES[3], generator=gen, dtype=torch.float64)
    other = torch.rand(2, 3, *SHAPES[3], generator=gen) * 100
    batch = Batch(image=image, other=other, kinds={"other": "image"})
    out = run(TRANSFORMS[name](1.0), batch)
    assert out["image"].dtype == torch.float64 and out["other"].dtype == torch.float32
    assert out["other"].shape == other.shape
    assert not torch.equal(out["other"], other)


@CUDA
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name, ndim):
    batch = make_batch(ndim)
    transform = TRANSFORMS[name](0.7)
    cpu = run(transform, batch, seed=5)
    gpu = Compose([]).replay(batch.to("cuda"), cpu.trace)
    assert gpu["image"].device.type == "cuda"
    if name == "noise":  # CUDA and CPU generators differ; the statistics do not
        difference = gpu["image"].cpu() - batch["image"]
        applied = cpu.trace[-1].params["applied"]
        assert float(difference[applied].std()) == pytest.approx(0.1, rel=0.1)
        return
    torch.testing.assert_close(gpu["image"].cpu(), cpu["image"], rtol=1e-4, atol=1e-3)
    assert torch.equal(gpu["label"].cpu(), batch["label"])


def test_chain_with_spatial_transforms_replays():
    """Intensity steps between spatial ones (and after a crop): replay gives the same batch."""
    batch = make_batch(3, batch=3)
    chain = Compose(
        [
            RandomCrop((10, 12, 12)),
            GaussianBlur(p=0.5),
            RandomAffine(rotate=10, scale=0.1),
            LowResolution(p=0.5),
            RandomFlip(axes=(0, 1)),
            BiasField(p=0.5),
            Gamma(p=0.5),
        ],
        seed=7,
    )
    out = chain(batch)
    assert out["image"].shape == (3, 2, 10, 12, 12) and torch.isfinite(out["image"]).all()
    assert set(out["label"].unique().tolist()) <= {0, 1, 2, 3}
    replayed = Compose([]).replay(batch, out.trace)
    assert torch.equal(replayed["image"], out["image"])
    assert torch.equal(replayed["label"], out["label"])


def test_zscore_unchanged():
    out = run(ZScore(), make_batch(3))["image"]
    torch.testing.assert_close(out.mean(dim=(2, 3, 4)), torch.zeros(4, 2), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- Gaussian filters
@pytest.mark.parametrize("mode", _filters.MODES)
@pytest.mark.parametrize(
    "shape", [(3, 2, 9, 17, 20), (3, 1, 31, 40), (2, 1, 5, 300), (2, 1, 270, 6)]
)
def test_gaussian_blur_matches_scipy(shape, mode):
    """Per-sample sigmas, wide kernels on short axes, the long-axis fallback (300 voxels)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.7, 2.9, 1.3])[: shape[0]]
    out = _filters.gaussian_blur(x, sigma, mode=mode)
    for b, c in itertools.product(range(shape[0]), range(shape[1])):
        want = ndimage.gaussian_filter(x[b, c].numpy(), float(sigma[b]), mode=mode)
        np.testing.assert_allclose(out[b, c].numpy(), want, atol=1e-12)


def test_gaussian_blur_per_axis_and_truncate_match_scipy():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 10, 15, 12, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([[0.0, 1.2, 3.0], [0.4, 0.9, 2.0]])
    out = _filters.gaussian_blur(x, sigma, truncate=2.5)
    for b in range(2):
        want = ndimage.gaussian_filter(
            x[b, 0].numpy(), sigma[b].tolist(), truncate=2.5, mode="nearest"
        )
        np.testing.assert_allclose(out[b, 0].numpy(), want.astype(np.float64), atol=1e-12)
    assert torch.equal(_filters.gaussian_blur(x, torch.zeros(2)), x)


def test_gaussian_blur_transform_matches_scipy_float32():
    batch = make_batch(3, batch=3, channels=1)
    out = run(GaussianBlur((0.5, 2.0), mode="mirror"), batch)
    sigma = out.trace[-1].params["sigma"]
    for b in range(3):
        want = ndimage.gaussian_filter(
            batch["image"][b, 0].double().numpy(), float(sigma[b, 0]), mode="mirror"
        )
        np.testing.assert_allclose(out["image"][b, 0].numpy(), want, rtol=1e-5, atol=1e-4)


def test_band_matrices_rows_sum_to_one():
    kernels = _filters.gaussian_kernels(torch.tensor([0.5, 1.0, 6.0]))
    for mode in ("nearest", "reflect", "mirror"):
        rows = _filters.band_matrices(kernels, 7, mode).sum(dim=-1)
        torch.testing.assert_close(rows, torch.ones(3, 7, dtype=torch.float64))


def test_sharpen_matches_unsharp_mask():
    batch = make_batch(3, batch=2, channels=2)
    out = run(Sharpen((0.5, 1.5), 1.0), batch)
    amount = out.trace[-1].params["amount"]
    for b, c in itertools.product(range(2), range(2)):
        x = batch["image"][b, c].double().numpy()
        want = x + float(amount[b]) * (x - ndimage.gaussian_filter(x, 1.0, mode="nearest"))
        np.testing.assert_allclose(out["image"][b, c].numpy(), want, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- point operations
@pytest.mark.parametrize("invert", [False, True])
def test_gamma_formula_and_range(invert):
    batch = make_batch(2, batch=3)
    out = run(Gamma((0.5, 2.0), invert=invert), batch)
    gamma = out.trace[-1].params["gamma"]
    for b, c in itertools.product(range(3), range(2)):
        x = batch["image"][b, c].double().numpy()
        low, high = x.min(), x.max()
        u = (x - low) / (high - low)
        u = 1 - (1 - u) ** float(gamma[b]) if invert else u ** float(gamma[b])
        got = out["image"][b, c].numpy()
        np.testing.assert_allclose(got, u * (high - low) + low, rtol=1e-5, atol=1e-3)
        assert got.min() == pytest.approx(low, abs=1e-4)
        assert got.max() == pytest.approx(high, abs=1e-4)


def test_gamma_retain_stats_keeps_mean_and_std():
    batch = make_batch(3, batch=2)
    image = run(Gamma((0.5, 2.0), retain_stats=True), batch)["image"]
    dims = (2, 3, 4)
    torch.testing.assert_close(image.mean(dims), batch["image"].mean(dims), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(image.std(dims), batch["image"].std(dims), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("preserve_range", [True, False])
def test_contrast_formula(preserve_range):
    batch = make_batch(2, batch=3)
    out = run(Contrast((0.5, 1.5), preserve_range=preserve_range), batch)
    factor = out.trace[-1].params["factor"]
    for b, c in itertools.product(range(3), range(2)):
        x = batch["image"][b, c].double().numpy()
        want = (x - x.mean()) * float(factor[b]) + x.mean()
        if preserve_range:
            want = want.clip(x.min(), x.max())
        np.testing.assert_allclose(out["image"][b, c].numpy(), want, rtol=1e-5, atol=1e-3)


def test_brightness_additive_and_multiplicative():
    batch = make_batch(2, batch=3)
    for multiplicative in (False, True):
        out = run(Brightness((-0.3, 0.3), multiplicative=multiplicative), batch)
        delta = out.trace[-1].params["delta"].float().view(3, 1, 1, 1)
        x = batch["image"]
        want = x * (1 + delta) if multiplicative else x + delta
        torch.testing.assert_close(out["image"], want)
    fixed = run(Brightness(0.25), batch)["image"]
    torch.testing.assert_close(fixed, batch["image"] + 0.25)


# ----------------------------------------------------------------------------- bias field
def test_monomials():
    assert _filters.monomials(0, 3) == [(0, 0, 0)]
    assert len(_filters.monomials(3, 3)) == 20 and len(_filters.monomials(3, 2)) == 10
    assert all(sum(e) <= 3 for e in _filters.monomials(3, 3))


@pytest.mark.parametrize("ndim", [2, 3])
def test_bias_field_is_the_exponentiated_polynomial(ndim):
    batch = make_batch(ndim, batch=2)
    out = run(BiasField(0.4, order=2), batch)
    coefficients = out.trace[-1].params["coefficients"].numpy()
    exponents = _filters.monomials(2, ndim)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPES[ndim]], indexing="ij")
    for b in range(2):
        log_field = sum(
            c * np.prod([g**e for g, e in zip(grids, exponent, strict=True)], axis=0)
            for c, exponent in zip(coefficients[b], exponents, strict=True)
        )
        want = batch["image"][b].double().numpy() * np.exp(log_field)
        np.testing.assert_allclose(out["image"][b].numpy(), want, rtol=1e-4, atol=1e-3)


def test_bias_field_order_zero_scales_uniformly():
    batch = make_batch(3, batch=2)
    out = run(BiasField((-0.5, 0.5), order=0), batch)
    scale = torch.exp(out.trace[-1].params["coefficients"][:, 0]).float().view(2, 1, 1, 1, 1)
    torch.testing.assert_close(out["image"], batch["image"] * scale)


# ----------------------------------------------------------------------------- low resolution
def _cubic_along(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """1D cubic resize along one axis through bicubic with a dummy axis of length one."""
    moved = x.movedim(axis, -1)
    flat = moved.reshape(-1, 1, 1, moved.shape[-1])
    out = F.interpolate(flat, size=(1, size), mode="bicubic")
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis)


def _upsample(x: torch.Tensor, shape, mode: str) -> torch.Tensor:
    if mode == "linear":
        return F.interpolate(x, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear")
    for axis, size in enumerate(shape, start=2):
        x = _cubic_along(x, axis, size)
    return x


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    ("downsample", "upsample"), [("nearest", "linear"), ("nearest", "cubic"), ("area", "linear")]
)
def test_low_resolution_matches_interpolate(ndim, downsample, upsample):
    """Per sample: F.interpolate down to round(size * zoom), back up to the size."""
    batch = make_batch(ndim, batch=3)
    transform = LowResolution((0.3, 0.9), per_axis=True, downsample=downsample, upsample=upsample)
    out = run(transform, batch)
    zoom = out.trace[-1].params["zoom"]
    shape = SHAPES[ndim]
    for b in range(3):
        size = [max(1, round(s * float(z))) for s, z in zip(shape, zoom[b], strict=True)]
        x = batch["image"][b : b + 1].double()
        down = "nearest-exact" if downsample == "nearest" else "area"
        want = _upsample(F.interpolate(x, size=size, mode=down), shape, upsample)
        torch.testing.assert_close(out["image"][b : b + 1], want.float(), rtol=1e-5, atol=1e-4)
        assert not torch.equal(out["image"][b], batch["image"][b])


def test_low_resolution_zoom_one_is_identity():
    batch = make_batch(3)
    out = run(LowResolution(1.0, upsample="cubic"), batch)
    assert torch.equal(out["image"], batch["image"])


def test_resize_matrix_is_interpolate():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 17, generator=gen, dtype=torch.float64)
    for mode, torch_mode in (("nearest", "nearest-exact"), ("area", "area"), ("linear", "linear")):
        for size in (5, 11, 17, 30):
            matrix = _filters.resize_matrix(17, size, mode, torch.float64)
            want = F.interpolate(x, size=size, mode=torch_mode)
            torch.testing.assert_close(x @ matrix.T, want)
    torch.testing.assert_close(
        x @ _filters.resize_matrix(17, 23, "cubic").double().T,
        _cubic_along(x, 2, 23),
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianBlur(-1.0),
        lambda: GaussianBlur(1.0, mode="wrap"),
        lambda: Gamma(0.0),
        lambda: Gamma((1.5, 0.7)),
        lambda: Contrast(-0.5),
        lambda: BiasField(0.5, order=-1),
        lambda: LowResolution(0.0),
        lambda: LowResolution((0.5, 1.5)),
        lambda: LowResolution(0.5, upsample="nearest"),
        lambda: Sharpen(-1.0),
        lambda: Sharpen(1.0, mode="wrap"),
    ],
)
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make()
