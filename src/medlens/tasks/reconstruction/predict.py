"""Prediction of a reconstruction run: k-space files in, magnitude volumes out.

:func:`reconstruct` runs the run's network(s) on every slice of one file with the file's stored
mask (a fully sampled file is reconstructed as measured: every line is data) and averages the
folds' complex outputs. :func:`output_image` crops the simulation's zero padding and gives the
volume the geometry of its source where the file records it: the in-plane spacing, origin and
direction, and the slice spacing when the slices were contiguous (else one slice per index).
``medlens predict`` writes ``NAME.nii.gz`` per file and ``reconstructions.csv`` (slices, seconds,
and PSNR/SSIM against the file's reference when it has one).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.tasks.reconstruction.plan import ReconstructionPlan

__all__ = ["ReconstructionRun", "load_reconstruction_run", "output_image", "reconstruct"]


@dataclass
class ReconstructionRun:
    path: Path
    plan: ReconstructionPlan
    networks: list[Any]
    info: dict[str, Any]


def load_reconstruction_run(path: str | Path) -> ReconstructionRun:
    from medlens.tasks.reconstruction.train import build_network
    from medlens.tasks.run_folder import RunFolder

    folder = RunFolder(path)
    plan = ReconstructionPlan.load(folder.path / "plan.json")
    networks = [n.eval() for n in folder.load_networks(lambda: build_network(plan))]
    return ReconstructionRun(folder.path, plan, networks, folder.info)


@torch.no_grad()
def reconstruct(trained: ReconstructionRun, data, *, mask: np.ndarray | None = None,
                batch_pixels: int | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
    """The complex images ``(S, H, W)`` of one file, and the seconds the networks took."""
    from medlens.reconstruction.unrolled import pack
    from medlens.tasks.reconstruction.data import network_input, slice_maps, stack

    plan = trained.plan
    if mask is None:  # its own, or every line (a fully sampled file is reconstructed as measured)
        mask = data.mask if data.mask is not None else np.ones(data.kspace.shape[-1], bool)
    h, w = data.kspace.shape[-2:]
    if mask.shape != (w,):
        raise MedlensError(f"mask of shape {mask.shape} for k-space {data.kspace.shape[-2:]}: "
                           f"need ({w},)", data.path)  # fmt: skip
    per_batch = max(1, (batch_pixels or plan.batch_pixels) // (h * w))
    inputs = [network_input(data.kspace[s], mask, slice_maps(data, s, plan))
              for s in range(data.kspace.shape[0])]  # fmt: skip
    started = time.perf_counter()
    out = []
    for k in range(0, len(inputs), per_batch):
        batch = stack(inputs[k : k + per_batch])
        x = pack(batch)  # one real tensor: what an ONNX session takes too
        images = torch.stack([torch.as_tensor(net(x)) for net in trained.networks]).mean(dim=0)
        out.append(torch.complex(images[:, 0], images[:, 1]))
    seconds = time.perf_counter() - started
    return torch.cat(out).numpy().astype(np.complex64), seconds


def unpadded(data, array: np.ndarray) -> np.ndarray:
    """``array`` ``(S, H, W)`` without the zero padding a simulation added (its meta says)."""
    pad = data.meta.get("padding")
    shape = data.meta.get("source_shape")
    if not pad or not shape:
        return array
    h, w = int(shape[-2]), int(shape[-1])
    return array[..., pad[0] : pad[0] + h, pad[1] : pad[1] + w]


def scored_pair(data, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output magnitude and the reference, on one grid: padding cropped (simulations), or
    the output centre-cropped to the reference (fastMRI's 320x320 references)."""
    out, ref = unpadded(data, np.abs(image)), unpadded(data, target)
    if out.shape[-2:] != ref.shape[-2:]:
        h, w = ref.shape[-2:]
        top, left = (out.shape[-2] - h) // 2, (out.shape[-1] - w) // 2
        if top < 0 or left < 0:
            raise MedlensError(f"reference {ref.shape} larger than the image {out.shape}",
                               data.path)  # fmt: skip
        out = out[..., top : top + h, left : left + w]
    return out, ref


def output_image(data, magnitude: np.ndarray):
    """The magnitude volume as an :class:`~medlens.image.Image` with its source's geometry."""
    from medlens.image import Image

    array = unpadded(data, magnitude).astype(np.float32)
    meta = data.meta
    spacing, origin, direction = meta.get("spacing"), meta.get("origin"), meta.get("direction")
    shape = meta.get("source_shape") or []
    slices = meta.get("slices") or []
    steps = [b - a for a, b in itertools.pairwise(slices)]
    contiguous = len(shape) == 3 and len(slices) == array.shape[0] and all(s == 1 for s in steps)
    if spacing and len(spacing) == 3 and origin and direction is not None:
        d = np.asarray(direction, float).reshape(3, 3)
        first = slices[0] if contiguous and slices else 0
        start = np.asarray(origin, float) + d[:, 2] * float(spacing[2]) * first
        z = float(spacing[2]) if contiguous else 1.0
        return Image(array, (float(spacing[0]), float(spacing[1]), z), tuple(start), d,
                     modality="MR", meta={"simulated": bool(meta.get("simulated"))})  # fmt: skip
    return Image(array, modality="MR", meta={"simulated": bool(meta.get("simulated"))})
