"""Temporal augmentation of sequences: every timed dense field of a sample (images, label maps,
displacements, with a time axis ``(B, T, C, *spatial)``) gets the same new time axis, and the
number of frames stays ``T``.

* :class:`RandomStart`: the frames shifted cyclically by a random offset (a cine's cycle may
  begin at any phase); with ``cyclic=False`` a random window of ``length`` frames instead (the
  output then has ``length`` frames);
* :class:`RandomReverse`: the frames in reverse order, where the task allows it (an ejection
  fraction does not change when the heart runs backwards; "is this systole" does);
* :class:`FrameRateJitter`: the sequence resampled at a random rate ``s`` in ``[low, high]``: output
  frame ``t`` is input time ``t * s``, images interpolated linearly between the two nearest
  frames and label maps taken from the nearest; cyclic sequences wrap around, others hold their
  last frame.

Spatial transforms already move every frame of a sequence with the same parameters
(:class:`~medlens.transforms.SpatialTransform`); these change only the time axis.
"""

from __future__ import annotations

import torch

from medlens.transforms.base import Params, Transform
from medlens.transforms.batch import Batch

__all__ = ["FrameRateJitter", "RandomReverse", "RandomStart", "TemporalTransform"]


class TemporalTransform(Transform):
    """A transform of the time axis (module notes): ``positions`` per sample and output frame,
    in input frames."""

    def positions(self, params: Params, frames: int) -> torch.Tensor:
        """``(B, T_out)`` float64 input times of each output frame."""
        raise NotImplementedError

    def apply(self, batch: Batch, params: Params) -> Batch:
        frames = batch.num_frames
        if frames is None:
            raise ValueError(f"{type(self).__name__} needs a batch with a time axis")
        where = self.positions(params, frames)
        out = batch.copy()
        for name in list(batch):
            if batch.timed(name):
                out[name] = _resample_time(batch[name], where, batch.kinds[name] != "label",
                                           getattr(self, "cyclic", True))  # fmt: skip
        return out


def _resample_time(x: torch.Tensor, where: torch.Tensor, linear: bool,
                   cyclic: bool) -> torch.Tensor:  # fmt: skip
    """``x`` ``(B, T, ...)`` at the times ``where`` ``(B, T_out)`` (in frames)."""
    b, t = x.shape[:2]
    where = where.to(torch.float64)
    if not linear:
        where = torch.round(where)
    low = torch.floor(where)
    weight = (where - low).to(x.dtype if x.is_floating_point() else torch.float32)
    i0, i1 = low.long(), low.long() + 1
    if cyclic:
        i0, i1 = i0 % t, i1 % t
    else:
        i0, i1 = i0.clamp(0, t - 1), i1.clamp(0, t - 1)
    shape = (b, where.shape[1], *([1] * (x.ndim - 2)))

    def take(index: torch.Tensor) -> torch.Tensor:
        return x.gather(1, index.view(shape).expand(b, where.shape[1], *x.shape[2:]))

    if not linear or not x.is_floating_point():
        return take(i0)
    w = weight.view(shape).to(x.device)
    return take(i0) * (1 - w) + take(i1) * w


class RandomStart(TemporalTransform):
    """A random cyclic shift of the frames, or (``cyclic=False``) a random window of
    ``length`` frames."""

    def __init__(self, cyclic: bool = True, length: int | None = None, p: float = 1.0) -> None:
        if not cyclic and (length is None or length < 1):
            raise ValueError("a non-cyclic RandomStart needs a window length >= 1")
        self.cyclic, self.length, self.p = cyclic, length, p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        frames = batch.num_frames or 1
        room = frames if self.cyclic else frames - int(self.length) + 1
        if room < 1:
            raise ValueError(f"a sequence of {frames} frames is shorter than the window "
                             f"of {self.length}")  # fmt: skip
        applied = self._coin(batch.batch_size, generator)
        start = torch.randint(0, room, (batch.batch_size,), generator=generator)
        return {"applied": applied, "start": torch.where(applied, start, 0)}

    def positions(self, params: Params, frames: int) -> torch.Tensor:
        length = frames if self.cyclic else int(self.length)
        return params["start"].double()[:, None] + torch.arange(length, dtype=torch.float64)


class RandomReverse(TemporalTransform):
    """The frames in reverse order with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p
        self.cyclic = False

    def positions(self, params: Params, frames: int) -> torch.Tensor:
        forward = torch.arange(frames, dtype=torch.float64)[None].repeat(len(params["applied"]), 1)
        return torch.where(params["applied"][:, None], frames - 1 - forward, forward)


class FrameRateJitter(TemporalTransform):
    """Resampled at a random rate in ``[low, high]`` (module notes)."""

    def __init__(self, low: float = 0.8, high: float = 1.25, cyclic: bool = True,
                 p: float = 1.0) -> None:  # fmt: skip
        if not 0 < low <= high:
            raise ValueError(f"rates [{low}, {high}]: need 0 < low <= high")
        self.low, self.high, self.cyclic, self.p = low, high, cyclic, p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        applied = self._coin(batch.batch_size, generator)
        u = torch.rand(batch.batch_size, generator=generator, dtype=torch.float64)
        rate = self.low * (self.high / self.low) ** u  # log-uniform: as likely faster as slower
        return {"applied": applied, "rate": torch.where(applied, rate, 1.0)}

    def positions(self, params: Params, frames: int) -> torch.Tensor:
        return params["rate"][:, None] * torch.arange(frames, dtype=torch.float64)[None]
