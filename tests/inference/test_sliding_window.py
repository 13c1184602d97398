"""Sliding-window inference: exact reconstruction, placement, weighting, TTA, ensembles, MONAI."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from medlens.inference import ensemble, gaussian_importance, sliding_window, window_starts


def identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def conv_net(ndim: int, channels: int = 2, classes: int = 3, seed: int = 0) -> nn.Module:
    """A small random network whose output depends on context (3x3 kernels, zero padding)."""
    torch.manual_seed(seed)
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return nn.Sequential(
        conv(channels, 4, 3, padding=1), nn.Tanh(), conv(4, classes, 3, padding=1)
    ).eval()


def pointwise_net(ndim: int, channels: int = 2, classes: int = 3) -> nn.Module:
    """A 1x1 convolution: its output at a voxel does not depend on where the window is."""
    torch.manual_seed(1)
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return conv(channels, classes, 1).eval()


# ------------------------------------------------------------------------ exact reconstruction
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize(
    ("shape", "roi"),
    [
        ((2, 3, 37, 50), (16, 16)),  # not multiples of the window
        ((1, 1, 64, 48), (16, 16)),  # multiples
        ((1, 2, 10, 40), (16, 12)),  # shorter than the window along one axis
        ((1, 1, 7, 5), (16, 16)),  # smaller than the window everywhere
        ((2, 1, 21, 18, 13), (8, 8, 8)),
        ((1, 2, 5, 30, 9), (8, 12, 8)),
    ],
)
@pytest.mark.parametrize("weighting", ["gaussian", "constant"])
def test_identity_predictor_reconstructs_input(shape, roi, overlap, weighting):
    torch.manual_seed(0)
    x = torch.randn(shape)
    y = sliding_window(x, identity, roi, overlap=overlap, batch_size=3, weighting=weighting)
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, x, atol=2e-6, rtol=1e-6)


def test_pointwise_network_equals_whole_image_prediction():
    x = torch.randn(2, 2, 40, 33, 19)
    net = pointwise_net(3)
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(sliding_window(x, net, (16, 16, 8)), expected, atol=1e-5, rtol=1e-5)


def test_batch_size_does_not_change_the_result():
    x = torch.randn(2, 2, 45, 38)
    net = conv_net(2)
    one = sliding_window(x, net, 16, overlap=0.5, batch_size=1)
    seven = sliding_window(x, net, 16, overlap=0.5, batch_size=7)
    torch.testing.assert_close(one, seven, atol=1e-6, rtol=1e-6)
    # Windows of both batch items share predictor calls; each item equals its own run.
    for b in range(2):
        alone = sliding_window(x[b : b + 1], net, 16, overlap=0.5, batch_size=7)
        torch.testing.assert_close(seven[b : b + 1], alone, atol=1e-6, rtol=1e-6)


def test_output_is_an_ordinary_tensor_and_inputs_are_untouched():
    x = torch.randn(1, 2, 20, 20)
    before = x.clone()
    y = sliding_window(x, conv_net(2), 12, out_dtype=torch.float64)
    assert y.dtype == torch.float64
    assert not y.is_inference() and not y.requires_grad
    y.add_(1)  # in-place use outside inference mode must work
    assert torch.equal(x, before)


def test_padding_is_centred():
    def ramp(batch: torch.Tensor) -> torch.Tensor:
        """The index of each voxel along the first axis, inside the window."""
        index = torch.arange(batch.shape[2], dtype=batch.dtype).view(1, 1, -1, 1)
        return index.expand(batch.shape[0], 1, -1, batch.shape[3]).clone()

    y = sliding_window(torch.zeros(1, 1, 10, 16), ramp, 16)
    # 6 voxels of padding: 3 before, 3 after, so the first real voxel is window voxel 3.
    assert y[0, 0, :, 0].tolist() == list(map(float, range(3, 13)))


def test_padding_value_reaches_the_predictor():
    seen: list[float] = []

    def record(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch[0, 0, 0, 0].item())
        return batch

    y = sliding_window(torch.zeros(1, 1, 4, 4), record, 8, padding_value=-7.0)
    assert seen == [-7.0] and y.shape == (1, 1, 4, 4) and torch.all(y == 0)


def test_deep_supervision_uses_the_first_output():
    x = torch.randn(1, 1, 30, 30)
    y = sliding_window(x, lambda b: (2 * b, b[:, :, ::2, ::2]), 16)
    torch.testing.assert_close(y, 2 * x, atol=1e-5, rtol=1e-6)


def test_bad_arguments_are_refused():
    x = torch.randn(1, 1, 20, 20)
    with pytest.raises(ValueError, match="must return"):
        sliding_window(x, lambda b: b[:, :, :8], 16)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(x, identity, 16, overlap=1.0)
    with pytest.raises(ValueError, match="weighting"):
        sliding_window(x, identity, 16, weighting="triangle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window(x, identity, (16, 16, 16))
    with pytest.raises(ValueError, match="mirror axis"):
        sliding_window(x, identity, 16, mirror_axes=(2,))
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window(x, identity, 16, batch_size=0)
    with pytest.raises(ValueError, match="non-empty"):
        sliding_window(x[:0], identity, 16)


# ---------------------------------------------------------------------------------- placement
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.6, 0.75, 0.9])
def test_window_starts_cover_every_voxel_and_reach_the_border(overlap):
    for roi in (1, 5, 16, 96):
        for size in range(1, 3 * roi + 11):
            starts = window_starts(size, roi, overlap)
            assert starts[0] == 0
            if size <= roi:
                assert starts == [0]
                continue
            step = max(roi * (1 - overlap), 1.0)
            assert starts[-1] == size - roi  # the last window ends at the border
            assert len(starts) == math.ceil((size - roi) / step - 1e-9) + 1
            gaps = [b - a for a, b in itertools.pairwise(starts)]
            assert min(gaps) >= 1 and max(gaps) <= math.ceil(step)  # covered, evenly spread
            assert max(gaps) - min(gaps) <= 1


def test_window_starts_examples():
    assert window_starts(192, 96, 0.5) == [0, 48, 96]
    assert window_starts(128, 96, 0.5) == [0, 32]
    assert window_starts(100, 16, 0.5) == [0, 8, 15, 23, 31, 38, 46, 53, 61, 69, 76, 84]
    assert window_starts(16, 16, 0.5) == [0]


# ---------------------------------------------------------------------------------- weighting
@pytest.mark.parametrize("roi", [(16, 16), (15, 17, 8), (96,), (1, 7)])
def test_gaussian_importance_properties(roi):
    g = gaussian_importance(roi)
    assert g.shape == roi and g.dtype == torch.float32
    assert g.max().item() == pytest.approx(1.0, abs=1e-7)
    assert g.min().item() > 0
    for axis in range(len(roi)):
        torch.testing.assert_close(g, g.flip(axis))  # symmetric about the centre
    centre = tuple(r // 2 for r in roi)
    assert g[centre].item() == pytest.approx(1.0, abs=1e-2)


def test_gaussian_importance_formula_and_floor():
    roi, scale = (33, 9), (0.125, 0.25)
    g = gaussian_importance(roi, scale, dtype=torch.float64)
    x = torch.arange(33, dtype=torch.float64) - 16
    y = torch.arange(9, dtype=torch.float64) - 4
    expected = torch.exp(-(x[:, None] ** 2) / (2 * (0.125 * 33) ** 2)) * torch.exp(
        -(y[None] ** 2) / (2 * (0.25 * 9) ** 2)
    )
    expected = expected.clamp(min=1e-3)  # odd sizes: the peak is already 1
    torch.testing.assert_close(g, expected)
    assert g.min().item() == pytest.approx(1e-3)


# ---------------------------------------------------------------------------- mirroring (TTA)
def test_mirroring_a_flip_equivariant_predictor_changes_nothing():
    x = torch.randn(1, 2, 30, 26, 20)
    net = pointwise_net(3)
    plain = sliding_window(x, net, (16, 16, 16))
    mirrored = sliding_window(x, net, (16, 16, 16), mirror_axes=(0, 1, 2))
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)


def _flip_average(predictor, batch: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Hand-written mirroring: the mean over all subsets of ``axes`` of flip(pred(flip(x)))."""
    outputs = []
    for k in range(len(axes) + 1):
        for subset in itertools.combinations(axes, k):
            dims = [a + 2 for a in subset]
            outputs.append(predictor(batch.flip(dims)).flip(dims))
    return torch.stack(outputs).mean(0)


def test_mirroring_averages_flipped_predictions():
    x = torch.randn(2, 2, 16, 12)
    net = conv_net(2)  # not flip-equivariant: random 3x3 kernels
    # One window covering the image: the result is the hand-computed average itself.
    with torch.no_grad():
        expected = _flip_average(net, x, (0, 1))
        assert not torch.allclose(expected, net(x), atol=1e-3)
    got = sliding_window(x, net, (16, 12), mirror_axes=(0, 1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Several windows: the same as a predictor that mirrors each window batch itself.
    x = torch.randn(1, 2, 40, 29)
    got = sliding_window(x, net, 16, mirror_axes=(1,), batch_size=3)
    with torch.no_grad():
        expected = sliding_window(x, lambda b: _flip_average(net, b, (1,)), 16, batch_size=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- ensembles
def test_ensemble_averages_softmax_of_the_folds_in_one_pass():
    x = torch.randn(1, 2, 37, 30, 18)
    folds = [conv_net(3, seed=s) for s in range(3)]
    calls: list[int] = []

    def counted(net: nn.Module):
        def run(batch: torch.Tensor) -> torch.Tensor:
            calls.append(batch.data_ptr())
            return net(batch)

        return run

    got = ensemble(x, [counted(f) for f in folds], (16, 16, 16), batch_size=4)
    windows = math.prod(len(window_starts(s, 16, 0.5)) for s in (37, 30, 18))
    assert windows == 4 * 3 * 2
    assert len(calls) == 3 * math.ceil(windows / 4)  # each window batch once per fold
    assert len(set(calls)) == 1  # all in the one preallocated batch tensor
    per_fold = [sliding_window(x, f, 16, activation="softmax") for f in folds]
    torch.testing.assert_close(got, torch.stack(per_fold).mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(1, 37, 30, 18), atol=1e-5, rtol=0)
    logits = ensemble(x, folds, 16, activation=None)
    expected = torch.stack([sliding_window(x, f, 16) for f in folds]).mean(0)
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-5)


def test_a_module_list_of_folds_is_a_sequence_of_predictors():
    x = torch.randn(1, 2, 20, 20)
    folds = nn.ModuleList([conv_net(2, seed=0), conv_net(2, seed=1)])
    got = sliding_window(x, folds, 12, activation="sigmoid", mirror_axes=(0,))
    expected = [sliding_window(x, f, 12, activation="sigmoid", mirror_axes=(0,)) for f in folds]
    torch.testing.assert_close(got, torch.stack(expected).mean(0), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------- MONAI oracle
def _monai(x, net, roi, overlap, mode, sigma_scale=0.125, batch_size=3):
    inferers = pytest.importorskip("monai.inferers")
    with torch.no_grad():
        return inferers.sliding_window_inference(
            x, roi, batch_size, net, overlap=overlap, mode=mode, sigma_scale=sigma_scale
        )


def test_gaussian_map_is_monais_up_to_a_constant():
    utils = pytest.importorskip("monai.data.utils")
    for roi in [(16, 16), (15, 17, 8), (96, 96, 96)]:
        theirs = utils.compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
        ratio = theirs / gaussian_importance(roi)
        torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.mean()), rtol=2e-6, atol=0)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [
        # size - roi a multiple of MONAI's step, or two windows per axis, or padding: the
        # placements agree, so the results must too.
        ((2, 2, 48, 40), (16, 16), 0.5),
        ((1, 2, 22, 10), (16, 16), 0.5),  # 2 windows along the first axis, padded second
        ((1, 2, 64, 52), (16, 16), 0.25),  # step 12
        ((1, 2, 28, 24), (16, 16), 0.75),  # step 4
        ((1, 2, 40, 24, 21), (16, 16, 16), 0.5),
        ((2, 2, 32, 24, 12), (16, 12, 8), 0.5),
    ],
)
def test_matches_monai_where_placements_agree(shape, roi, overlap, mode):
    torch.manual_seed(3)
    x = torch.randn(shape)
    net = conv_net(len(roi))
    ours = sliding_window(x, net, roi, overlap=overlap, weighting=mode, batch_size=3)
    torch.testing.assert_close(ours, _monai(x, net, roi, overlap, mode), atol=1e-5, rtol=1e-5)


def test_placement_differs_from_monai_only_where_documented():
    x = torch.randn(1, 2, 43, 16)
    roi = (16, 16)
    # 43 - 16 = 27 is no multiple of the step 8: MONAI starts at 0, 8, 16, 24, 27, medlens
    # spreads 5 windows evenly (0, 7, 14, 20, 27). A pointwise network cannot tell them apart...
    assert window_starts(43, 16, 0.5) == [0, 7, 14, 20, 27]
    net = pointwise_net(2)
    ours = sliding_window(x, net, roi, overlap=0.5)
    torch.testing.assert_close(ours, _monai(x, net, roi, 0.5, "gaussian"), atol=1e-5, rtol=1e-5)
    # ...a network with context can, but only where the windows differ.
    net = conv_net(2)
    ours = sliding_window(x, net, roi, overlap=0.5)
    theirs = _monai(x, net, roi, 0.5, "gaussian")
    assert not torch.allclose(ours, theirs, atol=1e-4)
    torch.testing.assert_close(ours[:, :, :7], theirs[:, :, :7], atol=1e-5, rtol=1e-5)


def test_progress_goes_to_stderr(capsys):
    sliding_window(torch.zeros(1, 1, 24, 24), identity, 16, batch_size=3, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "4/4 windows" in captured.err
