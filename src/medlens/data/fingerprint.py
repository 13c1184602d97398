"""Dataset fingerprint: the summary that planning (patch size, spacing, normalisation) starts from.

Like nnU-Net's fingerprint it records shapes, spacings, intensities (over the foreground for
segmentation, where background would dominate) and the label distribution. Everything is plain
JSON (ints, floats, strings, lists), so a fingerprint can be saved beside a trained model.

Geometry is reported in index order ``(x, y[, z])`` for both ``size`` and ``spacing``, the
order of :attr:`Image.size` and :attr:`Image.spacing`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from medlens.data.dataset import Dataset, _progress
from medlens.errors import DatasetError

__all__ = ["ANISOTROPY_THRESHOLD", "fingerprint"]

#: nnU-Net treats spacing as anisotropic when the coarsest axis is over 3 times the finest.
ANISOTROPY_THRESHOLD = 3.0
_PERCENTILES = (0.5, 99.5)


class _Intensity:
    """Exact running mean/std/min/max plus a bounded random sample for percentiles."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0
        self.low = np.inf
        self.high = -np.inf
        self.pool: list[np.ndarray] = []

    def add(self, values: np.ndarray, rng: np.random.Generator, keep: int) -> None:
        if values.size == 0:
            return
        values = values.astype(np.float64, copy=False)
        self.count += values.size
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        if values.size > keep:
            values = rng.choice(values, size=keep, replace=False)
        self.pool.append(values.astype(np.float32))

    def summary(self, region: str) -> dict[str, Any]:
        if self.count == 0:
            return {"region": region, "n_voxels": 0}
        mean = self.total / self.count
        var = max(self.squares / self.count - mean * mean, 0.0)
        lo, hi = np.percentile(np.concatenate(self.pool), _PERCENTILES)
        return {
            "region": region,
            "n_voxels": int(self.count),
            "mean": float(mean),
            "std": float(np.sqrt(var)),
            "min": float(self.low),
            "max": float(self.high),
            "p00_5": float(lo),
            "p99_5": float(hi),
        }


def _stats(rows: list[tuple[float, ...]]) -> dict[str, list[float]]:
    array = np.asarray(rows, dtype=np.float64)
    return {
        "min": array.min(axis=0).tolist(),
        "p10": np.percentile(array, 10, axis=0).tolist(),  # nnU-Net's coarse-axis spacing rule
        "median": np.median(array, axis=0).tolist(),
        "p90": np.percentile(array, 90, axis=0).tolist(),
        "max": array.max(axis=0).tolist(),
    }


def _extent(region: np.ndarray, dims: int) -> tuple[int, ...]:
    """The foreground's bounding-box size in voxels, index order ``(x, y[, z])``."""
    if region.ndim > dims:
        region = region.reshape(-1, *region.shape[-dims:]).any(axis=0)
    sizes = []
    for axis in range(dims):
        other = tuple(a for a in range(dims) if a != axis)
        where = np.flatnonzero(region.any(axis=other))
        sizes.append(int(where[-1] - where[0] + 1))
    return tuple(sizes[::-1])


def _label_summary(dataset: Dataset) -> dict[str, Any]:
    """Class counts from the labels array (all samples: it costs no image reads)."""
    labels = dataset.labels()
    if labels is None:
        return {}
    names = dataset.class_names
    if dataset.task == "multilabel":
        positives = np.nansum(labels == 1, axis=0)
        ignored = np.isnan(labels).sum(axis=0)
        return {
            "class_counts": {n: int(c) for n, c in zip(names, positives, strict=True)},
            "ignored_counts": {n: int(c) for n, c in zip(names, ignored, strict=True)},
        }
    if dataset.task == "regression":
        return {"target": {"mean": float(np.mean(labels)), "std": float(np.std(labels))}}
    counts = Counter(int(v) for v in labels)
    by_name = {}
    for value in sorted(counts):
        name = names[value] if 0 <= value < len(names) else str(value)
        by_name[name] = counts[value]
    return {"class_counts": {n: by_name.get(n, 0) for n in names} | by_name}


def fingerprint(
    dataset: Dataset,
    *,
    max_samples: int | None = None,
    progress: bool = False,
    seed: int = 0,
    voxels_per_sample: int = 10_000,
) -> dict[str, Any]:
    """Summarise a dataset for planning; JSON-serialisable.

    Args:
        dataset: any medlens dataset.
        max_samples: analyse at most this many samples, evenly spread over the dataset (label
            counts of classification datasets always use all samples).
        progress: show a progress bar.
        seed: seed of the voxel subsampling for percentiles.
        voxels_per_sample: voxels per sample and channel kept for percentiles (mean, std, min
            and max use every voxel).
    """
    n = len(dataset)
    if n == 0:
        raise DatasetError("dataset is empty", dataset.source)
    indices = np.arange(n)
    if max_samples is not None and max_samples < n:
        indices = np.unique(np.linspace(0, n - 1, max(1, max_samples)).round().astype(np.int64))
    rng = np.random.default_rng(seed)
    segmentation = dataset.task == "segmentation"

    sizes: list[tuple[int, ...]] = []
    spacings: list[tuple[float, ...]] = []
    dims: set[int] = set()
    channels: set[int] = set()
    modalities: Counter[str] = Counter()
    intensity: list[_Intensity] = []
    voxel_counts: Counter[int] = Counter()
    cases_with: Counter[int] = Counter()
    foreground_cases = 0
    extents_voxels: list[tuple[int, ...]] = []  # foreground bounding box, index order
    extents_mm: list[tuple[float, ...]] = []

    for index in _progress(indices.tolist(), "Fingerprint", progress):
        sample = dataset[int(index)]
        image = sample.image
        dims.add(image.spatial_dims)
        sizes.append(tuple(int(s) for s in image.size))
        spacings.append(tuple(float(s) for s in image.spacing))
        channels.add(image.num_channels)
        if image.modality:
            modalities[image.modality] += 1
        array = image.array
        if "channel" in image.leading:
            array = np.moveaxis(array, image.leading.index("channel"), 0)
        else:
            array = array[None]
        region = None
        if segmentation and sample.mask is not None:
            values, counts = np.unique(sample.mask.array, return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                voxel_counts[int(v)] += int(c)
                cases_with[int(v)] += 1
            region = sample.mask.array > 0
            if region.any():
                foreground_cases += 1
                extent = _extent(region, image.spatial_dims)
                extents_voxels.append(extent)
                extents_mm.append(tuple(e * s for e, s in zip(extent, spacings[-1], strict=True)))
            else:
                region = None
        while len(intensity) < array.shape[0]:
            intensity.append(_Intensity())
        for c in range(array.shape[0]):
            channel = array[c]
            if "time" in image.leading:  # fold time into the voxels of the channel
                channel = channel.reshape(-1, *image.spatial_shape)
            values = channel[..., region] if region is not None else channel.reshape(-1)
            intensity[c].add(np.asarray(values).reshape(-1), rng, voxels_per_sample)

    if len(dims) > 1:
        raise DatasetError(f"samples mix {sorted(dims)}D images", dataset.source)
    median_spacing = np.median(np.asarray(spacings), axis=0)
    ratio = float(median_spacing.max() / median_spacing.min())
    subjects = dataset.subjects()
    region_name = "foreground" if segmentation and foreground_cases else "all"
    result: dict[str, Any] = {
        "name": dataset.name,
        "task": dataset.task,
        "num_samples": n,
        "num_analysed": len(indices),
        "num_subjects": len(set(subjects)),
        "subjects_known": bool(dataset.has_subjects()),
        "class_names": list(dataset.class_names),
        "modality": dataset.modality or (modalities.most_common(1)[0][0] if modalities else None),
        "spatial_dims": dims.pop(),
        "channels": max(channels),
        "axis_order": "index (x, y[, z])",
        "size": _stats(sizes),
        "spacing": _stats(spacings),
        "anisotropy_ratio": ratio,
        "anisotropic": ratio > ANISOTROPY_THRESHOLD,
        "intensity": [s.summary(region_name) for s in intensity],
    }
    result.update(_label_summary(dataset))
    if segmentation:
        declared = getattr(dataset, "label_values", None)  # Decathlon: name -> value
        if isinstance(declared, dict):
            names = {v: n for n, v in declared.items() if isinstance(v, int)}
        else:
            names = dict(enumerate(dataset.class_names))
        total = sum(voxel_counts.values())
        result["label_values"] = sorted(voxel_counts)
        result["voxel_counts"] = {str(v): int(c) for v, c in sorted(voxel_counts.items())}
        result["cases_with_label"] = {str(v): int(c) for v, c in sorted(cases_with.items())}
        result["label_names"] = {str(v): names[v] for v in sorted(voxel_counts) if v in names}
        result["foreground_fraction"] = (
            float(sum(c for v, c in voxel_counts.items() if v != 0) / total) if total else 0.0
        )
        result["cases_without_foreground"] = int(len(indices) - foreground_cases)
        if extents_voxels:  # how the anatomy's size varies, in voxels and in millimetres
            result["foreground_extent"] = {
                "voxels": _stats(extents_voxels),
                "mm": _stats(extents_mm),
            }
    return result
