"""Smooth test images shared by the transform tests (not a test module)."""

from __future__ import annotations

import numpy as np
import torch


def gaussian_blobs(
    shape, batch=2, sigma=3.5, seed=0, *, count=4, spread=(0.35, 0.65)
) -> torch.Tensor:
    """A sum of ``count`` Gaussian blobs ``(B, 1, *shape)`` centred within ``spread`` of each
    axis: smooth, so linear interpolation error stays small."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    out = np.zeros((batch, 1, *shape))
    for b in range(batch):
        for _ in range(count):
            centre = [rng.uniform(spread[0] * s, spread[1] * s) for s in shape]
            weight = rng.uniform(0.5, 1.0)
            r2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
            out[b, 0] += weight * np.exp(-r2 / (2 * sigma**2))
    return torch.from_numpy(out).float()
