"""Super-resolution on the platform: training pairs from the images themselves, prediction on
the finer grid, evaluation against the originals.

Training pairs come from the degradation model (:mod:`medlens.reconstruction.degrade`: block
averages plus noise) applied to patches of the data: for 2D images both axes are degraded by the
plan's factors, each channel a plane of its own; for 3D volumes with thick slices (the plan's
``factors [f, 1, 1]``) the network learns from the in-plane slices, degraded along one in-plane
axis as the slice axis is (SMORE: Zhao et al. 2021), so a user with only thick-slice scans can
train. Each plane is scaled by its 99.5th percentile; patches are flipped and transposed.

Prediction interpolates (cubic spline) onto the finer grid and adds the network's residual; a
volume is done plane by plane through the slice axis in both orientations (the planes holding
the slice axis and ``y``, and those holding it and ``x``), averaged. The output keeps the
geometry: spacing divided by the factors, origin moved to the first fine pixel's centre, the
same direction. Evaluation degrades each original, predicts it back and scores PSNR and SSIM
against the original (its maximum as the range), beside cubic and nearest interpolation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.engine.data import EpochBatches
from medlens.errors import DatasetError, MedlensError

__all__ = [
    "ImageJob",
    "PatchBatches",
    "evaluate_superres",
    "open_images",
    "predict_image",
    "superres_lr",
]


def open_images(path: Path) -> list[tuple[str, Any]]:
    """``(name, image)`` of every image under ``path`` (DICOM files grouped into series)."""
    from medlens.io.discover import discover_inputs

    return [(item.name, item.load()) for item in discover_inputs(path, spatial_dims=3)]


class ImageJob:
    """What training needs of an image dataset (``kind="superres"``): its planes (a 2D image's
    channels, a volume's in-plane slices), split by image, or by plane when there is one image
    (a single thick-slice volume learns from its own slices, as SMORE does)."""

    unit = "planes"
    simulated = False

    def __init__(self, data: Path) -> None:
        self.images = open_images(data)
        self.units = [(i, k) for i, (_, image) in enumerate(self.images)
                      for k in range(int(np.prod(image.array.shape[:-2], dtype=int)))]  # fmt: skip
        self.names = [f"{self.images[i][0]}#{k}" for i, k in self.units]
        one = len(self.images) < 2
        self.groups = list(self.names) if one else [self.images[i][0] for i, _ in self.units]

    def default_plan(self):
        from medlens.tasks.reconstruction.plan import make_superres_plan

        return make_superres_plan(fingerprint(self.images))

    def _planes(self, indices, plan) -> list[np.ndarray]:
        cache: dict[int, list] = {}
        out = []
        for u in indices:
            i, k = self.units[int(u)]
            if i not in cache:
                cache[i] = planes(self.images[i][1], plan)
            if cache[i][k] is not None:
                out.append(cache[i][k])
        return out

    def prepare(self, plan, split, seed: int):
        """Training batches, validation pairs and the validation score."""
        val = validation_pairs(self._planes(split["val_indices"], plan), plan, plan.val_slices)
        if not val:
            raise DatasetError("no validation planes", None)

        def evaluate(model, _):
            return {"score": score_pairs(model, val)["psnr"]}

        return (
            PatchBatches(self._planes(split["train_indices"], plan), plan, seed=seed),
            val,
            evaluate,
        )

    def final(self, network, val, plan) -> tuple[dict[str, Any], str]:
        metrics = {**score_pairs(network, val), "n_pairs": len(val)}
        return metrics, (f"validation patches: PSNR {metrics['psnr']:.2f} dB (cubic "
                         f"{metrics['cubic_psnr']:.2f})")  # fmt: skip


def fingerprint(images: list[tuple[str, Any]]) -> dict[str, Any]:
    """Dimensionality and, for volumes, the slice thickness over the pixel size."""
    image = images[0][1]
    out: dict[str, Any] = {"spatial_dims": image.spatial_dims}
    if image.spatial_dims == 3 and image.spacing is not None:
        sx, sy, sz = (float(s) for s in image.spacing)
        out["slice_ratio"] = sz / ((sx + sy) / 2)
    return out


def planes(image, plan) -> list[np.ndarray | None]:
    """The high-resolution planes a run learns from, each scaled by its 99.5th percentile
    (None for a plane without signal or under 8x8 pixels)."""
    array = np.asarray(image.array, np.float32)
    if len(plan.factors) == 3 and not plan.through_plane:
        raise MedlensError(f"factors {plan.factors}: 3D super-resolution is through-plane only")
    if plan.through_plane and image.spatial_dims != 3:
        raise MedlensError("through-plane super-resolution takes 3D volumes")
    if len(plan.factors) == 2 and image.spatial_dims != 2:
        raise MedlensError("2D factors for a 3D volume: give factors [f, 1, 1]")
    stack = array.reshape(-1, *array.shape[-2:])  # a 2D image's channels, a volume's slices
    out: list[np.ndarray | None] = []
    for plane in stack:
        top = float(np.percentile(plane, 99.5))
        usable = top > 0 and plane.shape[0] >= 8 and plane.shape[1] >= 8
        out.append(plane / top if usable else None)
    return out


def _pair(hr: torch.Tensor, plan, axis: int, noise: float, generator) -> torch.Tensor:
    """The network's input for high-resolution planes ``(N, 1, P, P)``: degraded (both axes,
    or ``axis`` for through-plane), then interpolated back."""
    from medlens.reconstruction.degrade import degrade, upsample

    f = int(plan.factors[0])
    factors = [f, f] if not plan.through_plane else [f if a == axis else 1 for a in (0, 1)]
    return upsample(degrade(hr, factors, noise=noise, generator=generator), factors)


class PatchBatches(EpochBatches):
    """Training batches ``(input, target)`` of ``(B, 1, P, P)`` patches (see the module)."""

    task = "reconstruction"

    def __init__(self, planes_: list[np.ndarray], plan, *, seed: int = 0) -> None:
        if not planes_:
            raise DatasetError("no training planes (images of at least 8x8 pixels with signal)")
        self.planes, self.plan, self.seed = planes_, plan, int(seed)
        sizes = np.array([p.size for p in planes_], float)
        self.weights = sizes / sizes.sum()
        self.batches_per_epoch = int(plan.train.batches_per_epoch or 50)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        p = int(self.plan.patch_size)
        for _ in range(self.batches_per_epoch):
            patches = []
            for _ in range(int(self.plan.train.batch_size)):
                plane = self.planes[int(rng.choice(len(self.planes), p=self.weights))]
                patch = _crop(plane, p, rng)
                if rng.random() < 0.5:
                    patch = patch.T
                patch = patch[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
                patches.append(np.ascontiguousarray(patch))
            hr = torch.from_numpy(np.stack(patches))[:, None]
            x = _pair(hr, self.plan, int(rng.integers(2)), self.plan.noise, generator)
            yield x, hr


def _crop(plane: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` patch (zero-padded where the plane is smaller)."""
    h, w = plane.shape
    padded = np.pad(plane, ((0, max(0, size - h)), (0, max(0, size - w))))
    y = int(rng.integers(0, padded.shape[0] - size + 1))
    x = int(rng.integers(0, padded.shape[1] - size + 1))
    return padded[y : y + size, x : x + size]


def validation_pairs(planes_: list[np.ndarray], plan, count: int) -> list[tuple[Any, Any]]:
    """Fixed validation pairs: the centre patch of ``count`` planes spread over the set, each
    degraded along both in-plane axes in turn for through-plane runs."""
    generator = torch.Generator().manual_seed(0)
    picks = np.unique(np.linspace(0, len(planes_) - 1, min(count, len(planes_))).round())
    size = int(plan.patch_size) * 2
    out = []
    for k in picks:
        plane = planes_[int(k)]
        h, w = plane.shape
        y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
        f = int(plan.factors[0])
        patch = plane[y : y + size, x : x + size]
        patch = patch[: patch.shape[0] // f * f, : patch.shape[1] // f * f]
        hr = torch.from_numpy(np.ascontiguousarray(patch))[None, None]
        out.append((_pair(hr, plan, int(k) % 2, 0.0, generator), hr))
    return out


@torch.no_grad()
def score_pairs(network, pairs) -> dict[str, float]:
    """Mean PSNR (dB, each patch's maximum) of the network and of the cubic interpolation."""
    from medlens.metrics.reconstruction import psnr

    network.eval()
    ours, cubic = [], []
    for x, hr in pairs:
        target = hr[0, 0].numpy()
        peak = float(target.max()) or 1.0
        ours.append(psnr(target, network(x)[0, 0].numpy(), peak))
        cubic.append(psnr(target, x[0, 0].numpy(), peak))
    return {"psnr": float(np.mean(ours)), "cubic_psnr": float(np.mean(cubic))}


@torch.no_grad()
def _refine(networks, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The folds' mean output on interpolated planes ``(N, 1, H, W)``, ``batch`` at a time."""
    out = []
    for k in range(0, x.shape[0], batch):
        part = x[k : k + batch]
        out.append(torch.stack([torch.as_tensor(n(part)) for n in networks]).mean(dim=0))
    return torch.cat(out)


def superres_array(networks, array: np.ndarray, plan, spatial_dims: int) -> np.ndarray:
    """The super-resolved array of an image's array (channels first in 2D)."""
    from medlens.reconstruction.degrade import upsample

    f = [int(v) for v in plan.factors]
    data = np.asarray(array, np.float32)
    if not plan.through_plane:
        stack = torch.from_numpy(data.reshape(-1, 1, *data.shape[-2:]))
        out = _refine(networks, upsample(stack, f))
        return out.reshape(*data.shape[:-2], *out.shape[-2:]).numpy()
    if spatial_dims != 3 or data.ndim != 3:
        raise MedlensError(f"through-plane super-resolution takes a volume, got {data.shape}")
    up = upsample(torch.from_numpy(data)[None, None], f)[0, 0]  # (Z', Y, X)
    scale = float(np.percentile(data, 99.5)) or 1.0
    up = up / scale
    sagittal = _refine(networks, up.permute(2, 0, 1)[:, None])[:, 0].permute(1, 2, 0)
    coronal = _refine(networks, up.permute(1, 0, 2)[:, None])[:, 0].permute(1, 0, 2)
    return ((sagittal + coronal) / 2 * scale).numpy()


def fine_geometry(image, factors: list[int]) -> dict[str, Any]:
    """Spacing, origin and direction of the grid ``factors`` times finer (array order)."""
    if image.spacing is None:
        return {}
    per_axis = [int(f) for f in factors[::-1]]  # (x, y[, z])
    spacing = np.asarray(image.spacing, float)
    direction = np.eye(len(spacing)) if image.direction is None else np.asarray(image.direction)
    shift = spacing * np.array([-(f - 1) / (2 * f) for f in per_axis])
    origin = np.asarray(image.origin if image.origin is not None else np.zeros(len(spacing)))
    return {"spacing": tuple(spacing / per_axis), "origin": tuple(origin + direction @ shift),
            "direction": direction}  # fmt: skip


def predict_image(trained, image):
    """The super-resolved :class:`~medlens.image.Image` of ``image``, and seconds taken."""
    from medlens.image import Image

    started = time.perf_counter()
    array = superres_array(trained.networks, image.array, trained.plan, image.spatial_dims)
    seconds = time.perf_counter() - started
    geometry = fine_geometry(image, trained.plan.factors)
    out = Image(array.astype(np.float32), leading=image.leading, modality=image.modality,
                meta=dict(image.meta), **geometry)  # fmt: skip
    return out, seconds


def superres_lr(image, factors: list[int]):
    """The low-resolution image the degradation model makes of ``image`` (whole blocks), on
    its coarse grid (spacing times the factors, origin at the first block's centre)."""
    from medlens.image import Image
    from medlens.reconstruction.degrade import degrade

    array = np.asarray(image.array, np.float32)
    n = len(factors)
    lead = array.shape[: array.ndim - n]
    low = degrade(torch.from_numpy(array.reshape(-1, 1, *array.shape[-n:])), factors)
    low = low[:, 0].numpy().reshape(*lead, *low.shape[2:])
    spacing = origin = None
    if image.spacing is not None:
        per_axis = np.array(factors[::-1], float)
        spacing = tuple(np.asarray(image.spacing, float) * per_axis)
        direction = np.asarray(image.direction if image.direction is not None
                               else np.eye(len(per_axis)))  # fmt: skip
        shift = np.asarray(image.spacing, float) * (per_axis - 1) / 2
        base = np.zeros(len(per_axis)) if image.origin is None else np.asarray(image.origin)
        origin = tuple(base + direction @ shift)
    return Image(low, spacing, origin, image.direction, leading=image.leading,
                 modality=image.modality)  # fmt: skip


def evaluate_superres(trained, data: Path, *, n_boot: int = 1000,
                      progress: bool = True) -> tuple[dict[str, Any], list, list]:  # fmt: skip
    """Degrade each image of ``data``, super-resolve it back and score it (module notes):
    the result, the per-image rows and the pictures of the report."""
    from medlens._progress import progress as shown
    from medlens.metrics import mean_summary
    from medlens.metrics.reconstruction import paired_difference, psnr, ssim
    from medlens.reconstruction.degrade import upsample

    factors = [int(f) for f in trained.plan.factors]
    rows, pictures = [], []
    for name, image in shown(open_images(Path(data)), "super-resolving", enabled=progress):
        low = superres_lr(image, factors)
        out, seconds = predict_image(trained, low)
        n = len(factors)
        hr = np.asarray(image.array, np.float32)
        keep = tuple(slice(0, (s // f) * f) for s, f in zip(hr.shape[-n:], factors, strict=True))
        hr = hr[(Ellipsis, *keep)]
        coarse = np.asarray(low.array, np.float32)
        flat = torch.from_numpy(coarse.reshape(-1, 1, *coarse.shape[-n:]))
        methods = {
            "output": out.array,
            "cubic": upsample(flat, factors).numpy().reshape(hr.shape),
            "nearest": upsample(flat, factors, "nearest").numpy().reshape(hr.shape),
        }
        peak = float(hr.max()) or 1.0
        planes_hr = hr.reshape(-1, *hr.shape[-2:])
        row: dict[str, Any] = {"id": name, "seconds": seconds}
        for key, array in methods.items():
            prefix = "" if key == "output" else f"{key}_"
            got = np.asarray(array, np.float32).reshape(planes_hr.shape)
            row[f"{prefix}psnr"] = psnr(planes_hr, got, peak)
            row[f"{prefix}ssim"] = ssim(planes_hr, got, peak)
        rows.append(row)
        mid = planes_hr.shape[0] // 2
        if trained.plan.through_plane:  # a plane through the slice axis shows what changed
            x = hr.shape[-1] // 2
            pick = {k: np.asarray(v).reshape(hr.shape)[:, :, x] for k, v in methods.items()}
            pick["reference"] = hr[:, :, x]
        else:
            pick = {k: np.asarray(v).reshape(planes_hr.shape)[mid] for k, v in methods.items()}
            pick["reference"] = planes_hr[mid]
        pictures.append(
            {
                "reference": pick["reference"],
                "output": pick["output"],
                "baselines": {"nearest": pick["nearest"], "cubic": pick["cubic"]},
            }
        )
    if not rows:
        raise DatasetError("no images to evaluate", data)
    keys = [k for k in rows[0] if k != "id"]
    result = {
        "n_files": len(rows),
        "factors": factors,
        "metrics": {k: mean_summary([r[k] for r in rows], n_boot) for k in keys},
        "psnr_gain_vs_cubic": paired_difference(
            rows, [{**r, "psnr": r["cubic_psnr"]} for r in rows], "psnr", n_boot=n_boot),
        "psnr_gain_vs_nearest": paired_difference(
            rows, [{**r, "psnr": r["nearest_psnr"]} for r in rows], "psnr", n_boot=n_boot),
        "data": str(data),
    }  # fmt: skip
    return result, rows, pictures
