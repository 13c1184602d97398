"""Batched transforms on ``(B, C, [D,] H, W)`` tensors (``(B, T, C, ...)`` sequences), CPU or GPU,
2D and 3D; a :class:`Batch` names its fields' kinds (image, label, spatial, displacement, boxes,
points) so that each transform knows what to move and what to leave alone.

Each transform samples its parameters from an explicit generator and applies them
deterministically; :class:`Compose` records them (``batch.trace``) for replay and inversion and
resamples a run of spatial transforms once.
"""

from __future__ import annotations

from medlens.transforms.base import Compose, IntensityTransform, SpatialTransform, Step, Transform
from medlens.transforms.batch import Batch, boxes_from_mask
from medlens.transforms.intensity import (
    BiasField,
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    LowResolution,
    Sharpen,
    ZScore,
)
from medlens.transforms.spatial import (
    Affine,
    RandomAffine,
    RandomCrop,
    RandomElastic,
    RandomFlip,
    RandomRot90,
)
from medlens.transforms.temporal import (
    FrameRateJitter,
    RandomReverse,
    RandomStart,
    TemporalTransform,
)

__all__ = [
    "Affine",
    "Batch",
    "BiasField",
    "Brightness",
    "Compose",
    "Contrast",
    "FrameRateJitter",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "IntensityTransform",
    "LowResolution",
    "RandomAffine",
    "RandomCrop",
    "RandomElastic",
    "RandomFlip",
    "RandomReverse",
    "RandomRot90",
    "RandomStart",
    "Sharpen",
    "SpatialTransform",
    "Step",
    "TemporalTransform",
    "Transform",
    "ZScore",
    "boxes_from_mask",
]
