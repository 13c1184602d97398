"""Deterministic image enhancement: contrast, brightness, gamma, unsharp masking and CLAHE.

These are the deterministic halves of intensity augmentations (a random transform samples their
parameters) and optional preprocessing for low-contrast modalities such as ultrasound and X-ray.
Contrast, brightness and gamma also take torch tensors ``(B, C, ...)``; sharpening and CLAHE work
on images (SciPy and scikit-image). Statistics are per channel, as in
:mod:`medlens.preprocessing.intensity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.image import Image
from medlens.preprocessing.intensity import (
    _check_image,
    _columns,
    _mean_std,
    _min_max,
    _to_rows,
    _where,
)
from medlens.preprocessing.pipeline import Step, register_step

__all__ = ["CLAHE", "Brightness", "Contrast", "Gamma", "Sharpen"]


@register_step
class Contrast(Step):
    """Scale deviations from the image's mean: ``mean + factor * (x - mean)``.

    ``factor`` > 1 increases contrast, < 1 reduces it, 0 gives a flat image at the mean.
    """

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def transform(self, image: Any) -> Any:
        rows, restore, _ = _to_rows(image, self)
        stats = [(_mean_std(rows[g])[0],) for g in range(rows.shape[0])]
        (mean,) = _columns(stats, rows)
        return restore(mean + float(self.factor) * (rows - mean))


@register_step
class Brightness(Step):
    """Add ``delta`` to every voxel (in the image's units: HU for CT, [0, 1] after MinMax)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta

    def transform(self, image: Any) -> Any:
        rows, restore, _ = _to_rows(image, self, check_finite=False)
        return restore(rows + float(self.delta))


@register_step
class Gamma(Step):
    """Gamma correction: values mapped to [0, 1] by the image's min and max, raised to
    ``gamma``, then mapped back to the original range (so the range is kept).

    ``gamma`` < 1 brightens dark regions, > 1 darkens them; a constant image is unchanged.
    """

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def transform(self, image: Any) -> Any:
        if not float(self.gamma) > 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")
        rows, restore, _ = _to_rows(image, self)
        vmin, vmax = _columns([_min_max(rows[g]) for g in range(rows.shape[0])], rows)
        span = vmax - vmin
        unit = (rows - vmin) / _where(span > 0, span, 1.0)
        return restore(unit ** float(self.gamma) * span + vmin)


@register_step
class Sharpen(Step):
    """Unsharp masking: ``x + amount * (x - gaussian_filter(x, sigma))``.

    Args:
        amount: strength; 0 changes nothing.
        sigma: Gaussian standard deviation in voxels, one value or one per index axis
            ``(x, y[, z])``. Leading (channel/time) axes are never blurred across.
    """

    def __init__(self, amount: float = 1.0, sigma: float | Sequence[float] = 1.0) -> None:
        self.amount = amount
        self.sigma = sigma

    def transform(self, image: Image) -> Image:
        from scipy import ndimage

        if not isinstance(image, Image):
            raise TypeError("Sharpen takes an Image (it runs SciPy on the voxel array)")
        _check_image(image, self)
        n = image.spatial_dims
        sigma = np.broadcast_to(np.asarray(self.sigma, dtype=float), (n,))[::-1]  # array order
        sigma = (0.0,) * len(image.leading) + tuple(float(s) for s in sigma)
        array = image.array.astype(np.float32)
        blurred = ndimage.gaussian_filter(array, sigma=sigma)
        return image.with_array(array + np.float32(self.amount) * (array - blurred))


@register_step
class CLAHE(Step):
    """Contrast-limited adaptive histogram equalisation, by scikit-image
    (``skimage.exposure.equalize_adapthist``), in 2D or 3D.

    8- and 16-bit unsigned images go to scikit-image as they are; other images are first scaled
    to [0, 1] by their min and max (scikit-image needs that range for floats). The output is float
    in [0, 1]. Channels are equalised one by one.

    Args:
        clip_limit: contrast limit in (0, 1]; higher gives more contrast.
        kernel_size: contextual region size in voxels, one value or one per index axis
            ``(x, y[, z])``; None lets scikit-image choose (1/8 of each axis).
        nbins: histogram bins.
    """

    def __init__(
        self,
        clip_limit: float = 0.01,
        kernel_size: int | Sequence[int] | None = None,
        nbins: int = 256,
    ) -> None:
        self.clip_limit = clip_limit
        self.kernel_size = kernel_size
        self.nbins = nbins

    def transform(self, image: Image) -> Image:
        from skimage import exposure

        if not isinstance(image, Image):
            raise TypeError("CLAHE takes an Image (it runs scikit-image on the voxel array)")
        _check_image(image, self)
        kernel = self.kernel_size
        if kernel is not None and not np.isscalar(kernel):
            kernel = [int(k) for k in kernel][::-1]  # index order -> array order
        spatial = image.spatial_shape
        if len(spatial) == 3 and spatial[-1] in (3, 4):
            # scikit-image would take the last axis for RGB(A) colour channels
            raise ValueError(
                f"CLAHE cannot equalise a volume whose x axis has {spatial[-1]} voxels"
            )
        flat = image.array.reshape((-1, *spatial))
        out = np.empty(flat.shape, dtype=np.float32)
        for c in range(flat.shape[0]):
            channel = flat[c]
            if channel.dtype not in (np.uint8, np.uint16):
                channel = _unit_range(channel)
            out[c] = exposure.equalize_adapthist(
                channel, kernel_size=kernel, clip_limit=float(self.clip_limit), nbins=self.nbins
            )
        return image.with_array(out.reshape(image.array.shape))


def _unit_range(array: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min and max (float64); a constant array becomes zeros."""
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)
