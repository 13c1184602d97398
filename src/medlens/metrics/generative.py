"""How close generated images are to real ones, measured in a feature space medlens owns.

Every function takes feature vectors ``(n, d)``: the penultimate-layer features of a medlens
classifier trained on the real training split (the caller extracts them). Nothing here downloads
weights, so none of these is an "FID" or a "KID" (those are defined in Inception-v3's space): the
names say what they compute.

* :func:`frechet_distance`: the Fréchet distance of the Gaussians fitted to two sets,
  ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (Heusel et al. 2017), the matrix square
  root through the symmetric ``S_a^(1/2) S_b S_a^(1/2)``, which stays real and stable;
* :func:`kernel_distance`: the unbiased squared MMD with the cubic polynomial kernel
  ``(x.y / d + 1)^3`` (Bińkowski et al. 2018), mean and standard deviation over random subsets;
* :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019), each
  sample's manifold the ball to its ``k``-th nearest neighbour in its own set: precision is the
  share of generated samples inside the real manifold, recall the share of real samples inside
  the generated one;
* :func:`nearest_neighbours`: for memorisation checks, each generated sample's nearest training
  sample (index and Euclidean distance), and the same distance of held-out real samples to the
  training set as the reference a copy would fall far below.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = ["frechet_distance", "kernel_distance", "nearest_neighbours", "precision_recall"]


def _features(x: Any, name: str, minimum: int = 2) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < minimum:
        raise MedlensError(f"{name}: features (n, d) with n >= {minimum} needed, got shape "
                           f"{array.shape}")  # fmt: skip
    if not np.isfinite(array).all():
        raise MedlensError(f"{name}: features that are not finite")
    return array


def _pair(a: Any, b: Any, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = _features(a, "real", minimum), _features(b, "generated", minimum)
    if fa.shape[1] != fb.shape[1]:
        raise MedlensError(f"features of {fa.shape[1]} and {fb.shape[1]} dimensions: not one space")
    return fa, fb


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(real: Any, generated: Any) -> float:
    """The Fréchet distance of the Gaussians fitted to ``real`` and ``generated`` features."""
    a, b = _pair(real, generated)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root_a = _sqrt_psd(cov_a)
    cross = np.trace(_sqrt_psd(root_a @ cov_b @ root_a))
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(value, 0.0)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kernel_distance(real: Any, generated: Any, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> dict[str, float]:  # fmt: skip
    """The unbiased squared MMD (cubic polynomial kernel) of ``real`` and ``generated``
    features: ``{"mean", "std", "subsets", "subset_size"}`` over ``subsets`` random subsets of
    ``subset_size`` of each (all of the smaller set when it has fewer)."""
    a, b = _pair(real, generated)
    size = min(int(subset_size), len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)],
                             b[rng.choice(len(b), size, replace=False)])
              for _ in range(int(subsets))]  # fmt: skip
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "subsets": int(subsets), "subset_size": size}  # fmt: skip


def _distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(x), len(y))``."""
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T
    return np.sqrt(np.clip(squared, 0, None))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Each sample's distance to its ``k``-th nearest other sample of the same set."""
    within = _distances(x, x)
    return np.sort(within, axis=1)[:, k]  # column 0 is the sample itself


def precision_recall(real: Any, generated: Any, *, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (module notes): ``{"precision", "recall", "k"}``."""
    a, b = _pair(real, generated, minimum=k + 1)
    to_real = _distances(b, a)  # (generated, real)
    to_generated = to_real.T
    real_radii, generated_radii = _radii(a, k)[None], _radii(b, k)[None]
    precision = float((to_real <= real_radii).any(axis=1).mean())
    recall = float((to_generated <= generated_radii).any(axis=1).mean())
    return {"precision": precision, "recall": recall, "k": int(k)}


def nearest_neighbours(generated: Any, training: Any, held_out: Any | None = None
                       ) -> dict[str, Any]:  # fmt: skip
    """Each generated sample's nearest training sample: ``{"index", "distance"}`` arrays, and
    with ``held_out`` real samples ``held_out_distance`` (theirs to the training set) and
    ``closer_than_held_out``: the share of generated samples nearer to a training sample than
    the closest held-out real one is (copies of training images land there)."""
    b, a = _features(generated, "generated", 1), _features(training, "training", 1)
    if a.shape[1] != b.shape[1]:
        raise MedlensError(f"features of {b.shape[1]} and {a.shape[1]} dimensions: not one space")
    distances = _distances(b, a)
    index = distances.argmin(axis=1)
    out: dict[str, Any] = {"index": index, "distance": distances[np.arange(len(b)), index]}
    if held_out is not None:
        h = _features(held_out, "held-out", 1)
        reference = _distances(h, a).min(axis=1)
        out["held_out_distance"] = reference
        out["closer_than_held_out"] = float((out["distance"] < reference.min()).mean())
    return out
