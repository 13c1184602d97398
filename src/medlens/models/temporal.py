"""Models of image sequences (cine MRI, echo loops, video), 2D+t and 3D+t.

Every model takes ``(B, T, C, *spatial)`` and sees each frame with the same weights:

* :class:`ConvRNN`: a convolutional GRU (Ballas et al. 2016) or LSTM (Shi et al. 2015) over the
  time axis, forward or bidirectional (the two directions' states concatenated and mixed by a
  1x1 convolution), ``(B, T, C, *S) -> (B, T, H, *S)``;
* :class:`TemporalConv`: a (2+1)D step (Tran et al. 2018): a temporal convolution of size 3 over
  each pixel's sequence, residual;
* :class:`TemporalUNet` (``temporal-unet``): a U-Net applied frame by frame whose deepest level
  passes its features through a temporal layer (``temporal="gru" | "lstm" | "conv" | "none"``),
  so each frame's segmentation sees the whole cycle; ``"none"`` is the same network without it
  (the per-frame baseline). ``(B, T, C, *S) -> (B, T, K, *S)``; with ``num_classes=C`` and
  ``residual=True`` and a forward GRU it predicts each next frame (``next-frame``);
* :class:`SequenceNet` (``cnn-gru``, ``cnn-lstm``): a CNN encoder per frame (global average
  pooled), a bidirectional GRU or LSTM over the frames and attention pooling over time (a learnt
  score per frame, softmax-weighted mean of the RNN states), then a linear head: one vector per
  sequence, for classification logits or regression values. ``forward(x, lengths=None)``
  ignores frames past each sequence's length.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from medlens.models._layers import check_spatial_dims, conv, norm_layer
from medlens.models.registry import register_model

__all__ = ["ConvRNN", "SequenceNet", "TemporalConv", "TemporalUNet"]

Temporal = Literal["gru", "lstm", "conv", "none"]


class _Block(nn.Sequential):
    """Two 3x3 convolutions with instance norm and leaky ReLU; the first may stride."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            conv(dims, cin, cout, 3, stride=stride), norm_layer("instance", dims, cout),
            nn.LeakyReLU(0.01, inplace=True),
            conv(dims, cout, cout, 3), norm_layer("instance", dims, cout),
            nn.LeakyReLU(0.01, inplace=True),
        )  # fmt: skip


def _frames(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``(B, T, C, *S)`` as ``(B * T, C, *S)`` with ``B`` and ``T``."""
    if x.ndim < 4:
        raise ValueError(f"a sequence model needs (batch, time, channels, *spatial), got {x.shape}")
    b, t = x.shape[:2]
    return x.reshape(b * t, *x.shape[2:]), b, t


def _through(layer: nn.Module, h: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """Frames' features ``(B * T, F, *S)`` through ``layer`` as ``(B, F, T, *S)``, and back."""
    if isinstance(layer, nn.Identity) and not (
        layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
    ):
        return h
    seq = h.reshape(b, t, *h.shape[1:]).transpose(1, 2)
    return layer(seq).transpose(1, 2).reshape(h.shape)


class _Cell(nn.Module):
    """One convolutional GRU or LSTM step."""

    def __init__(self, dims: int, cin: int, hidden: int, kind: str, kernel: int = 3) -> None:
        super().__init__()
        self.kind, self.hidden = kind, hidden
        gates = 3 if kind == "gru" else 4
        self.x2h = conv(dims, cin, gates * hidden, kernel, bias=True)
        self.h2h = conv(dims, hidden, gates * hidden, kernel)

    def forward(self, x: torch.Tensor, state):
        if self.kind == "gru":
            h = state
            xr, xz, xn = self.x2h(x).chunk(3, dim=1)
            hr, hz, hn = self.h2h(h).chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            return h, h
        h, c = state
        i, f, g, o = (self.x2h(x) + self.h2h(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class ConvRNN(nn.Module):
    """A convolutional GRU or LSTM over ``(B, T, C, *S)``: ``(B, T, hidden, *S)``."""

    def __init__(self, spatial_dims: int, in_channels: int, hidden: int, *,
                 kind: Literal["gru", "lstm"] = "gru",
                 bidirectional: bool = True) -> None:  # fmt: skip
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        if kind not in ("gru", "lstm"):
            raise ValueError(f"kind must be 'gru' or 'lstm', got {kind!r}")
        self.cells = nn.ModuleList(_Cell(dims, in_channels, hidden, kind)
                                   for _ in range(2 if bidirectional else 1))  # fmt: skip
        self.mix = conv(dims, 2 * hidden, hidden, 1, bias=True) if bidirectional else None

    def _run(self, cell: _Cell, x: torch.Tensor, order) -> list[torch.Tensor]:
        zeros = x.new_zeros(x.shape[0], cell.hidden, *x.shape[3:])
        state = zeros if cell.kind == "gru" else (zeros, zeros)
        out: list[torch.Tensor] = [zeros] * x.shape[1]
        for t in order:
            out[t], state = cell(x[:, t], state)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = range(x.shape[1])
        forward = torch.stack(self._run(self.cells[0], x, steps), dim=1)
        if self.mix is None:
            return forward
        backward = torch.stack(self._run(self.cells[1], x, reversed(steps)), dim=1)
        both, b, t = _frames(torch.cat([forward, backward], dim=2))
        return self.mix(both).reshape(b, t, -1, *both.shape[2:])


class TemporalConv(nn.Module):
    """A residual temporal convolution (size 3, zero-padded in time) of each pixel's sequence."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape[:3]
        spatial = x.shape[3:]
        seq = x.permute(0, *range(3, x.ndim), 2, 1).reshape(-1, c, t)  # (B * S, C, T)
        out = torch.relu(self.conv(seq)).reshape(b, *spatial, c, t)
        return x + out.permute(0, out.ndim - 1, out.ndim - 2, *range(1, out.ndim - 2))


class TemporalUNet(nn.Module):
    """A frame-by-frame U-Net with a temporal layer at its deepest level (module notes)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, *,
                 features: tuple[int, ...] = (16, 32, 64, 128), temporal: Temporal = "gru",
                 bidirectional: bool = True, residual: bool = False) -> None:  # fmt: skip
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        if temporal not in ("gru", "lstm", "conv", "none"):
            raise ValueError(f"temporal must be gru, lstm, conv or none, got {temporal!r}")
        if len(features) < 2:
            raise ValueError(f"features {features}: need at least two levels")
        self.temporal_kind, self.residual = temporal, residual
        self.down = nn.ModuleList(
            _Block(dims, in_channels if i == 0 else features[i - 1], f, stride=1 if i == 0 else 2)
            for i, f in enumerate(features))  # fmt: skip
        deep = features[-1]
        if temporal in ("gru", "lstm"):
            self.temporal: nn.Module | None = ConvRNN(dims, deep, deep, kind=temporal,
                                                      bidirectional=bidirectional)  # fmt: skip
        else:
            self.temporal = TemporalConv(deep) if temporal == "conv" else None
        transpose = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.up = nn.ModuleList(transpose(features[i], features[i - 1], 2, stride=2)
                                for i in range(len(features) - 1, 0, -1))  # fmt: skip
        self.merge = nn.ModuleList(_Block(dims, 2 * features[i - 1], features[i - 1])
                                   for i in range(len(features) - 1, 0, -1))  # fmt: skip
        self.head = conv(dims, features[0], num_classes, 1, bias=True)
        #: the deepest features as ``(B, F, T, *S)`` pass through here: Grad-CAM's layer
        self.explain_layer = nn.Identity()

    @property
    def divisor(self) -> int:
        """What every spatial size must divide by."""
        return 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, b, t = _frames(x)
        if any(s % self.divisor for s in frames.shape[2:]):
            raise ValueError(f"spatial size {tuple(frames.shape[2:])} must divide by "
                             f"{self.divisor}")  # fmt: skip
        skips = []
        h = frames
        for block in self.down:
            h = block(h)
            skips.append(h)
        if self.temporal is not None:
            h = self.temporal(h.reshape(b, t, *h.shape[1:])).reshape(h.shape)
        h = _through(self.explain_layer, h, b, t)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            h = merge(torch.cat([up(h), skip], dim=1))
        out = self.head(h)
        if self.residual:
            out = out + frames
        return out.reshape(b, t, *out.shape[1:])


class SequenceNet(nn.Module):
    """CNN per frame, RNN over frames, attention pooling, a linear head (module notes)."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 1, *,
                 features: tuple[int, ...] = (16, 32, 64, 128), hidden: int = 64,
                 rnn: Literal["gru", "lstm"] = "gru", bidirectional: bool = True,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        if rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {rnn!r}")
        blocks = [_Block(dims, in_channels if i == 0 else features[i - 1], f, stride=2)
                  for i, f in enumerate(features)]  # fmt: skip
        pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.encoder = nn.Sequential(*blocks, pool, nn.Flatten())
        cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = cls(features[-1], hidden, batch_first=True, bidirectional=bidirectional)
        width = hidden * (2 if bidirectional else 1)
        self.score = nn.Linear(width, 1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        #: the last feature maps as ``(B, F, T, *S)`` pass through here: Grad-CAM's layer
        self.explain_layer = nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames, b, t = _frames(x)
        maps = _through(self.explain_layer, self.encoder[:-2](frames), b, t)
        states, _ = self.rnn(self.encoder[-2:](maps).reshape(b, t, -1))
        scores = self.score(states).squeeze(-1)  # (B, T)
        if lengths is not None:
            keep = torch.arange(t, device=x.device)[None] < lengths.to(x.device)[:, None]
            scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        pooled = (weights.unsqueeze(-1) * states).sum(dim=1)
        return self.head(self.drop(pooled))


@register_model("temporal-unet", task="sequence-segmentation")
def temporal_unet(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                  **kw: Any) -> TemporalUNet:  # fmt: skip
    """Per-frame segmentation with temporal context (``temporal="gru"|"lstm"|"conv"|"none"``)."""
    return TemporalUNet(spatial_dims, in_channels, num_classes, **kw)


@register_model("next-frame", task="sequence-forecast")
def next_frame(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 0,
               **kw: Any) -> TemporalUNet:  # fmt: skip
    """Each frame's successor from the frames up to it (a forward ConvGRU, residual)."""
    kw.setdefault("temporal", "gru")
    return TemporalUNet(spatial_dims, in_channels, in_channels, bidirectional=False,
                        residual=True, **kw)  # fmt: skip


@register_model("cnn-gru", task="sequence")
def cnn_gru(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 1,
            **kw: Any) -> SequenceNet:  # fmt: skip
    """Sequence classification or regression: CNN per frame, bidirectional GRU, attention."""
    return SequenceNet(spatial_dims, in_channels, num_classes, rnn="gru", **kw)


@register_model("cnn-lstm", task="sequence")
def cnn_lstm(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 1,
             **kw: Any) -> SequenceNet:  # fmt: skip
    """As ``cnn-gru`` with an LSTM."""
    return SequenceNet(spatial_dims, in_channels, num_classes, rnn="lstm", **kw)
