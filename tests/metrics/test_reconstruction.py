"""Reconstruction metrics: against fastMRI's own ``fastmri.evaluate`` and scikit-image, plus the
refusals (complex, shapes) and the summaries over cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medlens.metrics import (
    MetricInputError,
    mean_summary,
    nmse,
    paired_difference,
    psnr,
    reconstruction_summary,
    ssim,
)

TOL = 1e-6


def structured_volume(rng: np.random.Generator, shape=(4, 48, 40)) -> np.ndarray:
    """Ellipses of several intensities on a dark background, like a phantom stack."""
    s, h, w = shape
    y, x = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    vol = np.zeros(shape)
    for i in range(s):
        for _ in range(4):
            cy, cx, ry, rx = rng.uniform(-0.4, 0.4, 2).tolist() + rng.uniform(0.2, 0.6, 2).tolist()
            vol[i][((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1] += rng.uniform(0.2, 1.0)
    return vol


def volume_pair(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(target, output): a random or a structured volume and a degraded copy of it."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        target = rng.random((3, 32, 36))
        return target, target + 0.1 * rng.standard_normal(target.shape)
    target = structured_volume(rng)
    blurred = ndimage.gaussian_filter(target, (0, 1.2, 1.2))
    return target, np.abs(blurred + 0.02 * rng.standard_normal(target.shape))


@pytest.fixture(scope="module")
def fm():
    return pytest.importorskip("fastmri.evaluate")


# ---------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("maxval", [None, 2.5])
def test_agrees_with_fastmri(fm, kind, maxval):
    target, output = volume_pair(kind)
    assert nmse(target, output) == pytest.approx(float(fm.nmse(target, output)), rel=TOL, abs=TOL)
    expected_psnr = float(fm.psnr(target, output, maxval))
    assert psnr(target, output, maxval) == pytest.approx(expected_psnr, rel=TOL, abs=TOL)
    expected_ssim = float(fm.ssim(target, output, maxval)[0])
    assert ssim(target, output, maxval) == pytest.approx(expected_ssim, rel=TOL, abs=TOL)


def test_float32_inputs_agree_with_fastmri(fm):
    """fastMRI computes in float32 for float32 data; ours in float64: the same to ~1e-5."""
    target, output = (a.astype(np.float32) for a in volume_pair("structured", seed=3))
    assert nmse(target, output) == pytest.approx(float(fm.nmse(target, output)), rel=1e-5)
    assert psnr(target, output) == pytest.approx(float(fm.psnr(target, output)), rel=1e-5)
    assert ssim(target, output) == pytest.approx(float(fm.ssim(target, output)[0]), rel=1e-5)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_2d_against_scikit_image(kind):
    target, output = (a[1] for a in volume_pair(kind, seed=5))
    top = target.max()
    assert psnr(target, output) == pytest.approx(
        peak_signal_noise_ratio(target, output, data_range=top), rel=TOL, abs=TOL
    )
    assert ssim(target, output) == pytest.approx(
        structural_similarity(target, output, data_range=top), rel=TOL, abs=TOL
    )
    assert nmse(target, output) == pytest.approx(
        np.sum((target - output) ** 2) / np.sum(target**2), rel=TOL, abs=TOL
    )


def test_ssim_uses_the_volume_maximum_for_every_slice():
    target, output = volume_pair("structured", seed=1)
    target[0] *= 0.2  # a quiet edge slice
    output[0] *= 0.2
    per_slice_volume_max = [
        structural_similarity(t, o, data_range=target.max())
        for t, o in zip(target, output, strict=True)
    ]
    per_slice_own_max = [
        structural_similarity(t, o, data_range=t.max()) for t, o in zip(target, output, strict=True)
    ]
    assert ssim(target, output) == pytest.approx(np.mean(per_slice_volume_max), abs=TOL)
    assert abs(ssim(target, output) - np.mean(per_slice_own_max)) > 1e-3


def test_identical_images():
    target, _ = volume_pair("structured")
    assert nmse(target, target.copy()) == 0.0
    assert psnr(target, target.copy()) == math.inf
    assert ssim(target, target.copy()) == pytest.approx(1.0)


def test_torch_tensors_are_accepted():
    target, output = volume_pair("random")
    t, o = torch.from_numpy(target).float(), torch.from_numpy(output).float()
    expected = (nmse(target, output), psnr(target, output), ssim(target, output))
    got = (nmse(t, o), psnr(t, o), ssim(t, o))
    assert got == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("fn", [nmse, psnr, ssim])
@pytest.mark.parametrize("which", ["target", "output"])
def test_complex_is_refused(fn, which):
    target, output = volume_pair("random")
    if which == "target":
        target = target.astype(np.complex64)
    else:
        output = torch.from_numpy(output * np.exp(0.3j))
    with pytest.raises(ValueError, match="metrics compare magnitude images") as info:
        fn(target, output)
    assert isinstance(info.value, MetricInputError)
    assert which in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fn", [nmse, psnr, ssim])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"\(3, 32, 36\) and \(3, 36, 32\)"):
        fn(np.ones((3, 32, 36)), np.ones((3, 36, 32)))


def test_other_refusals():
    with pytest.raises(MetricInputError, match="SSIM takes"):
        ssim(np.ones((2, 2, 16, 16)), np.ones((2, 2, 16, 16)))
    with pytest.raises(MetricInputError, match="7 pixels"):
        ssim(np.ones((16, 5)), np.ones((16, 5)))
    with pytest.raises(MetricInputError, match="all zero"):
        nmse(np.zeros((8, 8)), np.ones((8, 8)))
    with pytest.raises(MetricInputError, match="data range must be positive"):
        psnr(np.zeros((8, 8)), np.ones((8, 8)))
    with pytest.raises(MetricInputError, match="maxval is -1"):
        ssim(np.ones((8, 8)), np.ones((8, 8)), maxval=-1)


# ---------------------------------------------------------------------------- over cases


def case_rows(n: int, seed: int = 0, offset: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"case{i:03d}",
            "psnr": 30.0 + offset + rng.normal(0, 2),
            "ssim": 0.8 + rng.normal(0, 0.05),
            "nmse": 0.02 + abs(rng.normal(0, 0.01)),
            "name": "not a metric",
        }
        for i in range(n)
    ]


def test_summary_reuses_mean_summary_and_intervals_contain_the_mean():
    rows = case_rows(30)
    summary = reconstruction_summary(rows, n_boot=500, seed=4)
    assert list(summary) == ["psnr", "ssim", "nmse"]  # id and text fields are not metrics
    for key, entry in summary.items():
        assert entry == mean_summary([r[key] for r in rows], n_boot=500, seed=4)
        assert entry["low"] < entry["mean"] < entry["high"]
        assert entry["n"] == 30 and entry["n_nan"] == 0


def test_summary_interval_narrows_with_more_cases():
    small = reconstruction_summary(case_rows(10, seed=1), n_boot=1000)["psnr"]
    large = reconstruction_summary(case_rows(160, seed=1), n_boot=1000)["psnr"]
    assert large["high"] - large["low"] < 0.6 * (small["high"] - small["low"])


def test_summary_counts_missing_values_and_takes_chosen_keys():
    rows = case_rows(6)
    rows[2]["ssim"] = None
    rows[3]["ssim"] = float("nan")
    out = reconstruction_summary(rows, n_boot=0, keys=["ssim"])
    assert list(out) == ["ssim"]
    assert out["ssim"]["n"] == 4 and out["ssim"]["n_nan"] == 2 and out["ssim"]["low"] is None
    with pytest.raises(MetricInputError, match="non-numeric"):
        reconstruction_summary(rows, keys=["name"])
    with pytest.raises(MetricInputError, match="no cases"):
        reconstruction_summary([])


def test_paired_difference_sign_and_pairing_by_id():
    ours = case_rows(25, seed=2, offset=3.0)
    zero_filled = case_rows(25, seed=3)
    expected = np.mean([a["psnr"] - b["psnr"] for a, b in zip(ours, zero_filled, strict=True)])
    zero_filled.reverse()  # pairing goes by id, not by position
    diff = paired_difference(ours, zero_filled, "psnr", n_boot=1000, seed=1)
    assert diff["key"] == "psnr" and diff["n"] == 25
    assert diff["mean"] == pytest.approx(expected)
    assert 0 < diff["low"] < diff["mean"] < diff["high"]  # ours is better, and it shows
    back = paired_difference(zero_filled, ours, "psnr", n_boot=1000, seed=1)
    assert back["mean"] == pytest.approx(-expected)
    assert back["high"] < 0


def test_paired_difference_errors():
    a, b = case_rows(5), case_rows(5)
    b[4]["id"] = "other"
    with pytest.raises(MetricInputError, match=r"differ.*case004.*other"):
        paired_difference(a, b, "psnr", 100, 0)
    with pytest.raises(MetricInputError, match="twice"):
        paired_difference(a + a[:1], case_rows(5), "psnr", 100, 0)
    del a[0]["id"]
    with pytest.raises(MetricInputError, match="row 0 of rows_a has no 'id'"):
        paired_difference(a, case_rows(5), "psnr", 100, 0)
    with pytest.raises(MetricInputError, match="not numeric"):
        paired_difference(case_rows(5), case_rows(5), "name", 100, 0)
