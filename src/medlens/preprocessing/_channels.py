"""Per-channel z-score with dataset statistics: the classification tasks' input normalisation.

:class:`ChannelZScore` learns one mean and one standard deviation per channel from a training
set, the way :func:`medlens.tasks.classification.plan.fit_normaliser` always has (so existing
runs keep their numbers), and applies ``(x - mean) / std`` per channel. 8-bit inputs are scaled
to ``[0, 1]`` first, both when fitting and when transforming, so the statistics describe what the
network sees. The classifier's weights carry the same numbers (its ``mean``/``std`` buffers); the
step is the saved, readable description of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.preprocessing.intensity import _is_tensor, _to_rows
from medlens.preprocessing.pipeline import FittedStep, register_step

__all__ = ["ChannelZScore"]

_UINT8 = ("uint8", "torch.uint8")


@register_step
class ChannelZScore(FittedStep):
    """Subtract a dataset mean and divide by a dataset standard deviation, per channel.

    Args:
        sample: about how many images :meth:`fit` reads: every ``N // sample``-th of ``N``
            images (all of them when ``N < 2 * sample``), so large datasets fit quickly.
        scale_uint8: divide 8-bit (``uint8``) images by 255 before fitting and transforming.
        eps: smallest standard deviation learned; a constant channel is not divided by zero.

    Learned attributes: ``mean_`` and ``std_``, lists with one float per channel.
    """

    learned = ("mean_", "std_")

    def __init__(self, sample: int = 4096, scale_uint8: bool = True, eps: float = 1e-6) -> None:
        self.sample = sample
        self.scale_uint8 = scale_uint8
        self.eps = eps

    @classmethod
    def from_normalisation(cls, normalisation: Mapping[str, Any]) -> ChannelZScore:
        """The fitted step a classification ``run.json`` describes in ``"normalisation"``
        (``mean``, ``std`` and ``scale_uint8``: 1/255, or absent/None for no scaling)."""
        step = cls(scale_uint8=normalisation.get("scale_uint8") is not None)
        step.mean_ = [float(m) for m in normalisation["mean"]]
        step.std_ = [float(s) for s in normalisation["std"]]
        if len(step.mean_) != len(step.std_):
            raise ValueError(f"{len(step.mean_)} means for {len(step.std_)} standard deviations")
        return step

    def fit(self, images: Any, masks: Iterable[Any] | None = None) -> ChannelZScore:
        """Learn per-channel statistics over every voxel of the sampled images.

        ``images``: an array ``(N, C, ...)`` (a classification training set), or Images (or
        ``(C, ...)`` arrays), one per case, of any size. ``masks`` are not used: the network
        sees every voxel, so every voxel counts.
        """
        if isinstance(images, np.ndarray):
            if images.ndim < 3 or images.shape[0] == 0:
                raise ValueError(f"fit takes images shaped (N, C, ...), got {images.shape}")
            step = max(1, images.shape[0] // int(self.sample))
            values = images[::step].astype(np.float64)
            if self.scale_uint8 and images.dtype == np.uint8:
                values /= 255.0
            return self._learn(values, axes=(0, *range(2, values.ndim)))
        arrays = [_channels_first(image, self) for image in images]
        if not arrays:
            raise MedlensError("ChannelZScore: no images to fit")
        channels = {a.shape[0] for a in arrays}
        if len(channels) > 1:
            raise MedlensError(f"ChannelZScore: images with {sorted(channels)} channels")
        step = max(1, len(arrays) // int(self.sample))
        sampled = [self._scaled(a) for a in arrays[::step]]
        if len({a.shape for a in sampled}) == 1:  # one size: exactly as for an (N, C, ...) array
            values = np.stack(sampled)
            return self._learn(values, axes=(0, *range(2, values.ndim)))
        values = np.concatenate([a.reshape(a.shape[0], -1) for a in sampled], axis=1)
        return self._learn(values, axes=(1,))

    def transform(self, image: Any) -> Any:
        """``(x - mean_) / std_`` per channel of an Image or a tensor ``(B, C, ...)`` (float32,
        as the classifier computes it: 8-bit input divided by 255 in float32 first)."""
        self.check_fitted()
        rows, restore, where = _to_rows(image, self, check_finite=False)
        tensor = _is_tensor(image)
        if self.scale_uint8 and str(image.dtype if tensor else image.array.dtype) in _UINT8:
            rows = rows / 255.0
        channels, batch = (image.shape[1], image.shape[0]) if tensor else (rows.shape[0], 1)
        if channels != len(self.mean_):
            raise MedlensError(
                f"ChannelZScore was fitted on {len(self.mean_)} channel(s), got {channels}", where
            )
        mean = np.tile(np.asarray(self.mean_, np.float32), batch)[:, None]
        std = np.tile(np.asarray(self.std_, np.float32), batch)[:, None]
        if tensor:
            import torch

            mean = torch.as_tensor(mean, device=rows.device)
            std = torch.as_tensor(std, device=rows.device)
        return restore((rows - mean) / std)

    # ------------------------------------------------------------------ helpers
    def _scaled(self, array: np.ndarray) -> np.ndarray:
        values = array.astype(np.float64)
        if self.scale_uint8 and array.dtype == np.uint8:
            values /= 255.0
        return values

    def _learn(self, values: np.ndarray, axes: tuple[int, ...]) -> ChannelZScore:
        """float64 statistics over ``axes`` (all but the channel axis), std floored at eps."""
        mean = values.mean(axis=axes)
        std = values.std(axis=axes)
        self.mean_ = [float(m) for m in mean]
        self.std_ = [float(max(s, self.eps)) for s in std]
        return self


def _channels_first(image: Any, step: ChannelZScore) -> np.ndarray:
    """An Image's voxels as ``(C, ...)`` (a ``(1, ...)`` array for single-channel images)."""
    if isinstance(image, Image):
        if image.is_label:
            raise ValueError("ChannelZScore changes intensities; it does not apply to label maps")
        if "channel" in image.leading:
            return np.moveaxis(image.array, image.leading.index("channel"), 0)
        return image.array[None]
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return image
    raise TypeError(f"{type(step).__name__}.fit takes Images or (C, ...) arrays, got {type(image)}")
