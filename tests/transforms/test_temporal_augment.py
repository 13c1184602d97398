"""Temporal augmentation: the time axis of every timed field changes alike, frames stay whole."""

from __future__ import annotations

import pytest
import torch

from medlens.transforms import (
    Compose,
    FrameRateJitter,
    RandomFlip,
    RandomReverse,
    RandomStart,
)
from medlens.transforms.batch import Batch


def cine(b: int = 3, t: int = 8) -> Batch:
    """Frames whose value is their index (image) and a label map whose value is too."""
    index = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1)
    image = index.expand(b, t, 1, 6, 6).clone()
    image[:, :, :, 0, 0] += torch.arange(b, dtype=torch.float32).view(b, 1, 1) * 100
    label = index.expand(b, t, 1, 6, 6).long().clone()
    return Batch(image=image, label=label, time_axis=True)


def frames_of(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, 0, 1, 1]


def test_random_start_rolls_every_field_alike():
    out = Compose([RandomStart()], seed=1)(cine())
    start = out.trace[0].params["start"]
    for b in range(3):
        expected = (torch.arange(8) + start[b]) % 8
        assert torch.equal(frames_of(out["image"])[b], expected.float())
        assert torch.equal(frames_of(out["label"])[b], expected)
    assert out["image"][1, 0, 0, 0, 0] == 100 + start[1]  # each sample keeps its own frames


def test_a_window_of_a_longer_sequence():
    out = Compose([RandomStart(cyclic=False, length=5)], seed=0)(cine())
    assert out["image"].shape == (3, 5, 1, 6, 6)
    first = frames_of(out["label"])[:, 0]
    assert torch.equal(frames_of(out["label"]), first[:, None] + torch.arange(5))
    assert (first <= 3).all()
    with pytest.raises(ValueError, match="shorter than the window of 9"):
        Compose([RandomStart(cyclic=False, length=9)])(cine())


def test_reverse_where_drawn():
    out = Compose([RandomReverse(p=1.0)])(cine())
    assert torch.equal(frames_of(out["label"])[0], torch.arange(7, -1, -1))
    same = Compose([RandomReverse(p=0.0)])(cine())
    assert torch.equal(same["image"], cine()["image"])


def test_frame_rate_jitter_interpolates_images_and_picks_labels():
    batch = cine(b=1)
    fixed = Compose([FrameRateJitter(1.5, 1.5)])(batch)
    times = torch.arange(8) * 1.5
    low, w = times.floor(), times - times.floor()
    expected = (1 - w) * (low % 8) + w * ((low + 1) % 8)  # cyclic: 7.5 mixes frames 7 and 0
    assert torch.allclose(frames_of(fixed["image"])[0], expected)
    # 1.5 lies between frames 1 and 2: the image is their mean, the label the nearest (2)
    assert frames_of(fixed["label"])[0, 1] == 2
    held = Compose([FrameRateJitter(1.5, 1.5, cyclic=False)])(batch)
    assert frames_of(held["image"])[0, -1] == 7  # the last frame held
    rates = Compose([FrameRateJitter(0.8, 1.25)], seed=3)(cine(b=64)).trace[0].params["rate"]
    assert rates.min() >= 0.8 and rates.max() <= 1.25
    assert (rates > 1).float().mean().item() == pytest.approx(0.5, abs=0.2)  # log-uniform
    with pytest.raises(ValueError, match="0 < low <= high"):
        FrameRateJitter(1.2, 0.9)


def test_spatial_and_temporal_steps_compose():
    batch = cine(b=2)
    out = Compose([RandomFlip(axes=(0, 1), p=1.0), RandomStart(), RandomReverse(p=1.0)],
                  seed=2)(batch)  # fmt: skip
    assert out["image"][0, 0, 0, -1, -1] >= 0  # the marked corner moved to the other end
    assert torch.equal(out["image"][:, :, :, 1:-1, 1:-1].flip(-1).flip(-2),
                       out["image"][:, :, :, 1:-1, 1:-1])  # frames are constant inside  # fmt: skip
    with pytest.raises(ValueError, match="needs a batch with a time axis"):
        Compose([RandomReverse(p=1.0)])(Batch(image=torch.zeros(1, 1, 4, 4)))
