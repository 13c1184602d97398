"""Cine datasets for the sequence models: each case a stack ``(t, z, y, x)`` with optional label
maps and per-cine values (EF, volumes).

:class:`CineSet` reads the layout :func:`medlens.data.cine_phantom.simulate_cine_dataset`
writes (``cines/``, ``labels/``, ``cases.csv``; the same layout holds real cines with their label
maps and values, and echo loops or other videos as ``cines/CASE.mp4`` or ``.avi``, one plane each,
as EchoNet-Dynamic's videos with their EF): case ids, subjects (the ``subject`` column where
there is one: splits group on them), values, and the cines read on demand and kept.

Each cine is scaled as a whole by the run's preprocessor (``preprocessing.json``: its minimum
to 0 and its 99.5th percentile to 1; :func:`normalise`). Training draws batches as the engine's
drawn-data protocol wants (``set_epoch``, seeded by seed and epoch so a resumed run draws the
same):

* :class:`SliceSequences` for temporal segmentation: one slice's whole cycle ``(T, 1, H, W)``
  with its cavity labels ``(T, H, W)``, padded to one size the network divides;
* :class:`CineBatches` for classification and regression of a cine: ``(T, Z, H, W)`` as
  :func:`fit` makes it (frames sampled evenly, resized, the slices as channels padded to
  ``slices`` with zeros) and its class or standardised value.

Both augment through the transform engine (:func:`augmenter`, as the plan's ``augment`` section
says): one flip and quarter turn for every frame of a sample, a cyclic start, time reversal and a
frame-rate change (0.8-1.25 for segmentation, whose labels move with the frames; 1-1.25 for a
cine's class or value, so every sequence still spans a whole cycle), and an intensity scale of
0.8-1.2 per sample.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.engine.data import EpochBatches
from medlens.errors import DatasetError
from medlens.image import Image

SCALE = 100.0  # the first release regressed EF in percent as a fraction
_SUFFIXES = (".nii.gz", ".nii", ".mp4", ".avi", ".mov", ".mkv", ".webm")

__all__ = [
    "CineBatches",
    "CineSet",
    "SliceSequences",
    "as_channels",
    "as_cine",
    "check_length",
    "cine_input",
    "fit",
    "normalise",
    "slice_inputs",
]


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
        try:
            return float(self.rows[i][column])
        except ValueError:
            raise DatasetError(f"case {self.ids[i]}: {column} {self.rows[i][column]!r} is not a "
                               "number", self.root / "cases.csv") from None  # fmt: skip

    def class_index(self, i: int, column: str, classes: list[str]) -> int:
        """The index in ``classes`` of case ``i``'s ``column``."""
        value = self.rows[i].get(column)
        if value not in classes:
            known = ", ".join(classes)
            raise DatasetError(f"case {self.ids[i]}: {column} {value!r} is not one of the run's "
                               f"classes ({known})", self.root / "cases.csv")  # fmt: skip
        return classes.index(value)

    def shape(self, i: int) -> tuple[int, int, int, int]:
        """``(phases, slices, height, width)`` of case ``i``."""
        return tuple(int(n) for n in self.load(i)[0].shape)  # type: ignore[return-value]

    def has_labels(self, i: int) -> bool:
        return (self.root / "labels" / f"{self.ids[i]}.nii.gz").is_file()

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        """``(cine (t, z, y, x) float32, labels or None, spacing (dx, dy, dz))``."""
        if i not in self._cache:
            from medlens.io import load_image

            case = self.ids[i]
            cine = as_cine(load_image(self.paths[i]), self.paths[i])
            path = self.root / "labels" / f"{case}.nii.gz"
            labels = np.asarray(load_image(path).array, np.uint8) if path.is_file() else None
            if labels is not None and labels.shape != cine.array.shape:
                raise DatasetError(f"label maps of shape {labels.shape}, the cine's is "
                                   f"{cine.array.shape}", path)  # fmt: skip
            self._cache[i] = (np.asarray(cine.array, np.float32), labels, tuple(cine.spacing))
        return self._cache[i]


def as_cine(image: Image, path: Any = None) -> Image:
    """``image`` as a cine ``(time, slice, y, x)``: a loop of one plane (a video, a 2D+t file)
    gets a slice axis; anything else that is not a sequence is refused in one line."""
    where = path or image.meta.get("path")
    if image.leading == ("time",) and image.spatial_dims == 2:  # a loop of one plane
        image = Image(image.array[:, None], spacing=(*image.spacing, 1.0), leading=("time",),
                      meta=image.meta)  # fmt: skip
    if image.leading != ("time",) or image.spatial_dims != 3:
        raise DatasetError("not a sequence (time, [slice,] y, x): no time axis; colour videos "
                           "are read grey only", where)  # fmt: skip
    if image.array.shape[0] < 2:
        raise DatasetError("a sequence of one frame", where)
    return image


#: The intensity scaling of a run's cines (its ``preprocessing.json``): one linear map for the
#: whole sequence, its minimum to 0 and its 99.5th percentile to 1, nothing clipped.
def intensity_steps():
    from medlens.preprocessing import Preprocessor
    from medlens.preprocessing.intensity import MinMax

    return Preprocessor([MinMax(out_range=(0.0, 1.0), percentiles=(0.0, 99.5), clip=False)])


def normalise(cine: np.ndarray, spec: dict[str, Any] | None = None) -> np.ndarray:
    """A cine ``(t, z, y, x)`` scaled as the run's preprocessor says (``spec["preprocessor"]``,
    read from its ``preprocessing.json``); runs of the first release, which have none: divided
    by the 99.5th percentile."""
    steps = (spec or {}).get("preprocessor")
    if steps is None:
        return cine / max(float(np.percentile(cine, 99.5)), 1e-6)
    image = steps.transform(Image(np.asarray(cine, np.float32), leading=("time",)))
    return np.asarray(image.array, np.float32)


def as_channels(cine: np.ndarray, slices: int) -> np.ndarray:
    """``(t, z, y, x)`` with ``z`` padded (zeros) or cut to ``slices``: the slices as channels."""
    t, z, h, w = cine.shape
    out = np.zeros((t, slices, h, w), np.float32)
    out[:, : min(z, slices)] = cine[:, :slices]
    return out


def augmenter(seed: int, epoch: int, augment: dict[str, Any]):
    """The engine's augmentation of a batch of sequences (one set of spatial parameters for
    every frame of a sample): flips and quarter turns in-plane, a cyclic start, time reversal
    and a frame-rate change (``augment["rates"]``), as the plan's ``augment`` section says."""
    from medlens.transforms import (
        Compose,
        FrameRateJitter,
        RandomFlip,
        RandomReverse,
        RandomRot90,
        RandomStart,
    )

    steps: list[Any] = []
    if augment.get("flip", True):
        steps.append(RandomFlip(axes=(0, 1)))
    if augment.get("rot90", True):
        steps.append(RandomRot90())
    steps.append(RandomStart())
    if augment.get("reverse", True):
        steps.append(RandomReverse())
    rates = augment.get("rates", [1.0, 1.0])
    if rates[0] != 1.0 or rates[1] != 1.0:
        steps.append(FrameRateJitter(float(rates[0]), float(rates[1])))
    return Compose(steps, seed=int(seed) * 100_003 + int(epoch))


class SliceSequences(EpochBatches):
    """Batches ``(x (B, T, 1, H, W), labels (B, T, H, W))`` of whole slices' cycles, the cavity
    (``label``) as 1 and everything else 0; slices of other sizes are zero-padded at their end
    to one size that divides by ``divisor``."""

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
        augment: dict[str, Any] | None = None,
        divisor: int = 1,
        spec: dict[str, Any] | None = None,
    ) -> None:
        self.data, self.batch, self.label, self.seed, self.spec = data, batch, label, seed, spec
        self.augment, self.batches_per_epoch, self.divisor = augment, batches_per_epoch, divisor
        self._scaled: dict[int, np.ndarray] = {}
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
        augment = augmenter(self.seed, self.epoch, self.augment) if self.augment else None
        low, high = (self.augment or {}).get("intensity", [1.0, 1.0])
        for _ in range(self.batches_per_epoch):
            xs, ys = [], []
            for j in rng.choice(len(self.items), self.batch, replace=len(self.items) < self.batch):
                i, k = self.items[int(j)]
                labels = self.data.load(i)[1]
                if i not in self._scaled:  # each case scaled once, not once per draw
                    self._scaled[i] = normalise(self.data.load(i)[0], self.spec)
                x = self._scaled[i][:, k] * rng.uniform(low, high)
                xs.append(torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None])
                ys.append(torch.from_numpy((labels[:, k] == self.label).astype(np.int64))[:, None])
            xs, ys = _common_size(xs, self.divisor), _common_size(ys, self.divisor)
            batch = Batch(image=torch.stack(xs), label=torch.stack(ys), time_axis=True)
            if augment is not None:
                batch = augment(batch)
            yield batch["image"], batch["label"][:, :, 0]


def _common_size(items: list[torch.Tensor], divisor: int) -> list[torch.Tensor]:
    """``items`` zero-padded at the end of their last two axes to one size dividing by
    ``divisor``."""
    h = max(x.shape[-2] for x in items)
    w = max(x.shape[-1] for x in items)
    h, w = h + -h % divisor, w + -w % divisor
    return [torch.nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) for x in items]


class CineBatches(EpochBatches):
    """Batches ``(x (B, T, slices, H, W), y)`` of whole cines (:func:`fit` to the run's
    ``spec``) and their targets: ``(B, 1)`` standardised values (regression) or ``(B,)`` class
    indices (classification)."""

    task = "sequence-regression"

    def __init__(self, data: CineSet, cases: list[int], spec: dict[str, Any], *,
                 batches_per_epoch: int = 40, seed: int = 0,
                 augment: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.data, self.cases, self.spec = data, list(cases), spec
        self.batch, self.batches_per_epoch, self.seed = spec["batch"], batches_per_epoch, seed
        self.augment = augment
        self._fitted: dict[int, np.ndarray] = {}

    def target(self, i: int) -> float | int:
        spec = self.spec
        if spec["kind"] == "classification":
            return self.data.class_index(i, spec["column"], spec["classes"])
        offset, scale = spec.get("offset", 0.0), spec.get("scale", SCALE)
        return (self.data.value(i, spec["column"]) - offset) / scale

    def __iter__(self):
        from medlens.transforms import Batch

        rng = np.random.default_rng([self.seed, self.epoch])
        augment = augmenter(self.seed, self.epoch, self.augment) if self.augment else None
        low, high = (self.augment or {}).get("intensity", [1.0, 1.0])
        for _ in range(self.batches_per_epoch):
            xs, ys = [], []
            for j in rng.choice(len(self.cases), self.batch, replace=len(self.cases) < self.batch):
                i = self.cases[int(j)]
                if i not in self._fitted:
                    self._fitted[i] = fit(self.data.load(i)[0], self.spec)
                xs.append(torch.from_numpy(self._fitted[i] * rng.uniform(low, high)))
                ys.append(self.target(i))
            batch = Batch(image=torch.stack(xs).float(), time_axis=True)
            if augment is not None:
                batch = augment(batch)
            if self.spec["kind"] == "classification":
                yield batch["image"], torch.tensor(ys, dtype=torch.long)
            else:
                yield batch["image"], torch.tensor(ys, dtype=torch.float32)[:, None]


def fit(cine: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """A cine ``(t, z, y, x)`` as a classification or regression network takes it
    ``(frames, slices, H, W)``: one intensity scale (:func:`normalise`), ``spec["frames"]``
    frames sampled evenly over the sequence, the slices as channels, each frame resized to
    ``spec["size"]`` (bilinear, antialiased). Runs of the first release keep every frame at its
    own size."""
    x = as_channels(normalise(cine, spec), int(spec["slices"]))
    frames = spec.get("frames")
    if frames:
        x = x[np.round(np.linspace(0, len(x) - 1, int(frames))).astype(int)]
    size = spec.get("size")
    if size and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(x)),
            size=tuple(int(n) for n in size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        ).numpy()
    return np.ascontiguousarray(x, np.float32)


def check_length(cine: np.ndarray, spec: dict[str, Any], where: Any) -> None:
    """Refuse a sequence shorter than the run's window (``min_frames``) in one line."""
    shortest = int(spec.get("min_frames", 2))
    if cine.shape[0] < shortest:
        raise DatasetError(f"{cine.shape[0]} frames, shorter than the model's window of "
                           f"{shortest} (half its shortest training sequence)", where)  # fmt: skip


def cine_input(cine: np.ndarray, spec: dict[str, Any]) -> torch.Tensor:
    """One cine as the regression or classification network's input ``(1, T, slices, H, W)``."""
    return torch.from_numpy(fit(cine, spec))[None]


def slice_inputs(cine: np.ndarray, spec: dict[str, Any], divisor: int = 1) -> torch.Tensor:
    """Every slice's cycle as the segmentation network's input ``(Z, T, 1, H, W)``, zero-padded
    at the end of each axis to a multiple of ``divisor`` (crop the output back to the cine)."""
    x = normalise(cine, spec).transpose(1, 0, 2, 3)
    x = torch.from_numpy(np.ascontiguousarray(x))[:, :, None]
    return _common_size([x], divisor)[0]


def describe(data: CineSet) -> dict[str, Any]:
    """Shapes of the first case: phases, slices, height, width."""
    cine = data.load(0)[0]
    t, z, h, w = cine.shape
    return {"phases": t, "slices": z, "height": h, "width": w}
