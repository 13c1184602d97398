"""Cine datasets for the sequence models: each case a stack ``(t, z, y, x)`` with optional label
maps and per-cine values (EF, volumes).

:class:`CineSet` reads the layout :func:`medlens.data.cine_phantom.simulate_cine_dataset`
writes (``cines/``, ``labels/``, ``cases.csv``; the same layout holds real cines with their label
maps and values, and echo loops or other videos as ``cines/CASE.mp4`` or ``.avi``, one plane each,
as EchoNet-Dynamic's videos with their EF): case ids, subjects (the ``subject`` column where
there is one: splits group on them), values, and the cines read on demand and kept.

Training draws batches as the engine's drawn-data protocol wants (``set_epoch``, seeded by seed
and epoch so a resumed run draws the same):

* :class:`SliceSequences` for temporal segmentation: one slice's whole cycle ``(T, 1, H, W)``
  with its cavity labels ``(T, H, W)``;
* :class:`CineBatches` for regression of a cine's value: ``(T, Z, H, W)`` with the slices as
  channels (padded to ``slices`` with zeros).

Both augment through the transform engine (:func:`augmenter`): one flip and quarter turn for
every frame of a sample, a cyclic start, time reversal and a frame-rate change (0.8-1.25 for
segmentation, whose labels move with the frames; 1-1.25 for a cine's value, so every sequence
still spans a whole cycle), and an intensity scale of 0.8-1.2 per sample.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import DatasetError
from medlens.image import Image
from medlens.tasks.reconstruction.data import EpochBatches

_SUFFIXES = (".nii.gz", ".nii", ".mp4", ".avi", ".mov", ".mkv", ".webm")

__all__ = ["CineBatches", "CineSet", "SliceSequences", "as_channels", "normalise"]


class CineSet:
    """The cases of a cine folder (module notes)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        table = self.root / "cases.csv"
        if not table.is_file() or not (self.root / "cines").is_dir():
            raise DatasetError("not a cine folder (cines/ and cases.csv)", self.root)
        with table.open(newline="") as handle:
            self.rows = list(csv.DictReader(handle))
        if not self.rows or "case" not in self.rows[0]:
            raise DatasetError("needs a 'case' column and at least one row", table)
        self.ids = [r["case"] for r in self.rows]
        self.paths = [self._find(case) for case in self.ids]
        missing = [case for case, path in zip(self.ids, self.paths, strict=True) if path is None]
        if missing:
            raise DatasetError(f"{len(missing)} cine(s) named are missing (e.g. no "
                               f"cines/{missing[0]}.nii.gz or video)", table)  # fmt: skip
        self.simulated = any(r.get("simulated") == "true" for r in self.rows)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None, tuple]] = {}

    def _find(self, case: str) -> Path | None:
        for suffix in _SUFFIXES:
            path = self.root / "cines" / f"{case}{suffix}"
            if path.is_file():
                return path
        return None

    def __len__(self) -> int:
        return len(self.rows)

    def subjects(self) -> list[str]:
        return [r.get("subject") or r["case"] for r in self.rows]

    def value(self, i: int, column: str) -> float:
        if column not in self.rows[i]:
            raise DatasetError(f"no column {column!r}", self.root / "cases.csv")
        return float(self.rows[i][column])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        """``(cine (t, z, y, x) float32, labels or None, spacing (dx, dy, dz))``."""
        if i not in self._cache:
            from medlens.io import load_image

            case = self.ids[i]
            cine = load_image(self.paths[i])
            if cine.leading == ("time",) and cine.spatial_dims == 2:  # a loop of one plane
                cine = Image(cine.array[:, None], spacing=(*cine.spacing, 1.0), leading=("time",),
                             meta=cine.meta)  # fmt: skip
            if cine.leading != ("time",) or cine.spatial_dims != 3:
                raise DatasetError("not a cine (time, [slice,] y, x); colour videos are read "
                                   "grey only", cine.meta.get("path"))  # fmt: skip
            if cine.array.shape[0] < 2:
                raise DatasetError("a sequence of one frame", cine.meta.get("path"))
            path = self.root / "labels" / f"{case}.nii.gz"
            labels = np.asarray(load_image(path).array, np.uint8) if path.is_file() else None
            self._cache[i] = (np.asarray(cine.array, np.float32), labels, tuple(cine.spacing))
        return self._cache[i]


def normalise(cine: np.ndarray) -> np.ndarray:
    """One scale for a whole cine: its 99.5th percentile becomes 1."""
    return cine / max(float(np.percentile(cine, 99.5)), 1e-6)


def as_channels(cine: np.ndarray, slices: int) -> np.ndarray:
    """``(t, z, y, x)`` with ``z`` padded (zeros) or cut to ``slices``: the slices as channels."""
    t, z, h, w = cine.shape
    out = np.zeros((t, slices, h, w), np.float32)
    out[:, : min(z, slices)] = cine[:, :slices]
    return out


def augmenter(seed: int, epoch: int, rates: tuple[float, float]):
    """The engine's augmentation of a batch of sequences: one flip and quarter turn for every
    frame of a sample, a cyclic start, time reversal and a frame-rate change (``rates``)."""
    from medlens.transforms import (
        Compose,
        FrameRateJitter,
        RandomFlip,
        RandomReverse,
        RandomRot90,
        RandomStart,
    )

    return Compose([RandomFlip(axes=(0, 1)), RandomRot90(), RandomStart(), RandomReverse(),
                    FrameRateJitter(*rates)], seed=int(seed) * 100_003 + int(epoch))  # fmt: skip


class SliceSequences(EpochBatches):
    """Batches ``(x (B, T, 1, H, W), labels (B, T, H, W))`` of whole slices' cycles, the cavity
    (``label``) as 1 and everything else 0."""

    task = "sequence-segmentation"

    def __init__(
        self,
        data: CineSet,
        cases: list[int],
        *,
        batch: int = 2,
        label: int = 1,
        batches_per_epoch: int = 40,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        self.data, self.batch, self.label, self.seed = data, batch, label, seed
        self.augment, self.batches_per_epoch = augment, batches_per_epoch
        self.items = []  # (case, slice) of the slices whose cycle shows the label
        for i in cases:
            labels = data.load(i)[1]
            if labels is not None:
                shown = (labels == label).any(axis=(0, 2, 3))
                self.items += [(i, int(k)) for k in np.flatnonzero(shown)]
        if not self.items:
            raise DatasetError("no labelled slices to train on", data.root)

    def __iter__(self):
        from medlens.transforms import Batch

        rng = np.random.default_rng([self.seed, self.epoch])
        augment = augmenter(self.seed, self.epoch, (0.8, 1.25)) if self.augment else None
        for _ in range(self.batches_per_epoch):
            xs, ys = [], []
            for j in rng.choice(len(self.items), self.batch, replace=len(self.items) < self.batch):
                i, k = self.items[int(j)]
                cine, labels, _ = self.data.load(i)
                x = normalise(cine)[:, k] * (rng.uniform(0.8, 1.2) if self.augment else 1.0)
                xs.append(torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None])
                ys.append(torch.from_numpy((labels[:, k] == self.label).astype(np.int64))[:, None])
            batch = Batch(image=torch.stack(xs), label=torch.stack(ys), time_axis=True)
            if augment is not None:
                batch = augment(batch)
            yield batch["image"], batch["label"][:, :, 0]


class CineBatches(EpochBatches):
    """Batches ``(x (B, T, slices, H, W), y (B, 1))`` of whole cines and one value each."""

    task = "sequence-regression"

    def __init__(self, data: CineSet, cases: list[int], column: str, *, slices: int,
                 batch: int = 4, batches_per_epoch: int = 40, seed: int = 0,
                 augment: bool = True, scale: float = 100.0) -> None:  # fmt: skip
        self.data, self.cases, self.column, self.slices = data, list(cases), column, slices
        self.batch, self.batches_per_epoch, self.seed = batch, batches_per_epoch, seed
        self.augment, self.scale = augment, scale

    def __iter__(self):
        from medlens.transforms import Batch

        rng = np.random.default_rng([self.seed, self.epoch])
        # faster only: every drawn sequence still spans a whole cycle, so its EF is the cine's
        augment = augmenter(self.seed, self.epoch, (1.0, 1.25)) if self.augment else None
        for _ in range(self.batches_per_epoch):
            xs, ys = [], []
            for j in rng.choice(len(self.cases), self.batch, replace=len(self.cases) < self.batch):
                i = self.cases[int(j)]
                x = as_channels(normalise(self.data.load(i)[0]), self.slices)
                xs.append(torch.from_numpy(x * (rng.uniform(0.8, 1.2) if self.augment else 1.0)))
                ys.append(self.data.value(i, self.column) / self.scale)
            batch = Batch(image=torch.stack(xs).float(), time_axis=True)
            if augment is not None:
                batch = augment(batch)
            yield batch["image"], torch.tensor(ys, dtype=torch.float32)[:, None]


def cine_input(cine: np.ndarray, slices: int) -> torch.Tensor:
    """One cine as the regression network's input ``(1, T, slices, H, W)``."""
    return torch.from_numpy(as_channels(normalise(cine), slices))[None]


def slice_inputs(cine: np.ndarray) -> torch.Tensor:
    """Every slice's cycle as the segmentation network's input ``(Z, T, 1, H, W)``."""
    x = normalise(cine)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2, 3)))[:, :, None]


def describe(data: CineSet) -> dict[str, Any]:
    """Shapes of the first case: phases, slices, height, width."""
    cine = data.load(0)[0]
    t, z, h, w = cine.shape
    return {"phases": t, "slices": z, "height": h, "width": w}
