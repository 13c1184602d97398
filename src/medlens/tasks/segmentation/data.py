"""Segmentation data for training: cases brought to the plan's grid once, patches drawn per batch.

:func:`preprocess_case` resamples a case to the plan's grid (its target spacing, or its scale
factor for zoomed acquisitions; linear for the image,
nearest for the label map, on the same grid so they stay aligned) and normalises it as the plan
says, keeping the original geometry so predictions can go back onto the input grid.
:class:`PatchBatches` draws training batches of fixed-size patches from the in-memory cases: a
``foreground_oversampling`` share of the patches is centred on a random voxel of a random
foreground class present in the case (nnU-Net's third), the rest anywhere; cases smaller than the
patch are padded (image 0 after normalisation, label 0 or the ignore label). Patch positions come
from a generator seeded by ``(seed, epoch)``, so resumed training draws the same patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medlens.errors import DatasetError
from medlens.tasks.segmentation.plan import SegmentationPlan

if TYPE_CHECKING:
    from medlens.preprocessing import Preprocessor

__all__ = ["Case", "PatchBatches", "normalise", "normaliser", "padded_crop", "preprocess_case"]


@dataclass
class Case:
    """One preprocessed case: image ``(C, *shape)`` float32, labels ``shape`` int16."""

    id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    foreground: dict[int, np.ndarray] = field(default_factory=dict)  # class -> voxel indices


def normaliser(plan: SegmentationPlan) -> Preprocessor:
    """The plan's intensity normalisation as a fitted :class:`~medlens.preprocessing.Preprocessor`,
    so a run can save it beside its weights and prediction can re-apply it.

    ``"ct"``: :class:`~medlens.preprocessing.PercentileClipZScore` with the plan's clip bounds and
    dataset mean and std (from the fingerprint); ``"zscore"``: a per-image
    :class:`~medlens.preprocessing.ZScore` with float32 statistics, as segmentation runs always
    computed them; ``"none"``: no step.
    """
    from medlens.preprocessing import PercentileClipZScore, Preprocessor, ZScore

    settings = plan.normalisation
    scheme = settings["scheme"]
    if scheme == "ct":
        clip, mean, std = settings["clip"], settings["mean"], settings["std"]
        return Preprocessor([PercentileClipZScore.from_statistics(clip, mean, std)])
    if scheme == "zscore":
        return Preprocessor([ZScore(stats_dtype="float32")])
    return Preprocessor([])


def normalise(array: np.ndarray, plan: SegmentationPlan) -> np.ndarray:
    """Intensity normalisation of ``(C, ...)`` as the plan says (float32), by :func:`normaliser`."""
    from medlens.image import Image

    array = array.astype(np.float32, copy=False)
    prep = normaliser(plan)
    if not prep.steps:
        return array
    # the steps take Images: the channels as a 2D image (every step is per voxel or per channel)
    image = Image(array.reshape(array.shape[0], 1, -1), leading=("channel",))
    return prep.transform(image).array.reshape(array.shape)


def preprocess_case(sample: Any, plan: SegmentationPlan, *, max_foreground: int = 10_000) -> Case:
    """Resample ``sample`` (image and mask) to the plan's grid and normalise it."""
    from medlens.geometry import resample

    image = sample.image
    if image.spatial_dims != plan.spatial_dims:
        raise DatasetError(
            f"{sample.id}: a {image.spatial_dims}D image for a {plan.spatial_dims}D plan"
        )
    meta = {
        "shape": list(image.spatial_shape),
        "spacing": list(image.spacing),
        "origin": list(image.origin),
        "direction": np.asarray(image.direction).tolist(),
    }
    target = plan.grid_spacing(image.spacing)
    meta["grid_spacing"] = list(target)
    same = np.allclose(image.spacing, target, rtol=1e-3)
    moved = image if same else resample(image, spacing=target)
    array = np.asarray(moved.array)
    if "channel" not in moved.leading:
        array = array[None]
    label = None
    foreground: dict[int, np.ndarray] = {}
    if sample.mask is not None:
        mask = sample.mask if same else resample(sample.mask, like=moved)
        label = np.asarray(mask.array).astype(np.int16)
        rng = np.random.default_rng(0)
        for value in plan.label_values:
            if value == 0 or value == plan.ignore_label:
                continue
            where = np.flatnonzero(label.reshape(-1) == value)
            if where.size > max_foreground:  # a sample of positions is enough to centre patches
                where = np.sort(rng.choice(where, max_foreground, replace=False))
            if where.size:
                foreground[int(value)] = where
    return Case(sample.id, normalise(array, plan), label, meta, foreground)


class PatchBatches:
    """Batches ``(images (B, C, *patch), labels (B, 1, *patch))`` of patches from ``cases``.

    An epoch is ``batches_per_epoch`` batches (patch training has no natural epoch).
    """

    def __init__(
        self,
        cases: list[Case],
        patch_size: tuple[int, ...],
        batch_size: int,
        *,
        batches_per_epoch: int = 50,
        foreground_oversampling: float = 0.33,
        ignore_label: int | None = None,
        seed: int = 0,
        augment: Any = None,
    ) -> None:
        if not cases:
            raise DatasetError("no training cases")
        if any(case.label is None for case in cases):
            raise DatasetError("every training case needs a label map")
        self.cases = cases
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch)
        self.oversampling = float(foreground_oversampling)
        self.pad_label = 0 if ignore_label is None else int(ignore_label)
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0
        self.task = "segmentation"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches_per_epoch):
            images, labels = [], []
            for slot in range(self.batch_size):
                case = self.cases[int(rng.integers(len(self.cases)))]
                # the last share of each batch is forced onto foreground, as nnU-Net does
                forced = slot >= round(self.batch_size * (1 - self.oversampling))
                image, label = self._patch(case, rng, forced)
                images.append(image)
                labels.append(label)
            x = torch.from_numpy(np.stack(images))
            y = torch.from_numpy(np.stack(labels)[:, None].astype(np.int64))
            if self.augment is not None:
                x, y = self.augment(x, y, generator)
            yield x, y

    def _patch(self, case: Case, rng: np.random.Generator, forced: bool):
        shape = case.image.shape[1:]
        patch = self.patch_size
        if forced and case.foreground:
            value = list(case.foreground)[int(rng.integers(len(case.foreground)))]
            flat = case.foreground[value][int(rng.integers(case.foreground[value].size))]
            centre = np.unravel_index(flat, shape)
            start = [int(c) - p // 2 for c, p in zip(centre, patch, strict=True)]
        else:
            start = [int(rng.integers(min(0, s - p), max(0, s - p) + 1))
                     for s, p in zip(shape, patch, strict=True)]  # fmt: skip
        image = padded_crop(case.image, start, patch, 0.0, np.float32)
        label = padded_crop(case.label, start, patch, self.pad_label, np.int16)
        return image, label


def padded_crop(array: np.ndarray, start, size, fill, dtype) -> np.ndarray:
    """The window ``start .. start + size`` of the last ``len(size)`` axes of ``array``, as
    ``dtype``, filled with ``fill`` where the window leaves the array (any leading axes kept)."""
    out = np.full((*array.shape[: array.ndim - len(size)], *size), fill, dtype=dtype)
    src, dst = [], []
    for begin, length, side in zip(start, size, array.shape[array.ndim - len(size) :], strict=True):
        lo, hi = max(begin, 0), min(begin + length, side)
        src.append(slice(lo, hi))
        dst.append(slice(lo - begin, hi - begin))
    out[(..., *dst)] = array[(..., *src)]
    return out
