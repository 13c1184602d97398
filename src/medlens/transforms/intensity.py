"""Intensity transforms on batched images (every other kind of field passes through).

Every random parameter is drawn per sample from the chain's generator; a parameter given as one
number is fixed, a ``(low, high)`` pair is drawn uniformly. Samples whose coin (``p``) came up
false are returned bit for bit (by :class:`GaussianNoise`: equal in value); statistics (minimum,
maximum, mean) are per sample and channel, pooled over the frames of a time series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from medlens.transforms import _compile, _filters
from medlens.transforms._stats import minmax, std_mean
from medlens.transforms.base import IntensityTransform, Params
from medlens.transforms.batch import Batch

__all__ = [
    "BiasField",
    "Brightness",
    "Contrast",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "LowResolution",
    "Sharpen",
    "ZScore",
]


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``(B,)`` parameter over ``(B, C, *S)``."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _spread(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = value
    return float(low), float(high)


def _draw(
    value: float | Sequence[float], shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """Uniform draws in ``[low, high]`` (float64, CPU); a fixed value still consumes draws."""
    low, high = _spread(value)
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _check(name: str, value: float | Sequence[float], *, above: float, strict: bool) -> None:
    low, high = _spread(value)
    if low > high:
        raise ValueError(f"{name} range must be (low, high) with low <= high, got {value!r}")
    if low < above or (strict and low == above):
        bound = ">" if strict else ">="
        raise ValueError(f"{name} must be {bound} {above}, got {value!r}")


def _where_applied(
    image: torch.Tensor,
    applied: torch.Tensor,
    function: Callable[[torch.Tensor, slice | torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``function(images, selection)`` on the applied samples only; the others stay as they are.

    ``selection`` indexes the ``(B, ...)`` parameters of the samples passed (a slice when all are).
    """
    if bool(applied.all()):
        return function(image, slice(None))
    if not bool(applied.any()):
        return image
    index = torch.nonzero(applied).flatten()
    on_device = index.to(image.device)
    out = image.clone()
    return out.index_copy_(0, on_device, function(image.index_select(0, on_device), index))


class GaussianNoise(IntensityTransform):
    """Add Gaussian noise with standard deviation ``std`` (a value or a range) and mean ``mean``.

    Each sample's noise comes from its own generator seeded from the chain's seed and the
    sample's index (only the seed is recorded), drawn in parallel on the CPU. Measured faster
    here than one ``torch.randn``, uniforms with a fused Box-Muller transform, or NumPy's
    ziggurat.
    """

    frames_as_axis = True  # point-wise: statistics pool over all frames

    def __init__(self, std: float | Sequence[float] = 0.1, *, mean: float = 0.0, p: float = 1.0):
        self.std, self.mean, self.p = std, mean, p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        applied = self._coin(b, generator)
        low, high = _spread(self.std)
        std = low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return {"applied": applied, "std": torch.where(applied, std, 0.0), "seed": seed}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        applied = params["applied"]
        if not bool(applied.any()):
            return image
        noise = _filters.seeded_normal(image.shape, params["seed"], image.device, image.dtype)
        out = torch.addcmul(image, noise, _per_sample(params["std"], image), out=noise)
        if self.mean:
            out.add_(_per_sample(applied.to(image.dtype) * self.mean, image))
        return out

    def fused_inputs(self, image: torch.Tensor, params: Params) -> tuple | None:
        applied = params["applied"]
        if not bool(applied.any()):
            return ()
        noise = _filters.seeded_normal(image.shape, params["seed"], image.device, image.dtype)
        shift = _per_sample(applied.to(image.dtype) * self.mean, image)
        return noise, _per_sample(params["std"], image), shift

    def fused(self, image: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        if not inputs:
            return image
        noise, std, shift = inputs
        return image + noise * std + shift


def _zscore(image: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    var, mean = torch.var_mean(image, dim=dims, keepdim=True, correction=0)
    return (image - mean) * torch.rsqrt(var.clamp(min=eps**2))


class ZScore(IntensityTransform):
    """Normalise each sample (and channel) to zero mean and unit standard deviation.

    Args:
        nonzero: compute the statistics over non-zero voxels only and leave zeros at zero.
        channel_wise: statistics per channel (default) or over all channels together.
        eps: floor of the standard deviation (constant images stay finite).
    """

    frames_as_axis = True  # point-wise: statistics pool over all frames

    def __init__(self, *, nonzero: bool = False, channel_wise: bool = True, eps: float = 1e-8):
        self.nonzero, self.channel_wise, self.eps = nonzero, channel_wise, eps
        self.p = 1.0

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        dims = tuple(range(2 if self.channel_wise else 1, image.ndim))
        if not self.nonzero:
            if _compile.enabled_for(image):  # one fused pass for the statistics, one to scale
                return _compile.run(_zscore, image, dims, self.eps)
            return _zscore(image, dims, self.eps)
        mask = image != 0
        count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
        mean = (image * mask).sum(dim=dims, keepdim=True) / count
        var = (((image - mean) * mask) ** 2).sum(dim=dims, keepdim=True) / count
        out = (image - mean) * torch.rsqrt(var.clamp(min=self.eps**2))
        return torch.where(mask, out, torch.zeros_like(out))

    def fused_inputs(self, image: torch.Tensor, params: Params) -> tuple | None:
        return None if self.nonzero else ()

    def fused(self, image: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2 if self.channel_wise else 1, image.ndim))
        return _zscore(image, dims, self.eps)


class GaussianBlur(IntensityTransform):
    """Separable Gaussian smoothing with a standard deviation (in voxels) drawn per sample.

    Matches :func:`scipy.ndimage.gaussian_filter` with the same sigma, ``truncate`` and ``mode``.

    Args:
        sigma: standard deviation in voxels, a value or a ``(low, high)`` range.
        p: probability per sample.
        per_axis: draw one sigma per spatial axis (anisotropic blur) instead of one per sample.
        truncate: kernel radius in standard deviations.
        mode: boundary rule, SciPy's names: ``nearest`` (edge repeats), ``reflect``, ``mirror``
            or ``constant``.
    """

    def __init__(
        self,
        sigma: float | Sequence[float] = (0.5, 1.5),
        p: float = 1.0,
        *,
        per_axis: bool = False,
        truncate: float = 4.0,
        mode: str = "nearest",
    ) -> None:
        _check("sigma", sigma, above=0.0, strict=False)
        if mode not in _filters.MODES:
            raise ValueError(f"unknown boundary mode {mode!r}; choose from {_filters.MODES}")
        self.sigma, self.p, self.per_axis = sigma, p, per_axis
        self.truncate, self.mode = truncate, mode

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b, n = batch.batch_size, batch.spatial_dims
        applied = self._coin(b, generator)
        sigma = _draw(self.sigma, (b, n if self.per_axis else 1), generator).expand(b, n)
        return {"applied": applied, "sigma": torch.where(applied[:, None], sigma, 0.0)}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = params["sigma"]

        def blur(x: torch.Tensor, sel) -> torch.Tensor:
            return _filters.gaussian_blur(x, sigma[sel], truncate=self.truncate, mode=self.mode)

        return _where_applied(image, params["applied"], blur)


class Sharpen(IntensityTransform):
    """Unsharp masking: ``x + amount * (x - blur(x))`` with Gaussian blur of ``sigma`` voxels.

    Args:
        amount: strength, a value or a ``(low, high)`` range.
        sigma: standard deviation of the blur in voxels, a value or a range.
        p: probability per sample.
        mode: boundary rule of the blur (see :class:`GaussianBlur`).
    """

    def __init__(
        self,
        amount: float | Sequence[float] = (0.5, 1.5),
        sigma: float | Sequence[float] = 1.0,
        p: float = 1.0,
        *,
        mode: str = "nearest",
    ) -> None:
        _check("amount", amount, above=0.0, strict=False)
        _check("sigma", sigma, above=0.0, strict=False)
        if mode not in _filters.MODES:
            raise ValueError(f"unknown boundary mode {mode!r}; choose from {_filters.MODES}")
        self.amount, self.sigma, self.p, self.mode = amount, sigma, p, mode

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        applied = self._coin(b, generator)
        amount = _draw(self.amount, (b,), generator)
        sigma = _draw(self.sigma, (b,), generator)
        return {
            "applied": applied,
            "amount": torch.where(applied, amount, 0.0),
            "sigma": torch.where(applied, sigma, 0.0),
        }

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        def sharpen(x: torch.Tensor, sel) -> torch.Tensor:
            blurred = _filters.gaussian_blur(x, params["sigma"][sel], mode=self.mode)
            # lerp(blurred, x, 1 + a) = blurred + (1 + a)(x - blurred) = x + a (x - blurred)
            return torch.lerp(blurred, x, _per_sample(1 + params["amount"][sel], x))

        return _where_applied(image, params["applied"], sharpen)


class Gamma(IntensityTransform):
    """Gamma correction ``u ** gamma`` of intensities scaled to ``u`` in [0, 1] per channel.

    The result is mapped back to the channel's original minimum and maximum, as nnU-Net and
    TorchIO do; constant channels stay as they are.

    Args:
        gamma: exponent, a value or a ``(low, high)`` range (drawn uniformly).
        p: probability per sample.
        invert: ``1 - (1 - u) ** gamma`` instead (gamma applied to the inverted image).
        retain_stats: then restore each channel's mean and standard deviation (nnU-Net).
    """

    frames_as_axis = True  # point-wise: statistics pool over all frames

    def __init__(
        self,
        gamma: float | Sequence[float] = (0.7, 1.5),
        p: float = 1.0,
        *,
        invert: bool = False,
        retain_stats: bool = False,
    ) -> None:
        _check("gamma", gamma, above=0.0, strict=True)
        self.gamma, self.p, self.invert, self.retain_stats = gamma, p, invert, retain_stats

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        applied = self._coin(b, generator)
        gamma = _draw(self.gamma, (b,), generator)
        return {"applied": applied, "gamma": torch.where(applied, gamma, 1.0)}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return _where_applied(image, params["applied"], lambda x, sel: self._gamma(x, sel, params))

    def _gamma(self, x: torch.Tensor, sel, params: Params) -> torch.Tensor:
        if self.retain_stats:
            std, mean = std_mean(x)
        low, high = minmax(x)
        span = high - low
        scale = 1 / span.clamp(min=torch.finfo(x.dtype).tiny)
        u = torch.sub(high, x) if self.invert else torch.sub(x, low)
        u.mul_(scale).pow_(_per_sample(params["gamma"][sel], x))  # u >= 0 exactly: no NaN
        out = torch.addcmul(high, u, -span) if self.invert else torch.addcmul(low, u, span)
        if self.retain_stats:
            new_std, new_mean = std_mean(out)
            ratio = std / new_std.clamp(min=1e-8)
            out = out.sub_(new_mean).mul_(ratio).add_(mean)
        return out


class Contrast(IntensityTransform):
    """Scale the contrast about the mean: ``(x - mean) * factor + mean`` per sample and channel.

    Args:
        factor: contrast factor, a value or a ``(low, high)`` range.
        p: probability per sample.
        preserve_range: clip the result to the channel's original minimum and maximum.
    """

    frames_as_axis = True  # point-wise: statistics pool over all frames

    def __init__(
        self,
        factor: float | Sequence[float] = (0.75, 1.25),
        p: float = 1.0,
        *,
        preserve_range: bool = True,
    ) -> None:
        _check("factor", factor, above=0.0, strict=False)
        self.factor, self.p, self.preserve_range = factor, p, preserve_range

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        applied = self._coin(b, generator)
        factor = _draw(self.factor, (b,), generator)
        return {"applied": applied, "factor": torch.where(applied, factor, 1.0)}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        def contrast(x: torch.Tensor, sel) -> torch.Tensor:
            factor = _per_sample(params["factor"][sel], x)
            mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
            out = torch.addcmul(mean * (1 - factor), x, factor)
            if self.preserve_range:
                low, high = minmax(x)
                out = out.clamp_(low, high)
            return out

        return _where_applied(image, params["applied"], contrast)


class Brightness(IntensityTransform):
    """Shift intensities by ``delta`` (or scale them by ``1 + delta``), drawn per sample.

    Args:
        delta: shift in intensity units (or relative change), a value or a ``(low, high)`` range.
        p: probability per sample.
        multiplicative: multiply by ``1 + delta`` instead of adding ``delta``.
    """

    frames_as_axis = True  # point-wise: statistics pool over all frames

    def __init__(
        self,
        delta: float | Sequence[float] = (-0.1, 0.1),
        p: float = 1.0,
        *,
        multiplicative: bool = False,
    ) -> None:
        _check("delta", delta, above=-math.inf, strict=False)
        self.delta, self.p, self.multiplicative = delta, p, multiplicative

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b = batch.batch_size
        applied = self._coin(b, generator)
        delta = _draw(self.delta, (b,), generator)
        return {"applied": applied, "delta": torch.where(applied, delta, 0.0)}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        applied = params["applied"]
        if not bool(applied.any()):
            return image
        delta = params["delta"]
        if self.multiplicative:
            return image * _per_sample(1 + delta, image)  # x * 1.0 == x exactly
        # x + (-0.0) == x bit for bit (x + 0.0 would turn -0.0 into 0.0)
        return image + _per_sample(torch.where(applied, delta, -0.0), image)


class BiasField(IntensityTransform):
    """A smooth multiplicative field ``exp(sum_m c_m * prod_k u_k ** e_mk)``, as in TorchIO.

    The sum runs over every monomial of total degree at most ``order`` in the coordinates ``u_k``,
    which span [-1, 1] along each spatial axis; one field per sample, shared by its channels.

    Args:
        coefficients: a number ``c`` draws every coefficient in ``[-c, c]``; a ``(low, high)``
            pair gives the range.
        order: highest total degree of the polynomial.
        p: probability per sample.
    """

    def __init__(
        self, coefficients: float | Sequence[float] = 0.5, order: int = 3, p: float = 1.0
    ) -> None:
        if int(order) != order or order < 0:
            raise ValueError(f"order must be a non-negative integer, got {order!r}")
        if isinstance(coefficients, (int, float)):
            coefficients = (-abs(float(coefficients)), abs(float(coefficients)))
        _check("coefficients", coefficients, above=-math.inf, strict=False)
        self.coefficients, self.order, self.p = coefficients, int(order), p

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b, n = batch.batch_size, batch.spatial_dims
        applied = self._coin(b, generator)
        count = len(_filters.monomials(self.order, n))
        coefficients = _draw(self.coefficients, (b, count), generator)
        return {
            "applied": applied,
            "coefficients": torch.where(applied[:, None], coefficients, 0.0),
        }

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        exponents = _filters.monomials(self.order, image.ndim - 2)

        def bias(x: torch.Tensor, sel) -> torch.Tensor:
            field = _filters.polynomial_field(
                params["coefficients"][sel], exponents, x.shape[2:], device=x.device, dtype=x.dtype
            )
            return x * field.exp_()

        return _where_applied(image, params["applied"], bias)


class LowResolution(IntensityTransform):
    """Simulate a low-resolution acquisition: downsample by ``zoom``, then resize back.

    As nnU-Net's SimulateLowResolutionTransform: each sample is shrunk to
    ``round(size * zoom)`` voxels per axis and interpolated back to its size, with the values
    :func:`torch.nn.functional.interpolate` gives (``align_corners=False``). Both resizes are
    separable, so each axis is one ``(L, L)`` matrix per sample and the batch needs no loop; every
    mode costs the same.

    Args:
        zoom: relative resolution in (0, 1], a value or a ``(low, high)`` range.
        p: probability per sample.
        per_axis: draw one zoom per spatial axis instead of one per sample.
        downsample: ``nearest`` (as nnU-Net) or ``area`` (averaging).
        upsample: ``cubic`` (as nnU-Net; may overshoot the range a little) or ``linear``.
    """

    def __init__(
        self,
        zoom: float | Sequence[float] = (0.5, 1.0),
        p: float = 1.0,
        *,
        per_axis: bool = False,
        downsample: str = "nearest",
        upsample: str = "cubic",
    ) -> None:
        _check("zoom", zoom, above=0.0, strict=True)
        if _spread(zoom)[1] > 1:
            raise ValueError(f"zoom must be at most 1, got {zoom!r}")
        if downsample not in ("nearest", "area"):
            raise ValueError(f"downsample must be 'nearest' or 'area', got {downsample!r}")
        if upsample not in ("linear", "cubic"):
            raise ValueError(f"upsample must be 'linear' or 'cubic', got {upsample!r}")
        self.zoom, self.p, self.per_axis = zoom, p, per_axis
        self.downsample, self.upsample = downsample, upsample

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        b, n = batch.batch_size, batch.spatial_dims
        applied = self._coin(b, generator)
        zoom = _draw(self.zoom, (b, n if self.per_axis else 1), generator).expand(b, n)
        return {"applied": applied, "zoom": torch.where(applied[:, None], zoom, 1.0)}

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        return _where_applied(image, params["applied"], lambda x, sel: self._low(x, sel, params))

    def _low(self, x: torch.Tensor, sel, params: Params) -> torch.Tensor:
        out = x
        for k, length in enumerate(x.shape[2:]):
            sizes = [max(1, round(length * z)) for z in params["zoom"][sel][:, k].tolist()]
            if all(size == length for size in sizes):
                continue
            matrices = torch.stack([self._matrix(length, size, x.dtype) for size in sizes])
            out = _filters.apply_along(out, matrices, 2 + k)
        return out

    def _matrix(self, length: int, size: int, dtype: torch.dtype) -> torch.Tensor:
        if size == length:
            return torch.eye(length, dtype=dtype)
        down = _filters.resize_matrix(length, size, self.downsample, dtype)
        return _filters.resize_matrix(size, length, self.upsample, dtype) @ down
