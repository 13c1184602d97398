"""Simulated lesions in real images: a test set where the right answer's location is known.

:func:`simulate_lesions` takes real images (2D or 3D, as from a MedMNIST file) and, in a chosen
share of them, blends in a lesion: an ellipse (ellipsoid in 3D) of random size, elongation and
orientation, brighter or darker than its surroundings, with a soft edge (a logistic profile about
a pixel wide, as partial volume and blurring make real edges) and the image's own texture kept
inside it (the lesion shifts and scales the local intensities instead of painting a flat disc).
The rest of the images stay as they were. A classifier trained to tell the two apart must look at
the lesion, so an attribution map's maximum should fall inside it: the pointing game.

These work in pixels on arrays. For real 3D volumes with their geometry, lesions sized in
millimetres are rendered by :func:`insert_lesions` (from :mod:`medlens.data.lesion_render`, which
the simulated-lesion detection datasets of ``medlens datasets simulate-lesions`` use too); the
random rotation and the soft edge here are that module's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.data.lesion_render import insert_lesions, random_rotation, soft_edge

__all__ = ["insert_lesions", "lesion_npz", "simulate_lesions"]


def simulate_lesions(
    images: np.ndarray,
    *,
    fraction: float = 0.5,
    radius: tuple[float, float] | None = None,
    contrast: tuple[float, float] = (0.25, 0.45),
    edge: float = 0.6,
    seed: int = 0,
) -> dict[str, Any]:
    """Insert lesions into ``fraction`` of ``images`` ``(N, *spatial)`` (uint8 or float).

    Args:
        images: real images, 2D ``(N, H, W)`` or 3D ``(N, D, H, W)``; not modified.
        fraction: share of images that get a lesion (the positives), chosen at random.
        radius: lesion radius range in pixels; default 8-15 % of the smallest side.
        contrast: the lesion's intensity change as a share of the image's 1-99 % range; its sign
            (bright or dark) is drawn per lesion.
        edge: width of the soft edge (logistic scale, pixels).
        seed: everything random.

    Returns:
        ``images`` (same dtype and shape), ``labels`` ``(N,)`` 1 where a lesion was inserted,
        ``masks`` ``(N, *spatial)`` bool (the lesion where its profile is at least 0.5; empty for
        the negatives), ``centres`` ``(N, ndim)`` (NaN for the negatives).
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W) or (N, D, H, W), got {images.shape}")
    rng = np.random.default_rng(seed)
    n, spatial = images.shape[0], images.shape[1:]
    if radius is None:
        side = min(spatial)
        radius = (0.08 * side, 0.15 * side)
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.permutation(n)[: round(fraction * n)]] = 1
    out = images.astype(np.float64)
    masks = np.zeros(images.shape, dtype=bool)
    centres = np.full((n, len(spatial)), np.nan)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in spatial], indexing="ij"))
    for i in np.flatnonzero(labels):
        image = out[i]
        low, high = np.percentile(image, [1, 99])
        span = max(high - low, 1e-6)
        r = rng.uniform(*radius)
        axes = r * rng.uniform(0.75, 1.3, size=len(spatial))
        centre = _centre(image, axes, rng)
        rotation = random_rotation(len(spatial), rng)
        offset = (grid - centre.reshape(-1, *([1] * len(spatial)))).reshape(len(spatial), -1)
        local = (rotation.T @ offset) / axes[:, None]
        distance = np.sqrt((local**2).sum(0)).reshape(spatial)  # 1 on the ellipse
        # signed distance in pixels, approximately, for the soft edge
        profile = soft_edge((distance - 1.0) * axes.mean(), edge)
        sign = rng.choice([-1.0, 1.0])
        delta = sign * rng.uniform(*contrast) * span
        texture = 0.85 + 0.3 * (image - low) / span  # keep the image's texture inside
        out[i] = image + profile * delta * np.clip(texture, 0.5, 1.5)
        masks[i] = profile >= 0.5
        centres[i] = centre
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return {
        "images": out.astype(images.dtype),
        "labels": labels,
        "masks": masks,
        "centres": centres,
    }


def _centre(image: np.ndarray, axes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A centre that keeps the lesion inside the image, preferring tissue over empty background
    (pixels above the image's 20th percentile), drawn at random."""
    margin = np.ceil(axes.max() * 1.3).astype(int)
    spatial = np.array(image.shape)
    lo = np.minimum(margin, spatial // 2)
    hi = np.maximum(spatial - margin, lo + 1)
    threshold = np.percentile(image, 20)
    for _ in range(50):
        c = np.array([rng.integers(a, b) for a, b in zip(lo, hi, strict=True)], dtype=np.float64)
        if image[tuple(c.astype(int))] > threshold:
            return c
    return c


def lesion_npz(
    source: Any, destination: Any, *, copies: int = 2, seed: int = 0, **options: Any
) -> dict[str, np.ndarray]:
    """A MedMNIST-layout ``.npz`` of simulated-lesion images made from a real one.

    Every split of ``source`` (``<split>_images``) is repeated ``copies`` times and passed to
    :func:`simulate_lesions` (half positives); labels are 1 where a lesion was inserted. The file
    is written atomically to ``destination``; returned are the lesion masks per split
    (``<split>_masks``), which the pointing game needs and a classifier must not see.
    """
    import io
    from pathlib import Path

    from medlens._atomic import atomic_write_bytes

    with np.load(Path(source)) as data:
        splits = [k[: -len("_images")] for k in data.files if k.endswith("_images")]
        arrays = {f"{s}_images": np.asarray(data[f"{s}_images"]) for s in splits}
    out: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for k, split in enumerate(splits):
        images = np.concatenate([arrays[f"{split}_images"]] * copies)
        made = simulate_lesions(images, seed=seed + 1000 * k, **options)
        out[f"{split}_images"] = made["images"]
        out[f"{split}_labels"] = made["labels"][:, None]
        masks[f"{split}_masks"] = made["masks"]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **out)
    atomic_write_bytes(Path(destination), buffer.getvalue())
    return masks
