"""SIMULATED k-space from real magnitude images: what ``medlens simulate kspace`` writes.

Real raw k-space is rare and mostly unlicensed; real magnitude images are everywhere. A
retrospective simulation gives reconstruction methods a reference they can be scored against:
each 2D slice of a real image (every slice of a volume, every time point of a cine series) is
scaled by its volume's 99.5th percentile, given a smooth random phase
(:func:`~medlens.reconstruction.coils.smooth_phase`: magnitude images have none, acquisitions
always do), multiplied by synthetic birdcage coil sensitivities, Fourier transformed (centred,
orthonormal) and given complex Gaussian noise of ``noise`` times the scaled maximum per sample.
The FULL k-space is stored with the undersampling mask of the dataset's acceleration (one mask
per file, drawn as fastMRI draws them), so training can draw new masks and evaluation applies the
stored one. In-plane sizes under ``min_size`` are zero-padded (a larger field of view) so the
fully sampled centre keeps at least two lines.

The output folder holds one ``.npz`` per source image (:func:`~.raw.write_kspace_npz`: ``kspace``
``(S, C, H, W)``, ``mask`` ``(W,)``, ``maps`` ``(C, H, W)``, ``target`` ``(S, H, W)`` = the
noise-free magnitude, ``meta`` with ``"simulated": true``, the source, its geometry and the slice
indices), ``dataset.json`` and a ``README.txt`` that say plainly that the k-space is simulated.
The same seed gives the same dataset; the folder is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, MedlensError
from medlens.reconstruction.coils import birdcage_maps, smooth_phase
from medlens.reconstruction.masks import KINDS, cartesian_mask, centre_fraction_for, centre_lines

__all__ = ["simulate_kspace_dataset", "slices_of"]

README = """SIMULATED k-space (medlens simulate kspace).

Every file here was made from a real MAGNITUDE image: the k-space, its phase and its coil
sensitivities are simulated (retrospective undersampling; a smooth synthetic phase; synthetic
birdcage coils; complex Gaussian noise). Figures measured on it are figures on simulated k-space
and must be reported as such. Settings: {settings}
"""


def slices_of(array: np.ndarray, limit: int | None) -> tuple[np.ndarray, list[int]]:
    """The 2D slices ``(S, H, W)`` of an image (leading time/channel axes and the slice axis
    flattened) and their flat indices: all of them, or ``limit`` evenly spaced over the middle
    80% of those holding signal (a mean above a tenth of the image's)."""
    if array.ndim < 2:
        raise MedlensError(f"an image of shape {array.shape}: need at least 2 dimensions")
    flat = np.asarray(array, np.float32).reshape(-1, *array.shape[-2:])
    level = np.abs(flat).mean(axis=(1, 2))
    keep = np.flatnonzero(level > 0.1 * level.mean()) if level.mean() > 0 else np.arange(0)
    if keep.size == 0:
        raise MedlensError("no slice holds signal (all zero)")
    if limit is not None and keep.size > limit:
        lo, hi = int(keep.size * 0.1), int(np.ceil(keep.size * 0.9))
        middle = keep[lo:hi] if hi - lo >= limit else keep
        keep = middle[np.unique(np.linspace(0, middle.size - 1, limit).round().astype(int))]
    return flat[keep], [int(k) for k in keep]


def _pad(slices: np.ndarray, size: int) -> tuple[np.ndarray, list[int]]:
    """Zero-pad ``(S, H, W)`` to at least ``size`` per in-plane axis (centred); the pads before."""
    h, w = slices.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    before = [ph // 2, pw // 2]
    padded = np.pad(slices, ((0, 0), (before[0], ph - before[0]), (before[1], pw - before[1])))
    return padded, before


def simulate_volume(image, *, coils: int, acceleration: float, mask_kind: str, seed: int,
                    noise: float, max_slices: int | None, min_size: int,
                    centre_fraction: float | None) -> dict[str, Any]:  # fmt: skip
    """The arrays and meta of one source image (see the module's notes)."""
    import torch

    from medlens.reconstruction.kspace import fft2c

    rng = np.random.default_rng(seed)
    slices, index = slices_of(np.abs(np.asarray(image.array, np.float32)), max_slices)
    scale = float(np.percentile(slices, 99.5)) or float(slices.max()) or 1.0
    slices, before = _pad(slices / scale, min_size)
    shape = slices.shape[-2:]
    centre_lines(shape[-1], acceleration, centre_fraction)  # refuse an empty centre early
    maps = birdcage_maps(coils, shape)
    phase = np.stack([smooth_phase(shape, rng) for _ in slices])
    truth = (slices * np.exp(1j * phase)).astype(np.complex64)
    k = fft2c(torch.from_numpy(truth)[:, None] * torch.from_numpy(maps)[None]).numpy()
    if noise > 0:
        sigma = noise * float(slices.max()) / np.sqrt(2)
        k = k + (rng.normal(0, sigma, k.shape) + 1j * rng.normal(0, sigma, k.shape))
    mask = cartesian_mask(shape[-1], acceleration, mask_kind, seed=int(rng.integers(2**31)),
                          centre_fraction=centre_fraction)  # fmt: skip
    meta = {
        "simulated": True,
        "scale": scale,
        "slices": index,
        "padding": before,
        "acceleration": acceleration,
        "mask": mask_kind,
        "centre_fraction": centre_fraction_for(acceleration)
        if centre_fraction is None
        else centre_fraction,
        "coils": coils,
        "noise": noise,
        "seed": seed,
        "source_shape": list(image.array.shape),
        "spacing": None if image.spacing is None else [float(s) for s in image.spacing],
        "origin": None if image.origin is None else [float(o) for o in image.origin],
        "direction": None if image.direction is None else np.asarray(image.direction).tolist(),
        "modality": image.modality,
    }
    return {"kspace": k.astype(np.complex64), "mask": mask, "maps": maps,
            "target": slices.astype(np.float32), "meta": meta}  # fmt: skip


def simulate_kspace_dataset(source: str | Path, output: str | Path, *, coils: int = 1,
                            acceleration: float = 4.0, mask: str = "random", seed: int = 0,
                            noise: float = 0.01, max_slices: int | None = 16, min_size: int = 64,
                            centre_fraction: float | None = None,
                            progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Write a SIMULATED k-space dataset from the real images under ``source``.

    Args:
        coils: receiver coils (1: single-coil, sensitivities of one).
        acceleration: the undersampling of the stored masks (4, 8, ...).
        mask: ``random`` or ``equispaced`` (:mod:`~medlens.reconstruction.masks`).
        noise: complex noise per k-space sample, as a fraction of the scaled image's maximum.
        max_slices: at most this many slices per source image (None: all).
        min_size: in-plane sizes below this are zero-padded to it.

    Returns:
        a summary: output folder, files, slices, settings.
    """
    from medlens._progress import progress as shown
    from medlens.io.discover import discover_inputs
    from medlens.reconstruction.raw import KSpaceData, write_kspace_npz

    if mask not in KINDS:
        raise MedlensError(f"--mask {mask}: use {' or '.join(KINDS)}")
    if coils < 1 or noise < 0 or (max_slices is not None and max_slices < 1) or min_size < 8:
        raise MedlensError(f"need coils >= 1, noise >= 0, slices >= 1 and min-size >= 8 "
                           f"(got {coils}, {noise}, {max_slices}, {min_size})")  # fmt: skip
    source, output = Path(source), Path(output)
    if output.exists() and any(output.iterdir()):
        raise MedlensError(f"{output}: exists and is not empty; choose a new folder")
    inputs = discover_inputs(source, spatial_dims=3)
    settings = {"coils": coils, "acceleration": acceleration, "mask": mask, "seed": seed,
                "noise": noise, "max_slices": max_slices, "min_size": min_size,
                "centre_fraction": centre_fraction}  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    files, total = [], 0
    try:
        for i, item in enumerate(shown(inputs, "simulating k-space", enabled=progress)):
            image = item.load()
            try:
                arrays = simulate_volume(image, coils=coils, acceleration=acceleration,
                                         mask_kind=mask, seed=seed * 1_000_003 + i,
                                         noise=noise, max_slices=max_slices, min_size=min_size,
                                         centre_fraction=centre_fraction)  # fmt: skip
            except MedlensError as error:
                raise DatasetError(error.problem, item.source) from None
            meta = {**arrays.pop("meta"), "source": str(item.source), "subject": item.name}
            data = KSpaceData(path=staging / f"{item.name}.npz", meta=meta, **arrays)
            write_kspace_npz(data.path, data)
            files.append(data.path.name)
            total += data.kspace.shape[0]
        summary = {"name": f"{source.name}-simulated-kspace", "kind": "kspace",
                   "simulated": True, "source": str(source), "files": files, "slices": total,
                   **settings}  # fmt: skip
        (staging / "dataset.json").write_text(json.dumps(summary, indent=1))
        (staging / "README.txt").write_text(README.format(settings=json.dumps(settings)))
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"output": str(output), **{k: summary[k] for k in ("files", "slices", "simulated")}}
