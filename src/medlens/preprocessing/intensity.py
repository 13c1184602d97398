"""Intensity normalisation: z-score, dataset-fitted percentile clipping, CT windows, min-max.

Every step takes an :class:`~medlens.image.Image` (statistics per channel when the image has a
``"channel"`` axis, otherwise over all voxels) or a torch tensor ``(B, C, ...)`` (statistics per
sample and channel), and returns the same kind with float values (float32 for images). Label maps
are refused: they hold classes, not intensities.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from medlens.errors import GeometryError, MedlensError
from medlens.image import Image, Role
from medlens.preprocessing.pipeline import FittedStep, Step, register_step

__all__ = ["CT_WINDOWS", "CTWindow", "MinMax", "PercentileClipZScore", "ZScore"]

#: CT display windows as (centre/level, width) in Hounsfield units, the usual radiology values.
#: Bone uses 400/1800 (the wide "bone" window of most PACS presets); the narrower 300/1500 is a
#: common alternative, available as ``CTWindow(center=300, width=1500)``.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
}


# ----------------------------------------------------------------------------- z-score
@register_step
class ZScore(Step):
    """Subtract the mean and divide by the standard deviation, per image.

    Args:
        nonzero: compute the statistics over non-zero voxels only and leave zeros at zero (the
            usual choice for skull-stripped MR, where zero means "outside the head").
        eps: smallest standard deviation divided by; a constant image becomes all zeros.
        stats_dtype: ``"float64"`` accumulates the mean and standard deviation in float64;
            ``"float32"`` computes them as NumPy does on the float32 voxels, the way segmentation
            runs always normalised (kept so their inputs stay bit-identical).

    A ``mask`` given to :meth:`transform` restricts the statistics to the mask's voxels; every
    voxel is then normalised with them. An empty mask raises :class:`MedlensError`.
    """

    def __init__(
        self, nonzero: bool = False, eps: float = 1e-8, stats_dtype: str = "float64"
    ) -> None:
        self.nonzero = nonzero
        self.eps = eps
        self.stats_dtype = stats_dtype

    def transform(self, image: Any, mask: Any = None) -> Any:
        if self.stats_dtype not in ("float64", "float32"):
            raise ValueError(f"stats_dtype: 'float64' or 'float32', not {self.stats_dtype!r}")
        rows, restore, where = _to_rows(image, self)
        masks = _mask_rows(mask, image, rows, where)
        if self.nonzero:
            nz = rows != 0
            masks = nz if masks is None else masks & nz
        stats = []
        for g in range(rows.shape[0]):
            values = rows[g] if masks is None else rows[g][masks[g]]
            if values.shape[0] == 0:
                what = "mask" if mask is not None else "non-zero region"
                raise MedlensError(f"ZScore: the {what} is empty, no voxels to normalise", where)
            mean, std = _mean_std(values, self.stats_dtype)
            stats.append((mean, max(std, self.eps)))
        mean, std = _columns(stats, rows)
        out = (rows - mean) / std
        if self.nonzero:
            out = _where(rows != 0, out, 0.0)
        return restore(out)


# ----------------------------------------------------------------------------- fitted
@register_step
class PercentileClipZScore(FittedStep):
    """Clip to dataset percentiles, then z-score with dataset statistics (nnU-Net's CT scheme).

    :meth:`fit` pools foreground voxels of several images (at most ``samples_per_image`` drawn
    from each with a seeded generator, so memory stays bounded), learns the ``lower`` and
    ``upper`` percentiles, then the mean and standard deviation of the pooled voxels clipped to
    them (nnU-Net takes them before clipping; after clipping they describe what the network
    sees). :meth:`transform` clips to ``[lower_, upper_]`` and applies ``(x - mean_) / std_``.

    Args:
        lower, upper: percentiles (0-100) for the clipping bounds.
        samples_per_image: voxels sampled per image; ``None`` uses every foreground voxel.
        seed: seed of the voxel sampling.
        eps: smallest standard deviation divided by.

    Learned attributes: ``lower_``, ``upper_``, ``mean_``, ``std_``, ``n_voxels_`` (voxels pooled).
    """

    learned = ("lower_", "upper_", "mean_", "std_", "n_voxels_")

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        samples_per_image: int | None = 10_000,
        seed: int = 0,
        eps: float = 1e-8,
    ) -> None:
        self.lower = lower
        self.upper = upper
        self.samples_per_image = samples_per_image
        self.seed = seed
        self.eps = eps

    @classmethod
    def from_statistics(
        cls,
        clip: Sequence[float],
        mean: float,
        std: float,
        *,
        n_voxels: int | None = None,
        **params: Any,
    ) -> PercentileClipZScore:
        """A fitted step from statistics computed elsewhere (a segmentation plan's
        fingerprint), so a plan's CT normalisation is this step without refitting."""
        low, high = (float(v) for v in clip)
        step = cls(**params)
        step.lower_, step.upper_ = low, high
        step.mean_, step.std_ = float(mean), float(std)
        step.n_voxels_ = None if n_voxels is None else int(n_voxels)
        return step

    def fit(self, images: Iterable[Image], masks: Iterable[Any] | None = None):
        """Learn the bounds and statistics; ``masks`` (one per image, or None) mark foreground.

        Without masks every voxel counts. Images whose mask is empty are skipped; if no image has
        any foreground voxel, :class:`MedlensError` says so.
        """
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")
        rng = np.random.default_rng(self.seed)
        images = list(images)
        mask_list = [None] * len(images) if masks is None else list(masks)
        if len(mask_list) != len(images):
            raise ValueError(f"got {len(mask_list)} masks for {len(images)} images")
        pooled, empty = [], 0
        for image, mask in zip(images, mask_list, strict=True):
            values = _foreground_values(image, mask, self)
            if values.size == 0:
                empty += 1
                continue
            if self.samples_per_image is not None and values.size > self.samples_per_image:
                values = values[rng.choice(values.size, int(self.samples_per_image), replace=False)]
            pooled.append(values.astype(np.float64))
        if not pooled:
            raise MedlensError(
                f"PercentileClipZScore: no foreground voxels in any of the {len(images)} images "
                f"({empty} empty masks): nothing to fit"
            )
        voxels = np.concatenate(pooled)
        lower, upper = np.percentile(voxels, [self.lower, self.upper])
        clipped = np.clip(voxels, lower, upper)
        self.lower_ = float(lower)
        self.upper_ = float(upper)
        self.mean_ = float(clipped.mean())
        self.std_ = float(clipped.std())
        self.n_voxels_ = int(voxels.size)
        return self

    def transform(self, image: Any) -> Any:
        self.check_fitted()
        rows, restore, _ = _to_rows(image, self, check_finite=False)
        out = _clip(rows, self.lower_, self.upper_)
        return restore((out - self.mean_) / max(self.std_, self.eps))


# ----------------------------------------------------------------------------- windows / range
@register_step
class CTWindow(Step):
    """Map a CT window to ``[0, 1]``: ``center - width/2`` -> 0, ``center + width/2`` -> 1.

    Args:
        preset: a name in :data:`CT_WINDOWS` (``"lung"``, ``"soft_tissue"``/``"abdomen"``,
            ``"bone"``, ``"brain"``, ``"mediastinum"``, ``"liver"``), or None with
            ``center`` and ``width`` in Hounsfield units.
        clip: clip to ``[0, 1]`` (values outside the window saturate, as on a display).
    """

    def __init__(
        self,
        preset: str | None = None,
        center: float | None = None,
        width: float | None = None,
        clip: bool = True,
    ) -> None:
        self.preset = preset
        self.center = center
        self.width = width
        self.clip = clip

    def window(self) -> tuple[float, float]:
        """``(center, width)`` in HU."""
        if self.preset is not None:
            if self.center is not None or self.width is not None:
                raise ValueError("give a preset or center and width, not both")
            key = self.preset.lower().replace(" ", "_").replace("-", "_")
            if key not in CT_WINDOWS:
                raise ValueError(
                    f"unknown CT window {self.preset!r}; presets: {', '.join(CT_WINDOWS)}"
                )
            return CT_WINDOWS[key]
        if self.center is None or self.width is None:
            raise ValueError("CTWindow needs a preset, or both center and width")
        if not self.width > 0:
            raise ValueError(f"window width must be positive, got {self.width}")
        return float(self.center), float(self.width)

    def transform(self, image: Any) -> Any:
        center, width = self.window()
        rows, restore, _ = _to_rows(image, self, check_finite=False)
        out = (rows - (center - width / 2.0)) / width
        return restore(_clip(out, 0.0, 1.0) if self.clip else out)


@register_step
class MinMax(Step):
    """Rescale each image linearly so its minimum and maximum land on ``out_range``.

    Args:
        out_range: ``(low, high)`` of the output.
        percentiles: ``(low, high)`` percentiles (0-100) used instead of the minimum and maximum;
            values beyond them are clipped, so one hot pixel does not squash the rest.
        clip: clip to the range (default); ``False`` maps linearly beyond it too (registration
            compares images scaled so, keeping the contrast of what lies beyond the percentiles).

    A constant image maps to ``out_range[0]``.
    """

    def __init__(
        self,
        out_range: Sequence[float] = (0.0, 1.0),
        percentiles: Sequence[float] | None = None,
        clip: bool = True,
    ) -> None:
        self.out_range = out_range
        self.percentiles = percentiles
        self.clip = clip

    def transform(self, image: Any) -> Any:
        low, high = (float(v) for v in self.out_range)
        rows, restore, _ = _to_rows(image, self)
        stats = []
        for g in range(rows.shape[0]):
            if self.percentiles is None:
                stats.append(_min_max(rows[g]))
            else:
                p_low, p_high = (float(p) for p in self.percentiles)
                if not 0 <= p_low < p_high <= 100:
                    raise ValueError(f"need 0 <= low < high <= 100, got {self.percentiles}")
                stats.append(_percentiles(rows[g], (p_low, p_high)))
        vmin, vmax = _columns(stats, rows)
        scale = _where(vmax > vmin, (high - low) / _where(vmax > vmin, vmax - vmin, 1.0), 0.0)
        kept = _clip(rows, vmin, vmax) if self.clip else rows
        return restore((kept - vmin) * scale + low)


# ----------------------------------------------------------------------------- shared helpers
# Images and tensors are handled as "rows": a float 2D array or tensor ``(groups, voxels)`` with
# one row per channel (image) or per sample and channel (tensor), plus a function putting rows
# back into the input's shape and type. The same code then serves NumPy and torch.
def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_rows(data: Any, step: Step, *, check_finite: bool = True) -> tuple[Any, Callable, Any]:
    """``(rows, restore, where)``; ``where`` names the image in error messages."""
    name = type(step).__name__
    if _is_tensor(data):
        if data.ndim < 3:
            raise ValueError(f"{name} takes tensors shaped (B, C, ...), got {tuple(data.shape)}")
        tensor = data if data.is_floating_point() else data.float()
        rows = tensor.reshape(data.shape[0] * data.shape[1], -1)
        if check_finite and not bool(rows.isfinite().all()):
            raise MedlensError(f"{name}: the tensor contains NaN or infinite values")
        return rows, lambda out: out.reshape(data.shape), "tensor"
    if not isinstance(data, Image):
        raise TypeError(f"{name} takes an Image or a torch tensor (B, C, ...), got {type(data)}")
    _check_image(data, step, check_finite=check_finite)
    where = data.meta.get("path")
    array = data.array
    channel = data.leading.index("channel") if "channel" in data.leading else None
    if channel is not None:
        array = np.moveaxis(array, channel, 0)
    moved_shape = array.shape
    groups = moved_shape[0] if channel is not None else 1
    # float32 output; statistics are accumulated in float64
    rows = array.reshape(groups, -1).astype(np.float32)

    def restore(out: np.ndarray) -> Image:
        out = np.asarray(out, dtype=np.float32).reshape(moved_shape)
        if channel is not None:
            out = np.moveaxis(out, 0, channel)
        return data.with_array(np.ascontiguousarray(out))

    return rows, restore, where


def _check_image(image: Image, step: Step, *, check_finite: bool = True) -> None:
    """Refuse label maps, and NaN or infinite voxels where statistics will be computed."""
    name = type(step).__name__
    if image.role is Role.LABEL:
        raise ValueError(f"{name} changes intensities; it does not apply to label maps")
    array = image.array
    if check_finite and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise MedlensError(
            f"{name}: image contains NaN or infinite values; cannot compute statistics",
            image.meta.get("path"),
        )


def _mask_rows(mask: Any, data: Any, rows: Any, where: Any) -> Any:
    """A boolean mask broadcast to ``rows`` (None stays None)."""
    if mask is None:
        return None
    if _is_tensor(rows):
        import torch

        m = mask if _is_tensor(mask) else torch.as_tensor(np.asarray(mask))
        m = m.to(rows.device) != 0
        return m.expand(data.shape).reshape(rows.shape)
    if isinstance(mask, Image):
        data.check_same_grid(mask, name=mask.meta.get("path") or "mask")
        mask = mask.array
    mask = np.asarray(mask) != 0
    if mask.shape != data.spatial_shape:
        raise GeometryError(
            f"mask shape {mask.shape} differs from the image's {data.spatial_shape}", where
        )
    per_group = rows.shape[1] // mask.size
    return np.broadcast_to(np.tile(mask.reshape(-1), per_group), rows.shape)


def _foreground_values(image: Image, mask: Any, step: Step) -> np.ndarray:
    """The image's voxels inside ``mask`` (all voxels without one), as a 1D array."""
    if not isinstance(image, Image):
        raise TypeError(f"{type(step).__name__}.fit takes Images, got {type(image)}")
    rows, _, where = _to_rows(image, step)
    masks = _mask_rows(mask, image, rows, where)
    return rows.reshape(-1) if masks is None else rows[masks]


def _mean_std(values: Any, dtype: str = "float64") -> tuple[float, float]:
    """Mean and (population) standard deviation, accumulated in ``dtype``."""
    if _is_tensor(values):
        v = values.double() if dtype == "float64" else values.float()
        return float(v.mean()), float(v.std(correction=0))
    if dtype == "float32":  # NumPy's float32 reductions, as ``array.mean()`` gives them
        values = values.astype(np.float32, copy=False)
        return float(values.mean()), float(values.std())
    return float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))


def _min_max(values: Any) -> tuple[float, float]:
    if _is_tensor(values):
        return float(values.min()), float(values.max())
    return float(values.min()), float(values.max())


def _percentiles(values: Any, qs: Sequence[float]) -> tuple[float, ...]:
    """NumPy's default (linear) percentiles, for arrays and tensors of any size."""
    if not _is_tensor(values):
        return tuple(float(v) for v in np.percentile(values, qs))
    n = values.numel()
    out = []
    for q in qs:
        position = q / 100.0 * (n - 1)
        lo = int(np.floor(position))
        hi = min(lo + 1, n - 1)
        v_lo = float(values.kthvalue(lo + 1).values)
        v_hi = float(values.kthvalue(hi + 1).values) if hi != lo else v_lo
        out.append(v_lo + (position - lo) * (v_hi - v_lo))
    return tuple(out)


def _columns(stats: list[tuple[float, ...]], like: Any) -> tuple[Any, ...]:
    """Per-group statistics as ``(groups, 1)`` columns of ``like``'s kind."""
    table = np.asarray(stats, dtype=np.float64).T[:, :, None]
    if _is_tensor(like):
        import torch

        return tuple(torch.as_tensor(c, dtype=like.dtype, device=like.device) for c in table)
    return tuple(c.astype(np.float32) for c in table)


def _clip(x: Any, low: Any, high: Any) -> Any:
    if _is_tensor(x):
        import torch

        low = torch.as_tensor(low, dtype=x.dtype, device=x.device)
        high = torch.as_tensor(high, dtype=x.dtype, device=x.device)
        return torch.minimum(torch.maximum(x, low), high)
    return np.clip(x, np.float32(low) if np.isscalar(low) else low, high)


def _where(condition: Any, a: Any, b: Any) -> Any:
    if _is_tensor(condition):
        import torch

        if not _is_tensor(a):
            a = torch.as_tensor(a, dtype=torch.float32, device=condition.device)
        b = torch.as_tensor(b, dtype=a.dtype, device=a.device) if not _is_tensor(b) else b
        return torch.where(condition, a, b)
    return np.where(condition, a, np.float32(b) if np.isscalar(b) else b)
