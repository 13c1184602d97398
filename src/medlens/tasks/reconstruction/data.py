"""k-space datasets for training and evaluation: files, subjects, slices and their batches.

:func:`open_kspace` takes a folder (or one file) of k-space files: medlens' ``.npz`` (what
``medlens simulate kspace`` writes), fastMRI ``.h5`` and ISMRMRD ``.h5``
(:func:`~medlens.reconstruction.raw.read_kspace`). A file is a case; its ``subject`` (the
source a simulation came from, fastMRI's patient) groups the splits. :func:`network_input`
makes what the network takes from one slice; :func:`reference` the magnitude it is scored
against: the file's target where it has one of the slice's size, else the fully sampled
coil combination. :class:`SliceBatches` draws training batches (see the plan's notes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.engine.data import EpochBatches
from medlens.errors import DatasetError

__all__ = [
    "KSpaceSource",
    "SliceBatches",
    "evaluation_mask",
    "network_input",
    "open_kspace",
    "reference",
]

SUFFIXES = (".npz", ".h5")


@dataclass
class KSpaceSource:
    """The k-space files of a dataset, read once each."""

    path: Path
    files: list[Path]
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def ids(self) -> list[str]:
        return [f.stem for f in self.files]

    def load(self, i: int):
        from medlens.reconstruction.raw import read_kspace

        if i not in self._cache:
            self._cache[i] = read_kspace(self.files[i])
        return self._cache[i]

    def subjects(self) -> list[str]:
        return [str(self.load(i).meta.get("subject") or self.files[i].stem)
                for i in range(len(self.files))]  # fmt: skip

    def fingerprint(self) -> dict[str, Any]:
        """Coils, stored acceleration and mask kind, whether maps come with the files."""
        first = self.load(0)
        meta = first.meta
        out = {
            "coils": int(first.kspace.shape[1]),
            "acceleration": meta.get("acceleration") or self.info.get("acceleration"),
            "mask": meta.get("mask") or self.info.get("mask"),
            "centre_fraction": meta.get("centre_fraction"),
            "maps": first.maps is not None or first.kspace.shape[1] == 1,
            "simulated": bool(meta.get("simulated", self.info.get("simulated", False))),
        }
        if out["acceleration"] is None and first.mask is not None:
            out["acceleration"] = round(first.mask.size / max(1, int(first.mask.sum())), 2)
        return out


def open_kspace(path: str | Path) -> KSpaceSource:
    """The k-space files under ``path`` (sorted), with ``dataset.json`` when there is one."""
    path = Path(path)
    if not path.exists():
        raise DatasetError("does not exist", path)
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        root = path
        files = sorted(p for p in path.rglob("*")
                       if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))  # fmt: skip
    if not files:
        raise DatasetError("no k-space files (.npz, fastMRI or ISMRMRD .h5) in it", path)
    info = {}
    if (root / "dataset.json").is_file():
        try:
            info = json.loads((root / "dataset.json").read_text())
        except (OSError, ValueError) as error:
            raise DatasetError(f"unreadable dataset.json ({error})", root) from None
    return KSpaceSource(path, files, info)


def slice_maps(data, s: int, plan) -> np.ndarray:
    """The coil maps ``(C, H, W)`` of slice ``s``: the file's, ones for one coil, or ESPIRiT
    from the slice's measured centre (cached on the data)."""
    c, h, w = data.kspace.shape[1:]
    if data.maps is not None and plan.maps == "given":
        return data.maps if data.maps.ndim == 3 else data.maps[s]
    if c == 1:
        return np.ones((1, h, w), np.complex64)
    from medlens.reconstruction.coils import espirit_maps

    cache = data.meta.setdefault("_espirit", {})
    if s not in cache:
        cache[s] = espirit_maps(data.undersampled()[s] if data.mask is not None
                                else data.kspace[s])  # fmt: skip
    return cache[s]


def evaluation_mask(data, plan) -> np.ndarray:
    """The mask a file is scored with: its stored one, or (a fully sampled file without one) one
    of the plan's first acceleration drawn with seed 0."""
    from medlens.reconstruction.masks import cartesian_mask

    if data.mask is not None:
        return data.mask
    return cartesian_mask(data.kspace.shape[-1], plan.accelerations[0], plan.mask,
                          centre_fraction=plan.centre_fraction, seed=0)  # fmt: skip


def reference(data, s: int, maps: np.ndarray) -> np.ndarray:
    """The magnitude ``(H, W)`` slice ``s`` is scored against (see the module's notes)."""
    h, w = data.kspace.shape[-2:]
    if data.target is not None and data.target.shape[-2:] == (h, w):
        return np.asarray(data.target[s], np.float32)
    if data.mask is not None and not data.mask.all() and data.target is None:
        raise DatasetError("undersampled k-space without a reference image: nothing to score "
                           "against", data.path)  # fmt: skip
    from medlens.reconstruction.kspace import ifft2c, sense_combine

    coils = ifft2c(torch.from_numpy(np.ascontiguousarray(data.kspace[s])))
    return sense_combine(coils, torch.from_numpy(maps)).abs().numpy().astype(np.float32)


def network_input(kspace: np.ndarray, mask: np.ndarray,
                  maps: np.ndarray) -> dict[str, torch.Tensor]:  # fmt: skip
    """One slice's input with a batch axis: measured k-space (zero off the mask), mask, maps."""
    m = np.asarray(mask, np.float32)
    return {"kspace": torch.from_numpy((kspace * m).astype(np.complex64))[None],
            "mask": torch.from_numpy(m)[None], "maps": torch.from_numpy(maps)[None]}  # fmt: skip


def stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([i[k] for i in items]) for k in items[0]}


class SliceBatches(EpochBatches):
    """Training batches ``(inputs, {"target": (B, H, W)})`` with new masks per slice."""

    task = "reconstruction"

    def __init__(self, source: KSpaceSource, files: list[int], plan, *, seed: int = 0) -> None:
        self.source, self.plan, self.seed = source, plan, int(seed)
        self.groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i in files:
            data = source.load(i)
            if not data.fully_sampled:
                raise DatasetError("k-space measured on a mask only cannot train (new masks "
                                   "are drawn from fully sampled k-space)", data.path)  # fmt: skip
            for s in range(data.kspace.shape[0]):
                self.groups.setdefault(tuple(data.kspace.shape[-2:]), []).append((i, s))
        if not self.groups:
            raise DatasetError("no training slices", source.path)
        self.batches_per_epoch = int(plan.train.batches_per_epoch or 40)

    def __iter__(self):
        from medlens.reconstruction.masks import cartesian_mask

        rng = np.random.default_rng([self.seed, self.epoch])
        shapes = sorted(self.groups)  # drawn in proportion to their pixels: large slices count
        weight = np.array([len(self.groups[s]) * s[0] * s[1] for s in shapes], float)
        for _ in range(self.batches_per_epoch):
            shape = shapes[int(rng.choice(len(shapes), p=weight / weight.sum()))]
            members = self.groups[shape]
            size = max(1, min(len(members), self.plan.batch_pixels // (shape[0] * shape[1])))
            items, targets = [], []
            for k in rng.choice(len(members), size=size, replace=False):
                i, s = members[int(k)]
                data = self.source.load(i)
                maps = slice_maps(data, s, self.plan)
                accel = float(rng.choice(self.plan.accelerations))
                mask = cartesian_mask(shape[1], accel, self.plan.mask,
                                      centre_fraction=self.plan.centre_fraction,
                                      seed=int(rng.integers(2**31)))  # fmt: skip
                items.append(network_input(data.kspace[s], mask, maps))
                targets.append(torch.from_numpy(reference(data, s, maps))[None])
            yield stack(items), {"target": torch.cat(targets)}
