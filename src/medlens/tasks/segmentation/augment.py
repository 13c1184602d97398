"""Training augmentation of segmentation patches with the batched transform engine.

The image and its label map move together (labels by nearest neighbour, never blended), in one
resampling for the whole spatial chain. The mix follows what works for nnU-Net: rotation and
scaling, flips along every axis, Gaussian noise, brightness and contrast, gamma, and simulated low
resolution; each with its own probability.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["segmentation_augment"]


def segmentation_augment(
    spatial_dims: int,
    *,
    anisotropic_axis: int | None = None,
    scale: float = 0.15,
    rotate: float = 15.0,
    p: float = 0.3,
) -> Any:
    """``augment(images, labels, generator) -> (images, labels)`` for patch batches.

    Args:
        spatial_dims: 2 or 3.
        anisotropic_axis: an array axis with much coarser spacing: rotations stay in the plane
            of the other two (rotating thick slices through each other invents anatomy).
        scale, rotate, p: the spatial step (the plan's ``augmentation``): with probability
            ``p``, scaled by up to ``scale`` either way and rotated by up to ``rotate`` degrees.
    """
    from medlens.transforms import (
        Batch,
        Brightness,
        Compose,
        Contrast,
        Gamma,
        GaussianNoise,
        RandomAffine,
        RandomFlip,
    )

    angles: Any = rotate
    if spatial_dims == 3 and anisotropic_axis is not None:
        angles = [0.0, 0.0, 0.0]
        angles[anisotropic_axis] = rotate  # about the coarse axis only: in-plane rotation
    steps = [
        RandomAffine(rotate=angles, scale=scale, p=p),
        RandomFlip(axes=tuple(range(spatial_dims)), p=0.5),
        GaussianNoise(std=0.1, p=0.15),
        Brightness(delta=(-0.15, 0.15), p=0.15),
        Contrast(factor=(0.75, 1.25), p=0.15),
        Gamma(p=0.15, retain_stats=True),
    ]

    def augment(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        out = Compose(steps, generator=generator)(Batch(image=images, label=labels))
        return out["image"], out["label"]

    return augment
