"""Classical reconstructions on a 64x64 Shepp-Logan phantom with a smooth phase and 4 birdcage
coils: exact at full sampling, the expected ordering at 4x, and the shape errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.metrics.reconstruction import psnr
from medlens.reconstruction.baselines import (
    BASELINES,
    DEFAULT_GRID,
    cs_tv,
    cs_wavelet,
    reconstruct_volume,
    sense,
    tune_lambda,
    zero_filled,
)
from medlens.reconstruction.coils import birdcage_maps, smooth_phase
from medlens.reconstruction.kspace import adjoint, fft2c
from medlens.reconstruction.masks import cartesian_mask

sp = pytest.importorskip("sigpy")

N = 64
FULL = np.ones(N, dtype=bool)
WAVELET_LAMDA, TV_LAMDA = 1e-3, 3e-3  # the best of a half-decade grid on this phantom


def kspace_of(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Fully sampled k-space ``(C, H, W)`` of a complex image, by sigpy's centred FFT."""
    return np.asarray(sp.fft(maps * image, axes=(-2, -1))).astype(np.complex64)


@pytest.fixture(scope="module")
def phantom() -> dict[str, np.ndarray]:
    magnitude = np.abs(sp.shepp_logan((N, N))).astype(np.float32)
    magnitude /= magnitude.max()
    image = (magnitude * np.exp(1j * smooth_phase((N, N), np.random.default_rng(0)))).astype(
        np.complex64
    )
    maps = birdcage_maps(4, (N, N))
    return {"magnitude": magnitude, "image": image, "maps": maps, "kspace": kspace_of(image, maps)}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_sigpy_fft_is_the_kspace_convention(phantom):
    coil_images = torch.from_numpy(phantom["maps"] * phantom["image"])
    assert rel_error(phantom["kspace"], fft2c(coil_images).numpy()) < 1e-6


# ---------------------------------------------------------------------------- full sampling


def test_fully_sampled_zero_filled_and_sense_recover_the_image(phantom):
    k, maps, image = phantom["kspace"], phantom["maps"], phantom["image"]
    for out in (zero_filled(k, FULL, maps), sense(k, FULL, maps)):
        assert out.shape == (N, N) and out.dtype == np.complex64
        assert rel_error(out, image) < 1e-4
    rss = zero_filled(k, FULL)  # the birdcage maps have a root sum of squares of 1
    assert rss.dtype == np.complex64 and np.all(rss.imag == 0)
    assert rel_error(rss.real, phantom["magnitude"]) < 1e-4


def test_zero_filled_is_the_normalised_adjoint(phantom):
    k, maps = phantom["kspace"], phantom["maps"]
    mask = cartesian_mask(N, 4, seed=1)
    expected = adjoint(torch.from_numpy(k), torch.from_numpy(maps), torch.from_numpy(mask))
    assert rel_error(zero_filled(k, mask, maps), expected.numpy()) < 1e-6
    reordered = zero_filled(k[::-1], mask, maps[::-1])  # coils reversed: a negative-stride view
    assert rel_error(reordered, expected.numpy()) < 1e-6


# ---------------------------------------------------------------------------- 4x undersampling


@pytest.mark.parametrize("kind", ["random", "equispaced"])
def test_at_4x_every_baseline_beats_zero_filled(phantom, kind):
    """Measured (random / equispaced): zero-filled 16.5 / 16.7 dB, SENSE +3.0 / +3.4,
    L1-wavelet +6.3 / +6.5, TV +18.9 / +17.2 (TV suits a piecewise-constant phantom)."""
    k, maps, target = phantom["kspace"], phantom["maps"], phantom["magnitude"]
    mask = cartesian_mask(N, 4, kind, seed=0)
    scores = {
        "zero_filled": psnr(target, np.abs(zero_filled(k, mask, maps))),
        "sense": psnr(target, np.abs(sense(k, mask, maps))),
        "cs_wavelet": psnr(target, np.abs(cs_wavelet(k, mask, maps, lamda=WAVELET_LAMDA))),
        "cs_tv": psnr(target, np.abs(cs_tv(k, mask, maps, lamda=TV_LAMDA))),
    }
    assert scores["zero_filled"] < 20.0, scores
    assert scores["sense"] > scores["zero_filled"] + 2.0, scores
    assert scores["cs_wavelet"] > scores["zero_filled"] + 4.0, scores
    assert scores["cs_tv"] > scores["zero_filled"] + 10.0, scores


def test_single_coil_without_maps(phantom):
    image, target = phantom["image"], phantom["magnitude"]
    k = kspace_of(image, np.ones((1, N, N), np.complex64))[0]  # (H, W): one coil
    mask = cartesian_mask(N, 4, seed=0)
    zf = zero_filled(k, mask)
    assert rel_error(zero_filled(k, FULL), image) < 1e-4  # one coil keeps its phase
    assert rel_error(sense(k, FULL, None), image) < 1e-4
    # one coil: least squares is the zero-filled image (CG must stop there, not blow up)
    assert rel_error(sense(k, mask, None), zf) < 1e-4
    tv = cs_tv(k[None], mask, None, lamda=TV_LAMDA)
    wavelet = cs_wavelet(k, mask, None, lamda=WAVELET_LAMDA)
    assert tv.shape == wavelet.shape == (N, N)
    assert psnr(target, np.abs(tv)) > psnr(target, np.abs(zf)) + 5.0  # measured +13.6 dB


def test_deterministic_and_leaves_numpys_global_random_state_alone(phantom):
    k, maps = phantom["kspace"], phantom["maps"]
    mask = cartesian_mask(N, 4, seed=0)
    before = np.random.get_state()[1].copy()
    first = cs_wavelet(k, mask, maps, lamda=WAVELET_LAMDA, iterations=20)
    second = cs_tv(k, mask, maps, lamda=TV_LAMDA, iterations=20)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    np.testing.assert_array_equal(cs_wavelet(k, mask, maps, lamda=WAVELET_LAMDA, iterations=20),
                                  first)  # fmt: skip
    np.testing.assert_array_equal(cs_tv(k, mask, maps, lamda=TV_LAMDA, iterations=20), second)


@pytest.mark.parametrize(
    ("name", "lamda_factor"), [("sense", 1), ("cs_wavelet", 10), ("cs_tv", 10)]
)
def test_scale_equivariant(phantom, name, lamda_factor):
    """k-space times 10 gives the image times 10, with SENSE's L2 lamda unchanged and the CS
    methods' L1 lamda times 10: only lamda depends on the intensity scale."""
    k, maps = phantom["kspace"], phantom["maps"]
    mask = cartesian_mask(N, 4, seed=0)
    fn = BASELINES[name]
    small = fn(k, mask, maps, lamda=1e-3, iterations=20)
    large = fn(10 * k, mask, maps, lamda=1e-3 * lamda_factor, iterations=20)
    assert rel_error(large, 10 * small) < 1e-4


# ---------------------------------------------------------------------------- volumes and tuning


@pytest.fixture(scope="module")
def volume(phantom) -> dict[str, np.ndarray]:
    """Two slices: the phantom and its mirror image at 0.8 of the intensity."""
    images = np.stack([phantom["image"], 0.8 * phantom["image"][:, ::-1]])
    maps = phantom["maps"]
    kspace = np.stack([kspace_of(x, maps) for x in images])
    return {"kspace": kspace, "targets": np.abs(images), "maps": maps}


@pytest.mark.parametrize("per_slice_maps", [False, True])
@pytest.mark.parametrize(
    ("name", "params"), [("zero_filled", {}), ("cs_tv", {"lamda": 3e-3, "iterations": 20})]
)
def test_reconstruct_volume_equals_slice_by_slice(volume, name, params, per_slice_maps):
    k, maps = volume["kspace"], volume["maps"]
    mask = cartesian_mask(N, 4, seed=0)
    volume_maps = np.stack([maps, maps]) if per_slice_maps else maps
    out = reconstruct_volume(name, k, mask, volume_maps, **params)
    assert out.shape == (2, N, N) and out.dtype == np.complex64
    for i in range(2):
        np.testing.assert_array_equal(out[i], BASELINES[name](k[i], mask, maps, **params))


def test_reconstruct_volume_without_maps_is_root_sum_of_squares(volume):
    out = reconstruct_volume("zero_filled", volume["kspace"], FULL, None)
    assert rel_error(out.real, volume["targets"]) < 1e-4


def test_tune_lambda_picks_the_best_grid_value(volume):
    k, targets, maps = volume["kspace"], volume["targets"], volume["maps"]
    mask = cartesian_mask(N, 4, seed=0)
    best, table = tune_lambda("cs_tv", k, targets, mask, maps)
    assert list(table) == list(DEFAULT_GRID) and best in DEFAULT_GRID
    assert table[best] == max(table.values())
    assert best == pytest.approx(TV_LAMDA, rel=0.1)  # 3.16e-3: the grid point nearest 3e-3
    zf = np.mean(
        [psnr(t, np.abs(zero_filled(x, mask, maps))) for x, t in zip(k, targets, strict=True)]
    )
    assert table[best] > zf + 10.0
    best, table = tune_lambda(
        "cs_wavelet", k, targets, mask, maps, grid=[1e-1, 1e-3], iterations=30
    )
    assert list(table) == [1e-3, 1e-1] and best == 1e-3


def test_tune_lambda_refusals(volume):
    k, targets, maps = volume["kspace"], volume["targets"], volume["maps"]
    with pytest.raises(MedlensError, match="no lamda"):
        tune_lambda("zero_filled", k, targets, FULL, maps)
    with pytest.raises(MedlensError, match="none negative"):
        tune_lambda("sense", k, targets, FULL, maps, grid=[-1.0])
    with pytest.raises(MedlensError, match="targets of shape"):
        tune_lambda("sense", k, targets[:1], FULL, maps)


# ---------------------------------------------------------------------------- errors


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_shape_errors(phantom, name):
    k, maps = phantom["kspace"], phantom["maps"]
    fn = BASELINES[name]
    kw = {"lamda": 1e-3} if name.startswith("cs") else {}
    with pytest.raises(MedlensError) as info:
        fn(k, np.ones(N - 1, bool), maps, **kw)
    assert "(63,)" in one_line(info) and "(64,)" in one_line(info)
    with pytest.raises(MedlensError) as info:
        fn(k, FULL, maps[:, :32, :32], **kw)
    assert "(4, 32, 32)" in one_line(info) and "(4, 64, 64)" in one_line(info)
    with pytest.raises(MedlensError) as info:
        fn(k[None], FULL, maps, **kw)
    assert "(1, 4, 64, 64)" in one_line(info)
    if name != "zero_filled":
        with pytest.raises(MedlensError, match="needs coil maps"):
            fn(k, FULL, None, **kw)


def test_volume_errors(volume):
    k, maps = volume["kspace"], volume["maps"]
    with pytest.raises(MedlensError, match="unknown baseline 'grappa'"):
        reconstruct_volume("grappa", k, FULL, maps)
    with pytest.raises(MedlensError, match=r"\(slices, coils, H, W\)"):
        reconstruct_volume("sense", k[0], FULL, maps)
    with pytest.raises(MedlensError, match=r"\(3, 4, 64, 64\)"):
        reconstruct_volume("sense", k, FULL, np.stack([maps] * 3))


def test_missing_sigpy_says_how_to_install(phantom, monkeypatch):
    monkeypatch.setitem(sys.modules, "sigpy", None)
    monkeypatch.setitem(sys.modules, "sigpy.mri", None)
    with pytest.raises(MedlensError, match=r"^SENSE needs sigpy: pip install 'medlens\[recon\]'$"):
        sense(phantom["kspace"], FULL, phantom["maps"])
    assert zero_filled(phantom["kspace"], FULL, phantom["maps"]).shape == (N, N)  # no sigpy
