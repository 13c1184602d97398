"""Sequence models: shapes in 2D+t and 3D+t, what each output may depend on, and learning."""

from __future__ import annotations

import pytest
import torch

from medlens.models import ConvRNN, SequenceNet, TemporalUNet, create_model


@pytest.mark.parametrize("temporal", ["gru", "lstm", "conv", "none"])
def test_temporal_unet_keeps_time_and_space(temporal):
    model = create_model("temporal-unet", spatial_dims=2, in_channels=1, num_classes=3,
                         features=(8, 16, 32), temporal=temporal)  # fmt: skip
    assert model(torch.randn(2, 5, 1, 24, 32)).shape == (2, 5, 3, 24, 32)


def test_temporal_unet_in_3d():
    model = TemporalUNet(3, 2, 2, features=(4, 8))
    assert model(torch.randn(1, 3, 2, 8, 12, 16)).shape == (1, 3, 2, 8, 12, 16)


def _influence(model, x, frame):
    """Which output frames change when input ``frame`` changes."""
    model.eval()
    with torch.no_grad():
        a = model(x)
        y = x.clone()
        y[:, frame] += 1.0
        b = model(y)
    return [not torch.allclose(a[:, t], b[:, t], atol=1e-6) for t in range(x.shape[1])]


def test_what_each_frame_sees():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 1, 16, 16)
    per_frame = TemporalUNet(2, 1, 2, features=(4, 8), temporal="none")
    assert _influence(per_frame, x, 2) == [False, False, True, False, False]
    both = TemporalUNet(2, 1, 2, features=(4, 8), temporal="gru")
    assert all(_influence(both, x, 2))  # bidirectional: the whole cycle
    forward = create_model("next-frame", spatial_dims=2, in_channels=1, features=(4, 8))
    assert _influence(forward, x, 2) == [False, False, True, True, True]  # causal
    conv = TemporalUNet(2, 1, 2, features=(4, 8), temporal="conv")
    torch.nn.init.normal_(conv.temporal.conv.weight)  # zero-initialised: give it a say
    assert _influence(conv, x, 2) == [False, True, True, True, False]  # one frame each side


def test_conv_rnn_directions():
    rnn = ConvRNN(2, 3, 4, kind="lstm", bidirectional=False)
    assert rnn(torch.randn(2, 6, 3, 8, 8)).shape == (2, 6, 4, 8, 8)
    with pytest.raises(ValueError, match="'gru' or 'lstm'"):
        ConvRNN(2, 3, 4, kind="rnn")


def test_sequence_net_pools_over_valid_frames_only():
    torch.manual_seed(0)
    model = SequenceNet(2, 2, 3, features=(4, 8), hidden=8).eval()
    x = torch.randn(2, 7, 2, 16, 16)
    lengths = torch.tensor([7, 4])
    with torch.no_grad():
        out = model(x, lengths)
        y = x.clone()
        y[1, 4:] = 100.0  # frames past the second sequence's length
        again = model(y, lengths)
    assert out.shape == (2, 3)
    # the bidirectional RNN runs over the padding, so its states at valid frames move; pooling
    # ignores the padded frames themselves: the first sequence is untouched
    assert torch.allclose(out[0], again[0])
    lstm = create_model("cnn-lstm", spatial_dims=3, in_channels=1, num_classes=2,
                        features=(4,), hidden=4)  # fmt: skip
    assert lstm(torch.randn(1, 3, 1, 8, 8, 8)).shape == (1, 2)


def test_a_gru_regressor_learns_how_much_a_sequence_changes():
    """Disks whose radius swings by a random fraction: the GRU regresses that fraction."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")

    def batch(n):
        swing = torch.rand(n)
        t = torch.linspace(0, 2 * torch.pi, 8)
        radius = 6 * (1 - swing[:, None] * (1 - torch.cos(t)[None]) / 2)  # (n, T)
        d = ((yy - 8) ** 2 + (xx - 8) ** 2).sqrt()
        frames = (d[None, None] <= radius[..., None, None]).float()
        return frames[:, :, None], swing[:, None]

    model = SequenceNet(2, 1, 1, features=(8, 16), hidden=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        x, y = batch(16)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    x, y = batch(64)
    with torch.no_grad():
        error = (model(x) - y).abs().mean().item()
    assert error < 0.1  # guessing the mean gives 0.25


def test_bad_inputs_are_refused():
    model = TemporalUNet(2, 1, 2, features=(4, 8, 16))
    with pytest.raises(ValueError, match="divide by 4"):
        model(torch.randn(1, 2, 1, 18, 16))
    with pytest.raises(ValueError, match="batch, time, channels"):
        model(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="temporal must be"):
        TemporalUNet(2, 1, 2, temporal="attention")
