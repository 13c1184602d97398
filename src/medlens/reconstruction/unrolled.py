"""An unrolled reconstruction network with data consistency (E2E-VarNet / MoDL style, small).

The network alternates, ``cascades`` times, a gradient step on the data term and a learned
regulariser on the coil-combined image ``x``::

    x <- x - eta_t * A^H (A x - y)        (data consistency: y the measured k-space)
    x <- x + R_t(x)                        (a small U-Net on the real and imaginary parts)

starting from the zero-filled ``A^H y`` (Sriram et al. 2020, "End-to-end variational networks";
Aggarwal et al. 2019, "MoDL"). Each ``R_t`` sees its input normalised by its own mean and
standard deviation (fastMRI's NormUnet), so one network serves images of any scale, starts as
zero (the untrained network is gradient descent on the data term), and sizes that are not
multiples of the U-Net's divisor are padded. With ``hard_dc`` the last step replaces the
measured samples of each coil's k-space by the measurements, so every coil image of the output
is consistent with ``y`` exactly where it was measured; the output is their combination with
the coil maps (for one coil: the image itself).

Inputs: a dict of ``kspace`` ``(B, C, H, W)`` complex (zero where unmeasured), ``mask``
``(B, W)`` and ``maps`` ``(B, C, H, W)`` complex, answered by the complex image ``(B, H, W)``; or
the same packed into one real tensor (:func:`pack`: ``(B, 4C + 1, H, W)``), answered by
``(B, 2, H, W)`` (real, imaginary). The arithmetic is written on (real, imaginary) pairs, so the
packed form exports to ONNX, which has no complex tensors: there (``dft="matmul"``) the centred
orthonormal 2D FFT is two products with the unitary matrices
``exp(-2 pi i k k' / N) / sqrt(N)``, ``k = n - N // 2``, built in the graph from the input's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UnrolledNet", "consistent_coils", "pack", "unpack"]

Pair = tuple[torch.Tensor, torch.Tensor]


def pack(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The network's dict input as one real tensor ``(B, 4C + 1, H, W)``: k-space real and
    imaginary parts, maps real and imaginary parts, the mask repeated along ``H``."""
    k, maps, mask = batch["kspace"], batch["maps"], batch["mask"].to(torch.float32)
    rows = mask[:, None, None, :].expand(-1, 1, k.shape[-2], -1)
    return torch.cat([k.real, k.imag, maps.real, maps.imag, rows], dim=1).float()


def unpack(x: torch.Tensor) -> tuple[Pair, Pair, torch.Tensor]:
    """``(kspace, maps, mask)`` of a packed input: two pairs and the mask ``(B, 1, 1, W)``."""
    c = (x.shape[1] - 1) // 4
    k = (x[:, :c], x[:, c : 2 * c])
    maps = (x[:, 2 * c : 3 * c], x[:, 3 * c : 4 * c])
    return k, maps, x[:, 4 * c :, :1, :]


def _mul(a: Pair, b: Pair) -> Pair:
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def _conj_mul(a: Pair, b: Pair) -> Pair:
    """``conj(a) * b``."""
    return a[0] * b[0] + a[1] * b[1], a[0] * b[1] - a[1] * b[0]


def _dft(n: int, like: torch.Tensor, inverse: bool) -> Pair:
    index = torch.arange(n, dtype=like.dtype, device=like.device)
    count = torch.ones_like(index).sum()  # n as a tensor: an exported graph keeps it symbolic
    k = index - torch.floor(count / 2)
    angle = torch.outer(k, k) * (2 * math.pi) / count
    scale = torch.rsqrt(count)
    return torch.cos(angle) * scale, torch.sin(angle) * (scale if inverse else -scale)


def _fft(x: Pair, inverse: bool, dft: str) -> Pair:
    """The centred orthonormal 2D (inverse) FFT over the last two axes of a pair."""
    if dft == "torch":
        from medlens.reconstruction.kspace import fft2c, ifft2c

        z = (ifft2c if inverse else fft2c)(torch.complex(x[0].float(), x[1].float()))
        return z.real, z.imag
    ch, cw = _dft(x[0].shape[-2], x[0], inverse), _dft(x[0].shape[-1], x[0], inverse)
    left = (ch[0] @ x[0] - ch[1] @ x[1], ch[0] @ x[1] + ch[1] @ x[0])
    return left[0] @ cw[0] - left[1] @ cw[1], left[0] @ cw[1] + left[1] @ cw[0]


def _forward_op(x: Pair, maps: Pair, mask: torch.Tensor, dft: str) -> Pair:
    """``A x``: ``(B, H, W)`` to measured k-space ``(B, C, H, W)``."""
    k = _fft(_mul((x[0][:, None], x[1][:, None]), maps), False, dft)
    return k[0] * mask, k[1] * mask


def _adjoint_op(k: Pair, maps: Pair, mask: torch.Tensor, dft: str) -> Pair:
    """``A^H y``: k-space ``(B, C, H, W)`` to one image ``(B, H, W)``."""
    coils = _fft((k[0] * mask, k[1] * mask), True, dft)
    x = _conj_mul(maps, coils)
    return x[0].sum(dim=1), x[1].sum(dim=1)


def _combine(coils: Pair, maps: Pair) -> Pair:
    """``sum conj(S) x / sum |S|^2`` (0 where no coil sees the pixel)."""
    weight = (maps[0] ** 2 + maps[1] ** 2).sum(dim=1)
    x = _conj_mul(maps, coils)
    seen = weight > 0
    safe = weight.clamp(min=1e-12)
    zero = torch.zeros_like(weight)
    return (torch.where(seen, x[0].sum(dim=1) / safe, zero),
            torch.where(seen, x[1].sum(dim=1) / safe, zero))  # fmt: skip


class _NormUNet(nn.Module):
    """A 2D U-Net on ``(real, imag)`` of an image, normalised per image."""

    def __init__(self, features: Sequence[int]) -> None:
        super().__init__()
        from medlens.models import create_model

        self.net = create_model("unet", spatial_dims=2, in_channels=2, num_classes=2,
                                features=list(features), norm="instance",
                                deep_supervision=False)  # fmt: skip
        self.divisor = 2 ** (len(features) - 1)
        for head in self.net.heads[-1:]:  # start as zero: x + R(x) = x
            conv = head if isinstance(head, nn.Conv2d) else next(
                m for m in head.modules() if isinstance(m, nn.Conv2d))  # fmt: skip
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Pair) -> Pair:
        z = torch.stack(x, dim=1)  # (B, 2, H, W)
        mean = z.mean(dim=(2, 3), keepdim=True)
        std = z.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)
        z = (z - mean) / std
        h, w = z.shape[-2:]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        z = F.pad(z, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        z = self.net(z)[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        z = z.float() * std + mean
        return z[:, 0], z[:, 1]


def consistent_coils(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
                     maps: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Each coil's k-space of ``x`` ``(B, H, W)`` with the measured samples put back:
    ``(1 - M) F(S x) + M y``, ``(B, C, H, W)``."""
    from medlens.reconstruction.kspace import fft2c

    m = mask[:, None, None, :].to(kspace.real.dtype)
    return fft2c(x.unsqueeze(1) * maps) * (1 - m) + kspace * m


class UnrolledNet(nn.Module):
    """See the module's notes. ``features``: the regularisers' U-Net stages; ``dft``:
    ``"torch"`` (torch.fft) or ``"matmul"`` (DFT matrices, what an ONNX export runs)."""

    def __init__(self, cascades: int = 6, features: Sequence[int] = (16, 32, 64), *,
                 hard_dc: bool = True) -> None:  # fmt: skip
        super().__init__()
        if cascades < 1:
            raise ValueError(f"cascades must be >= 1, got {cascades}")
        self.regularisers = nn.ModuleList(_NormUNet(features) for _ in range(cascades))
        self.steps = nn.Parameter(torch.ones(cascades))
        self.hard_dc = bool(hard_dc)
        self.dft = "torch"

    @property
    def explain_layer(self) -> nn.Module:
        """The last regulariser's U-Net (what an explanation looks at)."""
        return self.regularisers[-1].net

    def forward(self, batch: dict[str, torch.Tensor] | torch.Tensor):
        packed = isinstance(batch, torch.Tensor)
        k, maps, mask = unpack(batch if packed else pack(batch))
        x = self._run(k, maps, mask)
        return torch.stack(x, dim=1) if packed else torch.complex(x[0], x[1])

    def _run(self, k: Pair, maps: Pair, mask: torch.Tensor) -> Pair:
        k = (k[0] * mask, k[1] * mask)
        x = _adjoint_op(k, maps, mask, self.dft)
        for step, regulariser in zip(self.steps, self.regularisers, strict=True):
            measured = _forward_op(x, maps, mask, self.dft)
            residual = (measured[0] - k[0], measured[1] - k[1])
            grad = _adjoint_op(residual, maps, mask, self.dft)
            x = (x[0] - step * grad[0], x[1] - step * grad[1])
            r = regulariser(x)
            x = (x[0] + r[0], x[1] + r[1])
        if self.hard_dc:
            coils = _fft(_mul((x[0][:, None], x[1][:, None]), maps), False, self.dft)
            kept = (coils[0] * (1 - mask) + k[0], coils[1] * (1 - mask) + k[1])
            x = _combine(_fft(kept, True, self.dft), maps)
        return x
