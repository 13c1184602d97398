"""The native resampling kernels against torch's ``grid_sample`` and the exact index path."""

from __future__ import annotations

import pytest
import torch

from medlens.transforms import _native, _warp

pytestmark = pytest.mark.skipif(not _native.available(), reason="no C compiler on this machine")


def _random_pull(generator, batch: int, n: int, strength: float, shift: float) -> torch.Tensor:
    matrix = torch.eye(n + 1, dtype=torch.float64).repeat(batch, 1, 1)
    matrix[:, :n, :n] += (
        torch.rand(batch, n, n, generator=generator, dtype=torch.float64) - 0.5
    ) * (strength)
    matrix[:, :n, n] = (
        torch.rand(batch, n, generator=generator, dtype=torch.float64) - 0.5
    ) * shift
    return matrix


def _cases(n: int, count: int = 12):
    generator = torch.Generator().manual_seed(n)
    for k in range(count):
        in_shape = tuple(int(s) for s in torch.randint(2, 30, (n,), generator=generator))
        out_shape = tuple(int(s) for s in torch.randint(1, 30, (n,), generator=generator))
        channels = 1 + k % 3
        big = k % 3 == 0  # much of the output falls outside the input: borders everywhere
        pull = _random_pull(generator, 2, n, 0.8 if big else 0.3, 30.0 if big else 4.0)
        yield generator, in_shape, out_shape, channels, pull


@pytest.mark.parametrize("n", [2, 3])
def test_linear_equals_grid_sample(n):
    for generator, in_shape, out_shape, channels, pull in _cases(n):
        x = torch.randn(2, channels, *in_shape, generator=generator)
        native = _native.warp(x, pull, out_shape, "linear")
        reference = _warp.warp_coords(x, _warp.affine_coords(pull, out_shape))
        assert native is not None and native.shape == reference.shape
        torch.testing.assert_close(native, reference, atol=5e-5, rtol=0, msg=str(in_shape))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64, torch.float32])
def test_nearest_copies_values_and_matches_grid_sample(n, dtype):
    for generator, in_shape, out_shape, channels, pull in _cases(n, 6):
        labels = torch.randint(0, 9, (2, channels, *in_shape), generator=generator).to(dtype)
        native = _native.warp(labels, pull, out_shape, "nearest")
        reference = _warp.warp_coords(labels, _warp.affine_coords(pull, out_shape), mode="nearest")
        assert native.dtype == dtype
        assert set(native.unique().tolist()) <= set(labels.unique().tolist()) | {0}
        # exact halves round up here and to even in grid_sample: only such ties may differ
        assert float((native != reference).float().mean()) < 2e-3


def test_flips_and_integer_shifts_equal_the_exact_path():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 20, 18, 16, generator=generator)
    label = torch.randint(0, 5, (2, 1, 20, 18, 16), generator=generator)
    flip = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    flip[:, 0, 0] = -1.0
    flip[:, :3, 3] = torch.tensor([[15.0, 2.0, -3.0], [12.0, 0.0, 5.0]], dtype=torch.float64)
    exact = _warp.index_warp(image, flip, (20, 18, 16))
    torch.testing.assert_close(
        _native.warp(image, flip, (20, 18, 16), "linear"), exact, atol=1e-6, rtol=0
    )
    assert torch.equal(
        _native.warp(label, flip, (20, 18, 16), "nearest"),
        _warp.index_warp(label, flip, (20, 18, 16)),
    )


def test_thread_count_does_not_change_the_result():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, 17, 23, 29, generator=generator)
    pull = _random_pull(generator, 3, 3, 0.4, 6.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _native.warp(x, pull, (19, 21, 35), "linear")
        torch.set_num_threads(3)
        three = _native.warp(x, pull, (19, 21, 35), "linear")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


def test_paths_it_does_not_take_fall_back():
    x = torch.rand(1, 1, 8, 8, 8)
    pull = torch.eye(4).unsqueeze(0)
    assert _native.warp(x.double(), pull, (8, 8, 8), "linear") is None  # float32 only
    assert _native.warp(x.requires_grad_(), pull, (8, 8, 8), "linear") is None  # autograd
    assert _native.warp(torch.rand(1, 1, 8), pull[:, :2, :2], (8,), "linear") is None  # 1D


def test_warp_affine_uses_it_and_disabling_gives_the_same(monkeypatch):
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 24, 24, 24, generator=generator)
    pull = _random_pull(generator, 2, 3, 0.3, 4.0)
    calls = []
    original = _native.warp
    monkeypatch.setattr(_native, "warp", lambda *a, **k: calls.append(1) or original(*a, **k))
    fast = _warp.warp_affine(x, pull)
    assert calls
    monkeypatch.setitem(_native.STATE, "disabled", True)
    torch.testing.assert_close(fast, _warp.warp_affine(x, pull), atol=5e-5, rtol=0)


def test_build_is_cached_by_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path))
    first = _native._build()
    assert first.parent == tmp_path / "native" and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert _native._build() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert list(first.parent.iterdir()) == [first]  # no temporary files left behind
