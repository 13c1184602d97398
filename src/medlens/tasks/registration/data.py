"""What a learned registration trains on: images (random inter-subject pairs) or listed pairs.

``--data`` is either a dataset of images, with label maps or without (a Decathlon folder, paired
image and mask folders, any layout of :func:`medlens.data.open_dataset`, or a plain folder of
images: :func:`medlens.io.discover_inputs`), whose training
pairs are drawn at random among the training cases each batch (inter-subject, atlas-free), or a
**pairs CSV** with the columns ``fixed`` and ``moving`` and optionally ``fixed_labels``,
``moving_labels`` and ``subject`` (paths relative to the CSV): intra-subject, longitudinal or
multi-modal pairs, split by subject (by row where no subject is given).

Every image is brought once to the plan's canonical grid (:func:`canonical_case`) as one grey
channel scaled by its own 1st and 99th percentiles, as ``medlens register`` compares images.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.errors import DatasetError
from medlens.image import Image, Role

__all__ = ["PairBatches", "RegistrationCase", "RegistrationSource", "canonical_case", "open_source"]

PAIR_COLUMNS = ("fixed", "moving")


@dataclass
class RegistrationCase:
    """One image on the canonical grid: ``image`` ``(1, *P)`` float32, ``labels`` ``(*P)``
    int64 (or None), and ``world``, the atlas -> image LPS map it was sampled through."""

    id: str
    image: torch.Tensor
    labels: torch.Tensor | None
    world: np.ndarray


@dataclass
class RegistrationSource:
    """The images of ``--data``: ``items`` (id -> loader of ``(image, labels or None)``),
    ``subjects`` (id -> subject), and ``pairs`` ((fixed id, moving id) rows of a pairs CSV, or
    None: random pairs among the cases)."""

    path: Path
    ids: list[str]
    loaders: dict[str, Any]
    subjects: dict[str, str]
    pairs: list[tuple[str, str]] | None
    labelled: bool
    label_values: list[int]

    def load(self, case_id: str) -> tuple[Image, Image | None]:
        return self.loaders[case_id]()


def open_source(data: Path) -> RegistrationSource:
    """The images (and pairs) of ``data`` (see the module's notes)."""
    if data.is_file() and data.suffix.lower() == ".csv":
        with data.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if set(PAIR_COLUMNS) <= {h.strip() for h in header}:
            return _pairs_csv(data)
    return _dataset(data)


def _dataset(data: Path) -> RegistrationSource:
    from medlens.data import open_dataset

    try:
        dataset = open_dataset(data)
    except DatasetError as error:
        if data.is_dir() and "no known dataset layout" in str(error):
            return _image_folder(data)
        raise
    ids = [str(i) for i in dataset.ids()]
    if len(ids) < 2:
        raise DatasetError(f"{len(ids)} image(s): registration needs at least 2", data)
    subjects = dataset.subjects() if dataset.has_subjects() else ids
    labelled = dataset.task == "segmentation"
    values = [int(v) for v in range(len(dataset.class_names))] if labelled else [0]

    def loader(index: int):
        def load():
            sample = dataset[index]
            return sample.image, sample.mask if labelled else None

        return load

    return RegistrationSource(
        data,
        ids,
        {case: loader(i) for i, case in enumerate(ids)},
        dict(zip(ids, [str(s) for s in subjects], strict=True)),
        None,
        labelled,
        values,
    )


def _image_folder(data: Path) -> RegistrationSource:
    """A folder of images without labels (:func:`medlens.io.discover_inputs`): random pairs."""
    from medlens.io.discover import discover_inputs

    items = discover_inputs(data)
    if len(items) < 2:
        raise DatasetError(f"{len(items)} image(s): registration needs at least 2", data)
    ids = [item.name for item in items]
    loaders = {item.name: (lambda item=item: (item.load(), None)) for item in items}
    return RegistrationSource(data, ids, loaders, {i: i for i in ids}, None, False, [0])


def _pairs_csv(data: Path) -> RegistrationSource:
    from medlens.io import load_image

    with data.open(newline="") as handle:
        rows = [
            {k.strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(handle)
        ]
    if not rows:
        raise DatasetError("no pairs (the CSV has a header and no rows)", data)
    labelled = all(r.get("fixed_labels") and r.get("moving_labels") for r in rows)
    loaders: dict[str, Any] = {}
    subjects: dict[str, str] = {}
    label_paths: set[Path] = set()
    pairs = []
    for number, row in enumerate(rows, start=2):
        keys = []
        for side in PAIR_COLUMNS:
            if not row.get(side):
                raise DatasetError(f"line {number}: no {side} image", data)
            path = (data.parent / row[side]).resolve()
            if not path.exists():
                raise DatasetError(f"line {number}: {row[side]} does not exist", data)
            labels = row.get(f"{side}_labels") if labelled else None
            label_path = (data.parent / labels).resolve() if labels else None
            if label_path is not None and not label_path.exists():
                raise DatasetError(f"line {number}: {labels} does not exist", data)
            key = str(path)

            def load(path=path, label_path=label_path):
                image = load_image(path)
                labels = load_image(label_path, role=Role.LABEL) if label_path else None
                if labels is not None:
                    image.check_same_grid(labels, name=str(label_path))
                return image, labels

            loaders[key] = load
            if label_path is not None:
                label_paths.add(label_path)
            subjects[key] = row.get("subject") or f"pair-{number - 1}"
            keys.append(key)
        pairs.append((keys[0], keys[1]))
    values = [0]
    if labelled:  # the label maps alone (each once), for the values the loss scores
        found = set()
        for path in sorted(label_paths):
            labels = load_image(path, role=Role.LABEL)
            found |= {int(v) for v in np.unique(np.asarray(labels.array))}
        values = sorted(found | {0})
    return RegistrationSource(data, list(loaders), loaders, subjects, pairs, labelled, values)


def centring(plan, image: Image) -> np.ndarray:
    """The atlas -> ``image`` world map of the ``center`` pre-alignment: the translation that
    puts the atlas frame's origin on the image's centre."""
    n = plan.spatial_dims
    out = np.eye(n + 1)
    out[:n, n] = image.index_to_world((np.asarray(image.size, float) - 1) / 2)
    return out


def canonical_case(plan, case_id: str, image: Image, labels: Image | None,
                   world: np.ndarray | None = None) -> RegistrationCase:  # fmt: skip
    """``image`` (and ``labels``) sampled on the canonical grid of the atlas frame (centred on
    its origin) through ``world``, the atlas -> image LPS map of its pre-alignment (default:
    :func:`centring`, the image's centre on the atlas origin)."""
    from medlens.registration.optimise import moving_coords
    from medlens.registration.pyramid import Grid, grid_of
    from medlens.registration.register import normalised_grey
    from medlens.tasks.registration.plan import canonical_matrix
    from medlens.transforms._warp import onehot_linear, warp_coords

    if image.spatial_dims != plan.spatial_dims:
        where = image.meta.get("path") or case_id
        raise DatasetError(f"a {image.spatial_dims}D image for a {plan.spatial_dims}D run", where)
    world = centring(plan, image) if world is None else np.asarray(world, float)
    matrix = canonical_matrix(plan, np.zeros(plan.spatial_dims))
    canonical = Grid(torch.zeros(1, 1, *plan.shape), matrix)
    source = grid_of(image, normalised_grey(image))
    coords = moving_coords(canonical, source, world)
    tensor = warp_coords(source.tensor, coords, padding="zeros")[0]
    warped = None
    if labels is not None:
        values = torch.from_numpy(np.asarray(labels.array).astype(np.int64))[None, None]
        warped = onehot_linear(values, lambda t: warp_coords(t, coords, padding="zeros"))[0, 0]
    return RegistrationCase(case_id, tensor.float().contiguous(), warped, world)


def onehot(labels: torch.Tensor, values: list[int]) -> torch.Tensor:
    """``(B, *P)`` label maps as ``(B, K, *P)`` indicators of the foreground ``values``."""
    return torch.stack([(labels == v) for v in values if v != 0], dim=1).float()


class PairBatches:
    """Training batches of pairs: ``(x, targets)`` with ``x`` ``(B, 2, *P)`` (fixed, moving)
    and ``targets`` ``{"fixed", "moving"[, "fixed_labels", "moving_labels"]}``. Pairs are drawn
    at random (two distinct cases, or rows of the pairs list), seeded per epoch; an epoch is
    ``batches_per_epoch`` batches."""

    def __init__(self, cases: dict[str, RegistrationCase], pairs: list[tuple[str, str]] | None,
                 batch_size: int, batches_per_epoch: int, *, label_values: list[int],
                 use_labels: bool, seed: int = 0) -> None:  # fmt: skip
        self.cases, self.pairs = cases, pairs
        self.ids = sorted(cases)
        self.batch_size, self.batches_per_epoch = int(batch_size), int(batches_per_epoch)
        self.label_values, self.use_labels = label_values, use_labels
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def draw(self, rng: np.random.Generator) -> tuple[str, str]:
        if self.pairs is not None:
            fixed, moving = self.pairs[int(rng.integers(len(self.pairs)))]
            return (fixed, moving) if rng.random() < 0.5 else (moving, fixed)
        i, j = rng.choice(len(self.ids), size=2, replace=False)
        return self.ids[int(i)], self.ids[int(j)]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches_per_epoch):
            chosen = [self.draw(rng) for _ in range(self.batch_size)]
            yield pair_batch(self.cases, chosen, self.label_values, self.use_labels)


def pair_batch(cases: dict[str, RegistrationCase], pairs: list[tuple[str, str]],
               label_values: list[int], use_labels: bool) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """The network's input and the loss's targets for ``pairs`` of case ids."""
    fixed = torch.stack([cases[f].image for f, _ in pairs])
    moving = torch.stack([cases[m].image for _, m in pairs])
    targets: dict[str, Any] = {"fixed": fixed, "moving": moving}
    if use_labels:
        targets["fixed_labels"] = onehot(torch.stack([cases[f].labels for f, _ in pairs]),
                                         label_values)  # fmt: skip
        targets["moving_labels"] = onehot(torch.stack([cases[m].labels for _, m in pairs]),
                                          label_values)  # fmt: skip
    return torch.cat([fixed, moving], dim=1), targets
